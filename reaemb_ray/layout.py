"""Where every stage's outputs live under `output_dir`: the only place that knows stage folder names.

Paths are '/'-separated and relative to `output_dir` (a local folder or a URI; `reaemb_ray.storage.Store`
resolves them). Stage names are the names `reaemb run` prints and records:

    prepare                 prepared/                 items, interactions, splits, popularity, co-occurrence
    srs_pretrain            srs_pretrain/             the ID-SASRec the `srs` reward and LLMEmb alignment read
    lrcl, llmemb            <name>/                   Ray Train checkpoints (ray/), metrics.jsonl, final/
    crrl, crrl-<obj>-<rew>  <name>/                   base/ (policy start), checkpoints/, metrics.jsonl, final/
    reason                  reason/                   fold<k>/ (checkpoint/, adapter/, done.json, shards/), embedder/,
                                                      samples.json, summary.json; and its table embeddings/reason/
    export_<method>         embeddings/<method>/      shards/, embeddings.parquet
    evaluate                eval/                     runs/, report.json, report.md, plots

Every stage folder holds `_record.json` once the stage has finished (see `reaemb_ray.storage`), and
`_running.json` while it runs. A new stage needs no entry here unless its folder name differs from its name.
"""
from __future__ import annotations

PREPARED = "prepared"
SRS_PRETRAIN = "srs_pretrain"
REASON = "reason"
EMBEDDINGS = "embeddings"
EVAL = "eval"

RECORD = "_record.json"
RUNNING = "_running.json"

# generator folder inside a generator stage's folder (lrcl, llmemb, crrl and its variants)
FINAL = "final"
# the merged policy CRRL starts from, and its learner checkpoints
CRRL_BASE = "base"
CRRL_CHECKPOINTS = "checkpoints"
# Ray Train's storage for LRCL: <stage>/ray/train/step_NNNNNN/
TRAIN_STORAGE = "ray"
TRAIN_RUN = "train"
METRICS = "metrics.jsonl"
EMBEDDINGS_TABLE = "embeddings.parquet"
SHARDS = "shards"
EVAL_RUNS = "runs"  # eval/runs/<method>__<backbone>__seed<s>.json
REPORT_JSON, REPORT_MD = "report.json", "report.md"
REASON_SAMPLES = "samples.json"  # reason/samples.json: the sample of generated reasons the report shows

_FOLDERS = {"prepare": PREPARED, "evaluate": EVAL}


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p)


def folder(stage: str) -> str:
    """The folder a stage writes, e.g. `prepare` -> `prepared`, `export_lrcl` -> `embeddings/lrcl`."""
    if stage.startswith("export_"):
        return join(EMBEDDINGS, stage.removeprefix("export_"))
    return _FOLDERS.get(stage, stage)


def record(stage: str) -> str:
    return join(folder(stage), RECORD)


def running(stage: str) -> str:
    return join(folder(stage), RUNNING)


def generator(stage: str) -> str:
    """The generator folder a training stage leaves (`lrcl/final`, `crrl/final`, ...)."""
    return join(folder(stage), FINAL)


def embeddings_table(method: str) -> str:
    return join(folder(export_stage(method)), EMBEDDINGS_TABLE)


def export_stage(method: str) -> str:
    return f"export_{method}"


def table_stage(method: str) -> str:
    """The stage that writes `method`'s embedding table: its export stage, or `reason`, which writes its own."""
    return REASON if method == REASON else export_stage(method)


def reason_samples() -> str:
    return join(REASON, REASON_SAMPLES)


def report(file: str = REPORT_MD) -> str:
    return join(EVAL, file)
