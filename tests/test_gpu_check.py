"""scripts/gpu_check.py as shipped, on this CPU machine: every CUDA check is reported as not run (with the
reason), and the CPU parts (LRCL ZeRO-2 bf16 step, learner step, weight group, export, vLLM vs torch engine,
SRS training -- each on the CPU) pass."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script runs its CUDA checks instead")
def test_gpu_check_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(out)],
                         capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert res.returncode == 0 and report["summary"]["fail"] == 0, json.dumps(checks, indent=1)[-4000:]
    assert json.loads(res.stdout) == report  # the one JSON on stdout is the file's
    for name in ("two_pass_fp32", "two_pass_bf16"):
        assert checks[name]["status"] == "not_run" and "no CUDA device" in checks[name]["reason"]
    ran_on_cpu = ["weight_sync", "export_cpu_vs_gpu", "srs_train"]
    ran_on_cpu += [n for n in ("lrcl_zero2_bf16", "crrl_learner_step") if report["machine"]["deepspeed"]]
    ran_on_cpu += ["vllm_vs_torch"] if report["machine"]["vllm"] else []
    for name in ran_on_cpu:
        assert checks[name]["status"] == "pass", name
    assert checks["export_cpu_vs_gpu"]["gpu"].startswith("not run") and checks["export_cpu_vs_gpu"]["cpu_items_per_s"] > 0
    assert checks["weight_sync"]["expected_backend"] == "gloo"
    if report["machine"]["deepspeed"]:
        assert checks["crrl_learner_step"]["tensor_devices"] == ["cpu"]
        assert checks["lrcl_zero2_bf16"]["param_dtypes"] == ["torch.bfloat16"]
