"""The fit rule (reaemb_ray/fit.py): what fits, what fails at once, what waits for an autoscaler."""
from __future__ import annotations

from types import SimpleNamespace

from reaemb_ray import fit

CPU2 = {"CPU": 2.0}
PAPER = {"the learner": (1, {"CPU": 2, "GPU": 1}), "4 rollout workers": (4, {"CPU": 1, "GPU": 1}),
         "2 reward workers": (2, {"CPU": 1, "GPU": 0})}


def test_totals_and_bundles_count_every_actor():
    assert fit.totals(PAPER) == {"CPU": 8.0, "GPU": 5.0}
    b = fit.bundles(PAPER)
    assert len(b) == 7 and b[0] == {"CPU": 2.0, "GPU": 1.0} and b[-1] == {"CPU": 1.0}  # zero GPU left out
    assert fit.group(3, SimpleNamespace(num_cpus=0.5, num_gpus=0)) == (3, {"CPU": 0.5, "GPU": 0.0})


def test_what_fits_is_ok_anywhere():
    have = {"CPU": 8.0, "GPU": 5.0}
    assert fit.decide(PAPER, have, embedded=True).action == fit.OK
    assert fit.decide(PAPER, have, embedded=False).action == fit.OK  # no probe needed


def test_an_embedded_ray_fails_naming_each_missing_resource_and_its_actors():
    v = fit.decide(PAPER, CPU2, embedded=True)
    assert v.action == fit.FAIL
    assert "need 8 CPU in all (the learner: 2, 4 rollout workers: 4, 2 reward workers: 2) but this Ray has 2" in v.message
    assert "need 5 GPU in all (the learner: 1, 4 rollout workers: 4) but this Ray has 0" in v.message
    assert "lower the *_resources" in v.message


def test_a_cluster_that_publishes_its_largest_size_waits_or_fails_at_once():
    assert fit.decide(PAPER, CPU2, embedded=False, capacity={"CPU": 64, "GPU": 8}).action == fit.WAIT
    v = fit.decide(PAPER, CPU2, embedded=False, capacity={"CPU": 64, "GPU": 4})
    assert v.action == fit.FAIL and "at its largest" in v.message and "has 4" in v.message
    assert "CPU" not in v.message.split(";")[0]  # only the resource that can never fit is named


def test_a_cluster_without_published_size_is_probed_then_waits_or_fails():
    assert fit.decide(PAPER, CPU2, embedded=False).action == fit.PROBE
    w = fit.decide(PAPER, CPU2, embedded=False, launched=True)
    assert w.action == fit.WAIT and w.message.startswith("waiting for the autoscaler")
    f = fit.decide(PAPER, CPU2, embedded=False, launched=False)
    assert f.action == fit.FAIL and "no autoscaler added nodes" in f.message and "5 GPU" in f.message


def test_fractions_add_up_and_a_hair_over_is_not_rounded_away():
    half = {"2 workers": (2, {"CPU": 0.5})}
    assert fit.decide(half, {"CPU": 1.0}, embedded=True).action == fit.OK
    assert fit.decide({"3 workers": (3, {"CPU": 0.5})}, {"CPU": 1.0}, embedded=True).action == fit.FAIL
