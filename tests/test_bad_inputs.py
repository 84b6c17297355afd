"""The bad-input corpus: configs, config files, data files and output folders a user (or an adversary) gives.

Every case runs the real CLI in-process (`reaemb_ray.cli.main`) and must end in ONE line on stderr that names
the key or the file and says how to fix it, with no traceback -- or, for skippable data rows under
`data.on_bad_row=skip`, in a finished prepare whose summary.json counts the skipped rows. No case may start
Ray (a guard fails the test if one does) or leave output a later run would take for complete.
"""
from __future__ import annotations

import bz2
import dataclasses
import gzip
import json
import re
import sys
import typing
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "data"))  # the hand-written fixture datasets

from raw_fixture_files import FIXTURES, GENRES, LCREC, uitem, write_dataset  # noqa: E402

from reaemb_ray import cli  # noqa: E402
from reaemb_ray.config import Config  # noqa: E402
from reaemb_ray.typed_config import is_numeric  # noqa: E402

FIX = re.compile(r"\b(set|use|point|run|remove|give|add|choose|pass|lower|raise|re-encode|restore|repair|put|"
                 r"download|unzip|decompress|quote|delete|keep|save|merge|regenerate|check|write|must|name|leave|fix)\b",
                 re.I)


class RayStarted(BaseException):
    """Not an Exception: the CLI cannot turn it into an error line, so the test fails loudly."""


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    def refuse(*a, **k):
        raise RayStarted("a bad-input case reached init_ray: it must stop before Ray starts")

    monkeypatch.setattr("reaemb_ray.runtime.init_ray", refuse)


def reaemb(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc: int, err: str, *names: str, fix: bool = True) -> str:
    """The single error line, after checking it names every one of `names` and (unless fix=False) a fix."""
    assert rc != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("reaemb ") and "error" in line]
    assert len(lines) == 1, err
    line = lines[0]
    for n in names:
        assert n.lower() in line.lower(), f"{n!r} not in: {line}"
    assert not fix or FIX.search(line.split("error:", 1)[1]), f"no fix in: {line}"
    return line


# ------------------------------------------------------------------------------------------- datasets


def movielens(folder: Path, users: int = 10, items: int = 20, per_user: int = 4) -> Path:
    """A GroupLens-format MovieLens folder: `users` users with `per_user` distinct items each, timestamps."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.item").write_text("".join(uitem(i, f"Movie {i} (1995)", ["Drama"]) + "\n"
                                           for i in range(1, items + 1)), encoding="latin-1")
    rows = [f"{u}\t{(per_user * u + k) % items + 1}\t4\t{1000 + 10 * u + k}\n"
            for u in range(1, users + 1) for k in range(per_user)]
    (folder / "u.data").write_text("".join(rows))
    return folder


@pytest.fixture
def base(tmp_path):
    """(config file, output folder): a small valid config for every stage on a 20-item MovieLens folder."""
    data = movielens(tmp_path / "ml")
    out = tmp_path / "out"
    cfg = {"output_dir": str(out), "data": {"reader": "movielens", "path": str(data), "name": "ml-100k"},
           "model": {"backbone": "tiny", "max_length": 64},
           "lrcl": {"num_workers": 1, "steps": 2, "batch_size": 8, "micro_batch_size": 8},
           "crrl": {"num_rollout_workers": 1, "num_reward_workers": 1, "group_size": 2, "num_negatives": 3,
                    "init_from": "backbone"},
           "srs": {"hidden": 8, "epochs": 1, "seeds": [0]},
           "eval": {"methods": ["id"], "num_sampled_negatives": 5, "ks": [5]},
           "ray": {"num_cpus": 2}}
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, out


def _prepared(capsys, base):
    cfg, out = base
    rc, _, err = reaemb(capsys, "prepare", "--config", cfg)
    assert rc == 0, err
    return out / "prepared"


# --------------------------------------------------------------------------------------- config files

CONFIG_FILES = {
    # id: (file content as bytes or a callable making the path, names in the message)
    "missing": (None, ["not found", "--config"]),
    "folder": ("FOLDER", ["is a folder"]),
    "binary": (b"\x00\x01\x02\x89PNG\x00", ["not a text file"]),
    "latin1": ("lrcl:\n  steps: 3 # caf\xe9\n".encode("latin-1"), ["not a text file"]),
    "empty": (b"", ["is empty", "reaemb config --print"]),
    "only-comments": (b"# nothing here\n", ["is empty"]),
    "list-top-level": (b"- 1\n- 2\n", ["mapping at the top level"]),
    "bad-yaml": (b"lrcl: [1, 2\n", ["not valid yaml", "line"]),
    "tab-indent": (b"lrcl:\n\tsteps: 3\n", ["not valid yaml"]),
    "duplicate-key": (b"lrcl:\n  steps: 3\n  steps: 4\n", ["'steps' appears twice", "line 3"]),
    "duplicate-section": (b"lrcl: {steps: 3}\nlrcl: {lr: 0.1}\n", ["'lrcl' appears twice"]),
    "null-section": (b"lrcl:\n", ["lrcl must be a mapping", "null"]),
    "scalar-section": (b"lrcl: 5\n", ["lrcl must be a mapping"]),
    "unknown-section": (b"lrlc: {steps: 3}\n", ["unknown key lrlc"]),
    "int-key": (b"1: 2\n", ["unknown key 1"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_FILES))
def test_config_file(case, tmp_path, capsys):
    content, names = CONFIG_FILES[case]
    path = tmp_path / "c.yaml"
    if content == "FOLDER":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    rc, _, err = reaemb(capsys, "run", "--config", path)
    assert rc == 2
    one_line_error(rc, err, *names)


def test_no_config_is_refused_and_defaults_are_printable(capsys):
    rc, _, err = reaemb(capsys, "run")
    one_line_error(rc, err, "--config is required", "reaemb config --print")
    rc, out, err = reaemb(capsys, "config", "--print")
    assert rc == 0 and "built-in default" in err and yaml.safe_load(out)["lrcl"]["steps"] == 2000


def test_config_print_shows_the_effective_config(base, capsys):
    cfg, _ = base
    rc, out, _ = reaemb(capsys, "config", "--config", cfg, "lrcl.lr=1e-4", "--print")
    shown = yaml.safe_load(out)
    assert rc == 0 and shown["lrcl"]["lr"] == 1e-4 and shown["data"]["item_noun"] == "movie"  # derived, shown


# ------------------------------------------------------------------------------------ config values

# override(s), ";"-separated -> names the message must contain. Every case runs `reaemb run` on the base config.
CONFIG_VALUES = {
    # from the issue
    "crrl.lr=-1": ["crrl.lr must be >= 0"],
    "srs.lr=0": ["srs.lr must be > 0"],
    "lrcl.lr=.nan": ["lrcl.lr", "not a finite number"],
    "lrcl.lr=.inf": ["lrcl.lr", "not a finite number"],
    "crrl.sigma=-.inf": ["crrl.sigma", "not a finite number"],
    "eval.ks=[]": ["eval.ks must not be empty"],
    "ray.num_cpus=-1": ["ray.num_cpus must be >= 0"],
    "export.cpus_per_actor=0": ["export.cpus_per_actor must be >= 1"],
    "srs.seeds=[1,1]": ["srs.seeds lists 1 twice"],
    # types
    "lrcl.lr=fast": ["lrcl.lr must be a number"],
    "lrcl.steps=1.5": ["lrcl.steps must be an integer"],
    "lrcl.steps=true": ["lrcl.steps must be an integer"],
    "model.use_thought=maybe": ["model.use_thought must be true or false"],
    "srs.backbones=sasrec": ["srs.backbones must be a list"],
    "srs.backbones=[transformer]": ["srs.backbones[0]", "sasrec"],
    "crrl.reward_weights=[1,2]": ["crrl.reward_weights must be a mapping"],
    "crrl.engine=tensorflow": ["crrl.engine", "'torch', 'naive', 'vllm'"],
    "lrcl.zero_stage=4": ["lrcl.zero_stage=4 is not allowed"],
    "lrcl.zero_stage='2'": ["lrcl.zero_stage='2' is not allowed"],
    "export.dtype=bf16": ["export.dtype", "or null"],
    "data.name=123": ["data.name must be a string", "quote"],
    "output_dir=": ["output_dir must not be empty"],
    "model.backbone=": ["model.backbone must not be empty"],
    "ray.namespace=": ["ray.namespace must not be empty"],
    "model.lora.target_modules=[]": ["model.lora.target_modules must not be empty"],
    # keys and override syntax
    "lrcl.bogus=1": ["unknown key lrcl.bogus"],
    "bogus=1": ["unknown key bogus"],
    "lrcl": ["must look like key.sub=value"],
    "lrcl..steps=3": ["empty part"],
    "lrcl.steps=[1,": ["not valid yaml"],
    "lrcl.steps.x=1": ["lrcl.steps must be an integer"],
    # ranges and lists
    "eval.ks=[0,5]": ["eval.ks[0] must be >= 1"],
    "eval.ks=[5,5]": ["eval.ks lists 5 twice"],
    "srs.seeds=[]": ["srs.seeds must not be empty"],
    "srs.seeds=[-1]": ["srs.seeds[0] must be >= 0"],
    "seed=-3": ["seed must be >= 0"],
    "crrl.seed=9999999999": ["crrl.seed must be", "<= 4.29497e+09"],
    "srs.backbones=[sasrec,sasrec]": ["srs.backbones lists 'sasrec' twice"],
    "eval.methods=[id,id]": ["eval.methods lists 'id' twice"],
    "eval.methods=[]": ["eval.methods must not be empty"],
    "eval.methods=[id,bm25]": ["eval.methods entry 'bm25'"],
    "crrl.reward_weights={cooccurrence: -1}": ["crrl.reward_weights.cooccurrence must be >= 0"],
    "crrl.reward_weights={ctr: 1.0}": ["crrl.reward_weights has unknown reward"],
    "lrcl.drop_ratio=1": ["lrcl.drop_ratio must be >= 0 and < 1"],
    "srs.bert_mask_prob=0": ["srs.bert_mask_prob must be > 0 and < 1"],
    "crrl.clip_low=1.5": ["crrl.clip_low must be >= 0 and < 1"],
    "crrl.group_size=1": ["crrl.group_size must be >= 2", "two samples"],
    "model.max_length=8": ["model.max_length must be >= 16"],
    "crrl.rollout_resources.num_gpus=-1": ["crrl.rollout_resources.num_gpus must be >= 0"],
    # cross-field
    "lrcl.batch_size=12": ["lrcl.batch_size (12) must be a multiple"],
    "srs.hidden=10;srs.heads=3": ["srs.hidden (10) must be divisible by srs.heads (3)"],
    "lrcl.zero_stage=3": ["lrcl.zero_stage=3 is not supported", "lrcl.zero_stage=2"],
    "crrl.advantage=anchor;crrl.anchor=false": ["crrl.advantage=anchor needs crrl.anchor=true"],
    "crrl.reward=mix;crrl.reward_weights={cooccurrence: 0, srs: 0}": ["crrl.reward_weights", "positive weight"],
    "lrcl.fail_at_step=9": ["lrcl.fail_at_step (9) is after the last step"],
    "crrl.variants=[paper/srs]": ["crrl.variants is set but eval.methods has no crrl"],
    "crrl.variants=[paper/ctr]": ["crrl.variants entry 'paper/ctr'"],
    "crrl.variants=[paper/srs,paper/srs]": ["crrl.variants lists 'paper/srs' twice"],
    "eval.methods=[id,crrl-paper-srs]": ["eval.methods has crrl-paper-srs", "crrl.variants"],
    "eval.main_backbones=[gru4rec]": ["eval.main_backbones lists 'gru4rec'", "srs.backbones"],
    "eval.main_methods=[lrcl]": ["eval.main_methods lists 'lrcl'", "eval.methods"],
    "ray.address=local": ["ray.address='local' is not a Ray address"],
    "ray.address=http://head:8265": ["ray.address", "'ray://host:10001'"],
    "lrcl.num_workers=4;lrcl.batch_size=32;eval.methods=[id,lrcl]": ["lrcl.num_workers x lrcl.cpus_per_worker = 4 CPUs", "ray.num_cpus"],
    "export.num_actors=2;export.cpus_per_actor=2;eval.methods=[id,raw_llm]": ["export.num_actors x export.cpus_per_actor = 4 CPUs"],
    # data section
    "data.path=/definitely/not/here": ["data.path does not exist"],
    "data.path=auto:ml-20m": ["auto:ml-100k"],
    "data.reader=csv": ["data.reader='csv' is not allowed"],
    "data.on_bad_row=ignore": ["data.on_bad_row='ignore' is not allowed"],
    "data.reader=amazon_json;data.name=mystuff": ["data.item_noun is not set", "data.name='mystuff'"],
    "data.item_file=meta.json": ["data.item_file is only read by the p5 readers"],
    "data.kcore=-1": ["data.kcore must be >= 0"],
    "data.cooc_window=-1": ["data.cooc_window must be >= 0"],
}


@pytest.mark.parametrize("overrides", sorted(CONFIG_VALUES))
def test_config_value(overrides, base, capsys):
    cfg, out = base
    rc, _, err = reaemb(capsys, "run", "--config", cfg, *overrides.split(";"))
    assert rc == 2
    one_line_error(rc, err, *CONFIG_VALUES[overrides])
    assert not out.exists()  # nothing was written


def test_yaml_numbers_like_1e_4_are_numbers(base, tmp_path, capsys):
    cfg, _ = base
    data = yaml.safe_load(Path(cfg).read_text())
    data["crrl"]["lr"] = "__LR__"
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data).replace("__LR__", "1e-4"))  # as a person types it: unquoted, no dot
    rc, out, err = reaemb(capsys, "config", "--config", path, "lrcl.lr=2E-5", "--print")
    assert rc == 0, err
    shown = yaml.safe_load(out)
    assert shown["crrl"]["lr"] == 1e-4 and shown["lrcl"]["lr"] == 2e-5


# ---------------------------------------------------------------------- every declared range, generically


def _ranged_fields(cls=Config, prefix=""):
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _ranged_fields(tp, key + ".")
        elif "range" in f.metadata:
            yield key, tp, f.metadata["range"]


def _outside(tp, rng):
    """A value just outside the declared range, of the field's type (a list holds it as its one entry)."""
    is_int = tp is int or typing.get_args(tp) == (int,)
    if rng.ge is not None:
        v = rng.ge - 1
    elif rng.gt is not None:
        v = rng.gt - (1 if is_int else 0.5)
    elif rng.le is not None:
        v = rng.le + 1
    else:
        v = rng.lt + (1 if is_int else 0.5)
    v = int(v) if is_int else float(v)
    if typing.get_origin(tp) is list:
        return f"[{v}]"
    if typing.get_origin(tp) is dict:
        return "{cooccurrence: %s}" % v
    return repr(v)


RANGED = sorted((k, tp, r) for k, tp, r in _ranged_fields())


def test_every_numeric_field_declares_a_range():
    """Fields added later must declare one too: setting(default, ge=/gt=/le=/lt=...)."""
    def numeric(cls=Config, prefix=""):
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                yield from numeric(tp, f"{prefix}{f.name}.")
            elif is_numeric(tp):
                yield f"{prefix}{f.name}", "range" in f.metadata
    missing = [k for k, ok in numeric() if not ok]
    assert not missing, f"numeric config fields without a declared range: {missing}"


@pytest.mark.parametrize("key,tp,rng", RANGED, ids=[k for k, _, _ in RANGED])
def test_every_range_is_enforced_with_a_one_line_error(key, tp, rng, base, capsys):
    cfg, out = base
    rc, _, err = reaemb(capsys, "config", "--config", cfg, f"{key}={_outside(tp, rng)}")
    one_line_error(rc, err, key, "must be " + rng.describe())


# ------------------------------------------------------------------- paths the stages will need


def _model_folder(tmp_path, config=True, tokenizer=True):
    d = tmp_path / "model"
    d.mkdir()
    if config:
        (d / "config.json").write_text("{}")
    if tokenizer:
        (d / "tokenizer.json").write_text("{}")
    return d


PATHS = {
    "backbone-hub-name-not-cached": (["model.backbone=not/a-model"], ["model.backbone 'not/a-model'", "hf download"]),
    "backbone-invalid-name": (["model.backbone=a/b/c"], ["model.backbone 'a/b/c'", "tiny, smollm2"]),
    "backbone-missing-folder": (["model.backbone=./no/such/folder"], ["model.backbone './no/such/folder' is not a folder"]),
    "backbone-folder-without-config": (lambda t: [f"model.backbone={_model_folder(t, config=False)}"], ["no config.json"]),
    "backbone-folder-without-tokenizer": (lambda t: [f"model.backbone={_model_folder(t, tokenizer=False)}"],
                                          ["no tokenizer files", "save_pretrained"]),
    "backbone-is-a-file": (lambda t: [f"model.backbone={t / 'base.yaml'}"], ["is not a folder"]),
    "init-from-nowhere": (["crrl.init_from=/nowhere/lrcl/final"], ["crrl.init_from '/nowhere/lrcl/final' does not exist"]),
    "init-from-not-a-generator": (lambda t: [f"crrl.init_from={t}"], ["is not a generator folder", "reaemb_meta.json"]),
    "data-path-is-a-file": (lambda t: [f"data.path={t / 'base.yaml'}"], ["data.path", "is a file"]),
    "item-file-missing": (["data.reader=p5", "data.name=beauty", "data.item_file=nope.json"],
                          ["data.item_file 'nope.json' is not a file"]),
}


@pytest.mark.parametrize("case", sorted(PATHS))
def test_paths(case, base, tmp_path, capsys):
    cfg, out = base
    overrides, names = PATHS[case]
    overrides = overrides(tmp_path) if callable(overrides) else overrides
    rc, _, err = reaemb(capsys, "run", "--config", cfg, *overrides)
    one_line_error(rc, err, *names)
    assert not (out / "prepared").exists()


STANDALONE = {  # a stage run alone, before the stage it reads from
    "lrcl-without-prepare": ("lrcl", [], ["has no prepared data", "reaemb prepare"]),
    "evaluate-without-prepare": ("evaluate", [], ["has no prepared data"]),
    "export-without-prepare": ("export", [], ["has no prepared data"]),
    "crrl-without-lrcl": ("crrl", ["crrl.init_from="], ["crrl.init_from is empty", "reaemb lrcl"]),
}


@pytest.mark.parametrize("case", sorted(STANDALONE))
def test_standalone_stage_before_its_input(case, base, capsys):
    cfg, _ = base
    command, overrides, names = STANDALONE[case]
    if command == "crrl":
        _prepared(capsys, base)
    rc, _, err = reaemb(capsys, command, "--config", cfg, *overrides)
    one_line_error(rc, err, *names)


# --------------------------------------------------------------------------------------- output folders


def _file(t: Path) -> Path:
    (t / "a-file").write_text("x")
    return t / "a-file"


OUTPUT = {
    "output-dir-is-a-file": (lambda t: [f"output_dir={_file(t)}"], ["output_dir", "is a file, not a folder"]),
    "output-dir-below-a-file": (lambda t: [f"output_dir={_file(t) / 'run1'}"], ["lies below", "which is a file"]),
    "output-dir-deep-below-a-file": (lambda t: [f"output_dir={_file(t) / 'x' / 'y'}"], ["lies below"]),
    "output-dir-not-writable": (lambda t: ["output_dir=/sys/kernel/reaemb-out"], ["output_dir", "is not writable"]),
    "uri-output-mirror-below-a-file": (lambda t: ["output_dir=s3://bucket/run", f"data.cache_dir={_file(t)}"],
                                       ["data.cache_dir", "lies below"]),
}


@pytest.mark.parametrize("command", ["prepare", "run", "evaluate"])
@pytest.mark.parametrize("case", sorted(OUTPUT))
def test_output_folder(case, command, base, tmp_path, capsys):
    cfg, _ = base
    overrides, names = OUTPUT[case]
    rc, _, err = reaemb(capsys, command, "--config", cfg, *overrides(tmp_path))
    one_line_error(rc, err, *names)


# --------------------------------------------------------------------------- the prepared catalogue


def test_sampled_negatives_beyond_the_catalogue_stop_run_after_prepare_before_ray(base, capsys):
    cfg, out = base
    rc, _, err = reaemb(capsys, "run", "--config", cfg, "eval.num_sampled_negatives=50")
    one_line_error(rc, err, "eval.num_sampled_negatives=50", "20 items", "<= 16")
    assert (out / "prepared" / "summary.json").exists()  # prepare finished; nothing after it started
    assert not (out / "eval").exists()


CATALOGUE = {  # (command, overrides, names): checked as soon as the prepared data exists
    "evaluate-negatives": ("evaluate", ["eval.num_sampled_negatives=17"], ["eval.num_sampled_negatives=17", "<= 16"]),
    "run-negatives-prepared-up-to-date": ("run", ["eval.num_sampled_negatives=30"], ["at most 16 negatives"]),
    "crrl-candidates": ("crrl", ["crrl.num_negatives=25"], ["crrl.num_positives + crrl.num_negatives = 26"]),
    "export-pca": ("export", ["export.pca_dim=64", "export.method=raw_llm"], ["export.pca_dim=64", "20 items"]),
}


@pytest.mark.parametrize("case", sorted(CATALOGUE))
def test_catalogue_checks(case, base, capsys):
    cfg, out = base
    _prepared(capsys, base)
    command, overrides, names = CATALOGUE[case]
    rc, _, err = reaemb(capsys, command, "--config", cfg, *overrides)
    one_line_error(rc, err, *names)
    assert not (out / "eval").exists() and not (out / "embeddings").exists()


# ---------------------------------------------------------------------------------------- data files


def _ml(t: Path, edit) -> Path:
    folder = movielens(t / "ml")
    edit(folder)
    return folder


def _append(name: str, data: bytes):
    return lambda f: (f / name).write_bytes((f / name).read_bytes() + data)


def _replace(name: str, data: bytes):
    return lambda f: (f / name).write_bytes(data)


def _compress(name: str, how):
    return lambda f: (f / name).write_bytes(how((f / name).read_bytes()))


def _zip(name: str):
    def edit(f):
        with zipfile.ZipFile(f / "x.zip", "w") as z:
            z.write(f / name, name)
        (f / "x.zip").replace(f / name)
    return edit


def _parquet_copy(f: Path, drop_last: bool = False):
    rows = [{"movie_id": i, "movie_title": f"Movie {i} (1995)", "release_date": "",
             **{g: int(g == "Drama") for g in GENRES}} for i in range(1, 21)]
    pq.write_table(pa.Table.from_pylist(rows), f / "MovieLens100k_items.parquet.brotli")
    data = [tuple(map(int, x.split("\t"))) for x in (f / "u.data").read_text().splitlines()]
    data = data[:-1] if drop_last else data
    pq.write_table(pa.table({"user_id": [d[0] for d in data], "movie_id": [d[1] for d in data],
                             "rating": [d[2] for d in data], "timestamp": [d[3] for d in data]}),
                   f / "MovieLens100k_data.parquet.brotli")


MOVIELENS_DATA = {  # edit of a valid MovieLens folder -> names in the error (prepare, on_bad_row=error)
    "empty-u.data": (_replace("u.data", b""), ["u.data is empty"]),
    "blank-u.data": (_replace("u.data", b"\n\n  \n"), ["u.data is empty"]),
    "empty-u.item": (_replace("u.item", b""), ["u.item is empty"]),
    "truncated-u.data": (_append("u.data", b"3\t7\t4\t10"), ["u.data:41", "truncated_line", "cut off"]),
    "truncated-mid-field": (_append("u.data", b"3\t7\t4"), ["u.data:41", "truncated_line"]),
    "non-utf8-u.data": (_append("u.data", b"3\t7\t4\t1\xff\n"), ["u.data:41", "bad_encoding", "re-encode"]),
    "utf16-u.data": (lambda f: (f / "u.data").write_bytes((f / "u.data").read_text().encode("utf-16")),
                     ["u.data is UTF-16", "iconv"]),
    "zip-as-u.data": (_zip("u.data"), ["u.data is a zip archive", "unzip"]),
    "zstd-as-u.data": (_replace("u.data", b"\x28\xb5\x2f\xfd" + b"\x00" * 20), ["zstd-compressed"]),
    "binary-u.data": (_replace("u.data", b"\x7fELF\x00\x00\x00garbage"), ["u.data is a binary file"]),
    "truncated-gzip-u.data": (lambda f: (f / "u.data").write_bytes(gzip.compress((f / "u.data").read_bytes())[:-30]),
                              ["u.data", "cut off or corrupt"]),
    "duplicate-row": (lambda f: _append("u.data", (f / "u.data").read_bytes().splitlines(True)[7])(f),
                      ["u.data:41", "duplicate_interaction"]),
    "negative-user": (_append("u.data", b"-3\t7\t4\t10\n"), ["u.data:41", "negative_id"]),
    "negative-item": (_append("u.data", b"3\t-7\t4\t10\n"), ["u.data:41", "negative_id"]),
    "empty-user": (_append("u.data", b"\t7\t4\t10\n"), ["u.data:41", "empty id"]),
    "unknown-item": (_append("u.data", b"3\t99\t4\t10\n"), ["u.data:41", "item_without_metadata"]),
    "bad-timestamp": (_append("u.data", b"3\t7\t4\tyesterday\n"), ["u.data:41", "malformed_line"]),
    "comma-separated": (_append("u.data", b"3,7,4,10\n"), ["u.data:41", "malformed_line"]),
    "short-u.item-line": (_append("u.item", b"21|Short (1995)\n"), ["u.item:21", "malformed_line"]),
    "duplicate-item": (_append("u.item", (uitem(3, "Again (1995)", ["Drama"]) + "\n").encode()),
                       ["u.item:21", "duplicate_item"]),
    "textless-item": (_append("u.item", ("21|||||" + "|".join(["0"] * 19) + "\n").encode()),
                      ["u.item:21", "item_without_text"]),
    "negative-item-id-in-u.item": (_append("u.item", (uitem(-4, "Minus (1995)", ["Drama"]) + "\n").encode()),
                                   ["u.item:21", "negative_id"]),
    "no-user-with-3": (lambda f: (f / "u.data").write_text("1\t2\t4\t10\n1\t3\t4\t11\n"),
                       ["no user has >= 3 interactions"]),
    "parquet-and-u.data-disagree": (lambda f: _parquet_copy(f, drop_last=True),
                                    ["two copies of MovieLens 100K that disagree", "u.data has 40"]),
    "corrupt-parquet-copy": (lambda f: (_parquet_copy(f), (f / "MovieLens100k_data.parquet.brotli").write_bytes(b"PAR1junk")),
                             ["MovieLens100k_data.parquet.brotli", "not a readable parquet file"]),
    "no-files": (lambda f: [(f / n).unlink() for n in ("u.data", "u.item")], ["u.data + u.item", "data.path"]),
}


@pytest.mark.parametrize("case", sorted(MOVIELENS_DATA))
def test_movielens_data(case, base, tmp_path, capsys):
    cfg, out = base
    edit, names = MOVIELENS_DATA[case]
    folder = _ml(tmp_path / case, edit)
    rc, _, err = reaemb(capsys, "prepare", "--config", cfg, f"data.path={folder}")
    one_line_error(rc, err, *names)
    assert not (out / "prepared").exists() and not (out / ".prepared.partial").exists()


@pytest.mark.parametrize("case", ["truncated-u.data", "non-utf8-u.data", "duplicate-row"])
def test_data_errors_stop_run_before_ray(case, base, tmp_path, capsys):
    cfg, out = base
    folder = _ml(tmp_path / case, MOVIELENS_DATA[case][0])
    rc, _, err = reaemb(capsys, "run", "--config", cfg, f"data.path={folder}")
    line = one_line_error(rc, err, *MOVIELENS_DATA[case][1])
    assert "stage 'prepare' failed" in line


SKIPPABLE = {  # the same rows under on_bad_row=skip: counted in summary.json, the rest prepared
    "truncated-u.data": "truncated_line", "non-utf8-u.data": "bad_encoding", "duplicate-row": "duplicate_interaction",
    "negative-user": "negative_id", "negative-item": "negative_id", "unknown-item": "item_without_metadata",
    "bad-timestamp": "malformed_line", "comma-separated": "malformed_line", "short-u.item-line": "malformed_line",
    "duplicate-item": "duplicate_item", "textless-item": "item_without_text", "empty-user": "malformed_line",
    "negative-item-id-in-u.item": "negative_id",
}


@pytest.mark.parametrize("case", sorted(SKIPPABLE))
def test_skippable_rows_are_counted(case, base, tmp_path, capsys):
    cfg, out = base
    folder = _ml(tmp_path / case, MOVIELENS_DATA[case][0])
    rc, _, err = reaemb(capsys, "prepare", "--config", cfg, f"data.path={folder}", "data.on_bad_row=skip")
    assert rc == 0, err
    summary = json.loads((out / "prepared" / "summary.json").read_text())
    assert summary["skipped_rows"] == {SKIPPABLE[case]: 1}
    assert summary["interactions"] == 40 and summary["items"] == 20  # everything else kept


def _p5(t: Path, edit=None) -> Path:
    folder = write_dataset(t / "p5", dict(FIXTURES["p5"]))
    if edit:
        edit(folder)
    return folder


OTHER_DATA = {  # (reader, name, folder maker) -> names in the error
    "p5-truncated-sequence": ("p5", "yelp", lambda t: _p5(t, _append("sequential_data.txt", b"3 1 2")),
                              ["sequential_data.txt:3", "truncated_line"]),
    "p5-negative-user": ("p5", "yelp", lambda t: _p5(t, _append("sequential_data.txt", b"-3 1 2 3\n")),
                         ["sequential_data.txt:3", "negative_id"]),
    "p5-datamaps-not-json": ("p5", "yelp", lambda t: _p5(t, _replace("datamaps.json", b'{"id2item": {"1": ')),
                             ["datamaps.json:1", "not valid JSON"]),
    "p5-datamaps-without-id2item": ("p5", "yelp", lambda t: _p5(t, _replace("datamaps.json", b'{"item2id": {}}')),
                                    ["datamaps.json", "'id2item'"]),
    "p5-datamaps-empty": ("p5", "yelp", lambda t: _p5(t, _replace("datamaps.json", b"  \n")), ["datamaps.json is empty"]),
    "p5-two-metadata-files": ("p5", "yelp", lambda t: _p5(t, _replace("yelp_other_business.json",
                                                                      b'{"business_id": "x"}\n')),
                              ["yelp_other_business.json", "data.item_file"]),
    "p5-no-metadata": ("p5", "yelp", lambda t: _p5(t, lambda f: (f / "yelp_business.json").unlink()),
                       ["need one item metadata file", "data.path"]),
    "p5-metadata-without-ids": ("p5", "yelp", lambda t: _p5(t, _append("yelp_business.json", b'{"name": "x"}\n')),
                                ["yelp_business.json:5", "without an id"]),
    "p5-metadata-gzip-corrupt": ("p5", "yelp", lambda t: _p5(t, _compress("yelp_business.json",
                                                                         lambda b: gzip.compress(b)[:-12])),
                                 ["yelp_business.json", "cut off or corrupt"]),
    "lcrec-inter-is-a-list": ("lcrec", "Instruments", lambda t: write_dataset(
        t / "lc", {**LCREC, "Instruments.inter.json": "[[0, 1, 2]]"}), ["Instruments.inter.json holds a JSON list"]),
    "lcrec-user-not-a-list": ("lcrec", "Instruments", lambda t: write_dataset(
        t / "lc", {**LCREC, "Instruments.inter.json": json.dumps({"0": [0, 1, 2], "1": "0 1 2"})}),
        ["Instruments.inter.json (user '1')", "malformed_line"]),
    "lcrec-two-inter-files": ("lcrec", "nothing", lambda t: write_dataset(
        t / "lc", {**LCREC, "Other.inter.json": "{}"}), ["expected nothing.inter.json", "data.name"]),
    "recbole-untyped-header": ("recbole_atomic", "toy", lambda t: write_dataset(
        t / "rb", {**FIXTURES["recbole_atomic"], "toy.inter": "user_id\titem_id\nu1\ti1\n"}),
        ["toy.inter:1", "not 'name:type'"]),
    "recbole-infinite-timestamp": ("recbole_atomic", "toy", lambda t: write_dataset(
        t / "rb", {**FIXTURES["recbole_atomic"], "toy.inter": FIXTURES["recbole_atomic"]["toy.inter"] + "u1\ti1\t5\tinf\n"}),
        ["toy.inter:5", "malformed_line"]),
    "recbole-only-headers": ("recbole_atomic", "toy", lambda t: write_dataset(
        t / "rb", {**FIXTURES["recbole_atomic"], "toy.inter": "user_id:token\titem_id:token\n"}),
        ["no interaction was read", "toy.inter"]),
    "amazon-two-review-files": ("amazon_json", "_5", lambda t: write_dataset(
        t / "az", {**FIXTURES["amazon_json"], "Other_5.json": '{"reviewerID": "U"}\n'}),
        ["review file", "Other_5.json", "data.name"]),
    "amazon-meta-bz2-broken": ("amazon_json", "beauty", lambda t: _edit(write_dataset(
        t / "az", dict(FIXTURES["amazon_json"])), _compress("meta_Beauty.json", lambda b: bz2.compress(b)[:-8])),
        ["meta_Beauty.json", "cut off or corrupt"]),
    "yelp-bad-date": ("yelp", "yelp", lambda t: write_dataset(t / "y", {
        **FIXTURES["yelp"], "review.json": FIXTURES["yelp"]["review.json"] + '{"user_id": "u1", "business_id": "b1", '
                                                                                 '"date": "last week"}\n'}),
        ["review.json:4", "malformed_line"]),
    "yelp-every-row-skipped": ("yelp", "yelp", lambda t: write_dataset(t / "y", {
        **FIXTURES["yelp"], "review.json": '{"user_id": "u1", "business_id": "zz", "date": "2020-01-01 00:00:00"}\n'}),
        ["review.json:1", "item_without_metadata"]),
    "wrong-reader-for-folder": ("yelp", "yelp", lambda t: movielens(t / "ml"), ["yelp businesses", "data.path"]),
}


def _edit(folder, edit):
    edit(folder)
    return folder


@pytest.mark.parametrize("case", sorted(OTHER_DATA))
def test_other_readers_data(case, base, tmp_path, capsys):
    cfg, out = base
    reader, name, make, names = OTHER_DATA[case]
    folder = make(tmp_path)
    rc, _, err = reaemb(capsys, "prepare", "--config", cfg, f"data.path={folder}", f"data.reader={reader}",
                        f"data.name={name}", "data.item_noun=item")
    one_line_error(rc, err, *names)
    assert not (out / "prepared").exists()


def test_every_row_skipped_is_one_line_not_a_crash(base, tmp_path, capsys):
    cfg, _ = base
    folder = write_dataset(tmp_path / "y", {**FIXTURES["yelp"], "review.json": '{"user_id": "u1", "business_id": '
                                                                               '"zz", "date": "2020-01-01 00:00:00"}\n'})
    rc, _, err = reaemb(capsys, "prepare", "--config", cfg, f"data.path={folder}", "data.reader=yelp",
                        "data.name=yelp", "data.on_bad_row=skip")
    one_line_error(rc, err, "every row was skipped (1 item_without_metadata)")


# --------------------------------------------------------------------- no partial output taken for complete


def test_a_crash_while_writing_leaves_the_previous_prepared_folder_whole(base, capsys, monkeypatch):
    import reaemb_ray.data.prepare as prep

    cfg, out = base
    prepared = _prepared(capsys, base)
    before = {p.name: p.read_bytes() for p in prepared.iterdir() if not p.name.startswith("_")}
    real = prep.cooccurrence_blocks

    def crash(*a, **k):  # the co-occurrence blocks are the last and largest file prepare writes
        raise OSError(28, "No space left on device")
        yield

    monkeypatch.setattr(prep, "cooccurrence_blocks", crash)
    rc, _, err = reaemb(capsys, "prepare", "--config", cfg, "data.cooc_window=2")
    one_line_error(rc, err, "No space left on device", fix=False)  # not the input's fault: no fix to name
    # the old complete set; its stage record is gone (a failed stage leaves none)
    assert {p.name: p.read_bytes() for p in prepared.iterdir() if not p.name.startswith("_")} == before
    assert not (prepared / "_record.json").exists()
    assert not (out / ".prepared.partial").exists()
    monkeypatch.setattr(prep, "cooccurrence_blocks", real)
    rc, stdout, err = reaemb(capsys, "prepare", "--config", cfg, "data.cooc_window=2")
    assert rc == 0 and "up to date" not in stdout
    assert json.loads((prepared / "summary.json").read_text())["cooccurrence"]["window"] == 2


def test_a_failed_prepare_is_not_taken_as_up_to_date(base, tmp_path, capsys):
    cfg, out = base
    _prepared(capsys, base)
    broken = _ml(tmp_path / "b", _append("u.data", b"3\t7\t4\tyesterday\n"))
    rc, _, err = reaemb(capsys, "prepare", "--config", cfg, f"data.path={broken}")
    one_line_error(rc, err, "u.data:41")
    assert not (out / "prepared" / "_record.json").exists()
    rc, stdout, _ = reaemb(capsys, "prepare", "--config", cfg)  # the original data again: rebuilt, not "up to date"
    assert rc == 0 and "up to date" not in stdout


def test_debug_shows_the_traceback(base, capsys):
    cfg, _ = base
    rc, _, err = reaemb(capsys, "run", "--config", cfg, "crrl.lr=-1", "--debug")
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("reaemb run: config error")


def test_cpu_check_counts_only_the_stages_that_run(base, capsys):
    cfg, _ = base  # eval.methods=[id]: no LRCL workers, no export actors, so their sizes cannot block the run
    rc, _, err = reaemb(capsys, "config", "--config", cfg, "lrcl.num_workers=4", "lrcl.batch_size=32", "--check", "run")
    assert rc == 0, err
