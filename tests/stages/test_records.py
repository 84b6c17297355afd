"""The stage check shared by `reaemb run` and the standalone commands, on a real file:// store with three small
stages a -> b -> c: records written last, redo exactly what changed and what reads it, say why, leave no record
behind a failure, resume an interrupted attempt with the same inputs, refuse a stage whose upstream is not done."""
import pytest

from reaemb_ray import layout, records
from reaemb_ray.config import load_config
from reaemb_ray.stages.base import Stage, StageNotReady, check, execute, run_standalone
from reaemb_ray.storage import store_for


class Chain:
    """Stages a (reads a raw file) -> b -> c; each work call is logged and writes one output file."""

    def __init__(self, tmp_path, fail_b=False, b_setting=1):
        self.cfg = load_config(None, [f"output_dir=file://{tmp_path / 'bucket'}", f"data.cache_dir={tmp_path / 'c'}"])
        self.store = store_for(self.cfg)
        self.raw = tmp_path / "raw.txt"
        if not self.raw.exists():
            self.raw.write_text("raw v1")
        self.calls, self.fail_b, self.seen_in_b = [], fail_b, []
        raw_inputs = lambda: {"raw.txt": [self.raw.stat().st_size, self.raw.stat().st_mtime_ns]}  # noqa: E731
        self.stages = [Stage("a", (), {"a": 1}, self.work("a"), self.cfg, raw_inputs=raw_inputs, command="a"),
                       Stage("b", ("a",), {"b": {"setting": b_setting}}, self.work("b"), self.cfg, command="b"),
                       Stage("c", ("b",), {}, self.work("c"), self.cfg, command="c")]

    def work(self, name):
        def run(cfg):
            self.calls.append(name)
            if name == "b":
                self.seen_in_b.append([n for n in self.store.listdir("b") if n != layout.RUNNING])
                self.store.write_bytes("b/partial.bin", b"checkpoint")
                if self.fail_b:
                    raise RuntimeError("b died")
            self.store.write_bytes(f"{name}/out.txt", name.encode())
            return {"made": name}
        return run

    def run_all(self):
        """What `reaemb run` does for each stage in order; returns stage -> state found before running."""
        states = {}
        for st in self.stages:
            s = check(st, self.store)
            states[st.name] = s.state
            if s.state != "done":
                execute(st, self.store, s)
        return states


def test_rerun_skips_and_a_deleted_record_redoes_that_stage_and_what_reads_it(tmp_path):
    chain = Chain(tmp_path)
    assert chain.run_all() == {"a": "missing", "b": "missing", "c": "missing"}
    rec = records.read(chain.store, "b")
    assert rec["meta"] == {"made": "b"} and rec["inputs"]["upstream"] == {"a": records.read(chain.store, "a")["run_id"]}
    assert not chain.store.exists(layout.running("b"))  # the attempt marker goes once the record is written
    chain.calls.clear()
    assert chain.run_all() == {"a": "done", "b": "done", "c": "done"} and chain.calls == []

    chain.store.delete(layout.record("b"))
    assert chain.run_all() == {"a": "done", "b": "missing", "c": "stale"}
    assert chain.calls == ["b", "c"]
    assert chain.seen_in_b[-1] == []  # no running marker of these inputs: b started over from an empty folder


def test_changed_raw_input_redoes_everything_and_says_why(tmp_path):
    chain = Chain(tmp_path)
    chain.run_all()
    chain.raw.write_text("raw version 2, replaced in place")
    s = check(chain.stages[0], chain.store)
    assert s.state == "stale" and s.reasons == ["raw input files changed: raw.txt"]
    chain.calls.clear()
    chain.run_all()
    assert chain.calls == ["a", "b", "c"]
    assert "upstream stage a ran again" in records.why_changed(
        {"upstream": {"a": "old"}}, {"upstream": {"a": records.read(chain.store, "a")["run_id"]}})


def test_a_failed_stage_leaves_no_record_and_resumes_with_the_same_inputs(tmp_path):
    Chain(tmp_path).run_all()
    failing = Chain(tmp_path, fail_b=True, b_setting=2)  # a new setting: b and c are stale
    with pytest.raises(RuntimeError, match="b died"):
        failing.run_all()
    assert records.read(failing.store, "b") is None  # no record, although b had one before
    assert check(failing.stages[2], failing.store).state == "blocked"
    assert failing.store.exists("b/partial.bin")  # what it computed is kept

    retry = Chain(tmp_path, b_setting=2)  # same inputs as the failed attempt: resumes in its folder
    assert retry.run_all() == {"a": "done", "b": "missing", "c": "stale"}
    assert "partial.bin" in retry.seen_in_b[0]
    other = Chain(tmp_path, fail_b=True, b_setting=3)
    with pytest.raises(RuntimeError):
        other.run_all()
    again = Chain(tmp_path, b_setting=4)  # other inputs than the interrupted attempt: starts over
    again.run_all()
    assert again.seen_in_b[0] == []


def test_standalone_stage_refuses_a_missing_upstream_and_explains_a_redo(tmp_path, capsys):
    chain = Chain(tmp_path)
    a, b, c = chain.stages
    with pytest.raises(StageNotReady, match=r"c needs a, which is not done \(it has no record\); run `reaemb a`"):
        run_standalone(c, [a, b])
    chain.run_all()
    assert run_standalone(c, [a, b]) == "skipped"
    assert "c: up to date" in capsys.readouterr().out
    changed = Chain(tmp_path, b_setting=7)
    with pytest.raises(StageNotReady, match=r"c needs b, which is not done \(b.setting: 1 -> 7\)"):
        run_standalone(changed.stages[2], changed.stages[:2])
    assert run_standalone(changed.stages[1], changed.stages[:1]) == "ran"
    assert "b: redoing, because: b.setting: 1 -> 7" in capsys.readouterr().out
