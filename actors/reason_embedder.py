"""The embedder of the explicit-reasoning mode as one Ray task (placed on a GPU when reason.embedder.num_gpus)."""
from __future__ import annotations

import ray


@ray.remote
def train_and_embed(texts: list[str], targets, ecfg, seed: int) -> dict:
    """Align the small LM (+ LoRA) with the ID table, then embed every text: vectors (n, hidden) + history."""
    import torch

    from reaemb_ray.device import placement
    from reaemb_ray.reasoning.embedder import embed_texts, retrieval_top1, train_embedder

    where = placement("float32")  # the GPU Ray gave this task, if any (reaemb_ray.device)
    if not where.is_cuda:
        torch.set_num_threads(max(1, int(ecfg.num_cpus)))
    model, tok, history = train_embedder(texts, targets, ecfg, seed, device=where.device)
    probe = slice(0, min(len(texts), 512))  # retrieval among a fixed subset keeps it cheap on big catalogues
    return {"vectors": embed_texts(model, tok, texts, ecfg.max_length), "history": history,
            "retrieval_top1": retrieval_top1(model, tok, texts[probe], targets[probe], ecfg),
            "hidden": model.hidden}
