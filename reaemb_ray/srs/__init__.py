"""Sequential recommenders (SASRec, GRU4Rec, Bert4Rec) over ID or frozen external item embeddings.

    data = load_seq_data(f"{output_dir}/prepared")
    model, result, full_ranks, sampled_ranks = fit_and_test(data, "sasrec", cfg.srs, seed=42)
"""
from reaemb_ray.srs.data import SeqData, load_seq_data
from reaemb_ray.srs.encoders import ExternalEncoder, IDEncoder, ItemEncoder, alignment_loss, load_embedding_table
from reaemb_ray.srs.metrics import full_ranks, hit_ndcg, sampled_ranks, summarize
from reaemb_ray.srs.models import MODELS, Bert4Rec, GRU4Rec, SASRec, SequentialRecommender, build_model
from reaemb_ray.srs.pretrain import load_item_table, pretrain_id_sasrec
from reaemb_ray.srs.trainer import TrainResult, densify_grads, fit_and_test, make_optimizer, train

__all__ = [
    "SeqData", "load_seq_data", "ItemEncoder", "IDEncoder", "ExternalEncoder", "alignment_loss",
    "load_embedding_table", "full_ranks", "sampled_ranks", "hit_ndcg", "summarize", "MODELS", "SequentialRecommender",
    "SASRec", "GRU4Rec", "Bert4Rec", "build_model", "load_item_table", "pretrain_id_sasrec", "TrainResult",
    "fit_and_test", "train", "make_optimizer", "densify_grads",
]
