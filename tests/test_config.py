"""Config loading: every shipped config loads, and each kind of mistake stops with a precise message."""
from pathlib import Path

import pytest

from reaemb_ray.config import Config, ConfigError, load_config, parse_overrides, save_config

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["lrcl.steps=7", "crrl.sigma=0.05", "srs.backbones=[gru4rec,bert4rec]",
                             "crrl.rollout_resources.num_gpus=1", "model.use_thought=false"])
    assert cfg.lrcl.steps == 7 and cfg.crrl.sigma == 0.05
    assert cfg.srs.backbones == ["gru4rec", "bert4rec"]
    assert cfg.crrl.rollout_resources.num_gpus == 1.0 and cfg.model.use_thought is False


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert load_config(None, ["crrl.lr=1"]).crrl.lr == 1.0
    with pytest.raises(ConfigError, match="lrcl.steps must be an integer"):
        load_config(None, ["lrcl.steps=1.5"])


@pytest.mark.parametrize("override,message", [
    (["lrcl.batch_size=-1"], "lrcl.batch_size must be >= 1"),
    (["lrcl.bogus=1"], "unknown key lrcl.bogus"),
    (["bogus=1"], "unknown key bogus"),
    (["crrl.engine=tensorflow"], "crrl.engine='tensorflow' is not allowed; use one of 'torch', 'naive', 'vllm'"),
    (["data.path=/definitely/not/here"], "data.path does not exist"),
    (["data.path=auto:ml-20m"], "names no packaged dataset"),
    (["srs.lr=fast"], "srs.lr must be a number"),
    (["model.use_thought=maybe"], "model.use_thought must be true or false"),
    (["crrl.group_size=1"], "crrl.group_size must be >= 2"),
    (["lrcl.batch_size=10", "lrcl.micro_batch_size=4"], "must be a multiple"),
    (["crrl.reward_weights={ctr: 1.0}"], "unknown reward"),
    (["crrl.lr_schedule=kl_adaptive"], "crrl.lr_schedule=kl_adaptive steers the lr towards crrl.target_kl, which is 0"),
    (["srs.hidden=100", "srs.heads=3"], "divisible"),
    (["srs.conditioning=[whitening]"], "srs.conditioning: unknown conditioning step 'whitening'"),
    (["srs.conditioning=[center]", "srs.conditioning_dim=8"], "srs.conditioning: a dimension (8) needs a reducing"),
    (["eval.methods=[]"], "eval.methods must not be empty"),
    (["lrcl.zero_stage=4"], "lrcl.zero_stage=4 is not allowed"),
    (["lrcl"], "must look like key.sub=value"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    assert message in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lrcl: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(listy)


def test_save_and_reload_roundtrip(tmp_path):
    cfg = load_config(None, ["lrcl.steps=3", "srs.seeds=[1,2,3]"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg


def test_parse_overrides_builds_a_tree():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_optional_literal_rejects_unknown_values_and_accepts_null():
    assert load_config(None, ["export.dtype=bfloat16"]).export.dtype == "bfloat16"
    assert load_config(None, ["export.dtype=null"]).export.dtype is None
    with pytest.raises(ConfigError, match=r"export.dtype='bf16' must be one of .* or null"):
        load_config(None, ["export.dtype=bf16"])


def test_lrcl_zero3_is_refused_with_the_alternative():
    with pytest.raises(ConfigError, match="lrcl.zero_stage=3 is not supported.*use lrcl.zero_stage=2"):
        load_config(None, ["lrcl.zero_stage=3"])


# ------------------------------------------------------------------------- declared constraints, generically


def test_a_new_field_needs_only_its_declaration():
    """What another engineer's new field gets from `setting(...)` alone: range, emptiness, uniqueness, NaN."""
    from dataclasses import dataclass

    from reaemb_ray.typed_config import build, check_settings, setting

    @dataclass
    class NewSection:
        temperature: float = setting(1.0, gt=0, le=10, note="softmax temperature")
        layers: list[int] = setting([1, 2], ge=1, nonempty=True, unique=True)
        weights: dict[str, float] = setting({"a": 1.0}, ge=0)
        name: str = setting("x", nonempty=True)

    check_settings(build(NewSection, {}))  # the defaults are valid
    for raw, message in [({"temperature": 0}, "new.temperature must be > 0 and <= 10, got 0.0 (softmax temperature)"),
                         ({"temperature": 11}, "new.temperature must be > 0 and <= 10"),
                         ({"layers": []}, "new.layers must not be empty"),
                         ({"layers": [1, 0]}, "new.layers[1] must be >= 1, got 0"),
                         ({"layers": [2, 2]}, "new.layers lists 2 twice"),
                         ({"weights": {"a": -1}}, "new.weights.a must be >= 0"),
                         ({"name": ""}, "new.name must not be empty")]:
        with pytest.raises(ConfigError) as e:
            check_settings(build(NewSection, raw, "new"), "new")
        assert message in str(e.value)
    with pytest.raises(ConfigError, match="new.temperature=nan is not a finite number"):
        build(NewSection, {"temperature": float("nan")}, "new")


def test_yaml_reads_numbers_as_yaml_1_2_does():
    from reaemb_ray.typed_config import yaml_load

    got = yaml_load("a: 1e-4\nb: 1E5\nc: -2.5e+3\nd: 10\ne: 1e\nf: 1.2.3\ng: .5\nh: 0x1f\n")
    assert got == {"a": 1e-4, "b": 1e5, "c": -2500.0, "d": 10, "e": "1e", "f": "1.2.3", "g": 0.5, "h": 31}
    assert isinstance(got["b"], float) and isinstance(got["d"], int)
    with pytest.raises(ConfigError, match="'x' appears twice"):
        yaml_load("x: 1\ny: 2\nx: 3\n")


def test_config_file_number_1e_4_and_errors_as_one_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lrcl:\n  lr: 1e-4\n")
    assert load_config(p).lrcl.lr == 1e-4
    p.write_text("lrcl:\n  lr: [1,\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "\n" not in str(e.value) and "line 3" in str(e.value)


@pytest.mark.parametrize("overrides,noun", [
    ([], "movie"),
    (["data.reader=yelp"], "business"),
    (["data.reader=recbole_atomic", "data.name=ml-1m"], "movie"),
    (["data.reader=amazon_json", "data.name=Sports_and_Outdoors_5"], "sports and outdoors"),
    (["data.reader=lcrec", "data.name=Instruments"], "instruments"),
    (["data.reader=p5", "data.name=beauty"], "beauty"),
    (["data.reader=p5", "data.name=mine", "data.item_noun=gadget"], "gadget"),
])
def test_item_noun_from_the_config_or_the_dataset_name(overrides, noun):
    assert load_config(None, overrides).data.noun == noun


def test_item_noun_is_never_a_silent_default():
    with pytest.raises(ConfigError, match="data.item_noun is not set and data.name='mine'"):
        load_config(None, ["data.reader=p5", "data.name=mine"])
