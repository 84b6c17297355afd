"""What has to work on a GPU, checked in one run: `python scripts/gpu_check.py [--out FILE.json]`.

Needs no package index: torch, transformers, peft, pyarrow, pyyaml (and this repository). Ray, vLLM and DeepSpeed
are used where importable; a check that needs a missing one, or a GPU, is reported as not run, with the reason.
Budget: under 8 minutes on one GPU with 16 cores (random weights, no model download). Each check runs in its own
process (a CUDA error or a process group cannot leak into the next) and the run prints one JSON object:
{"machine": ..., "checks": {name: {"status": "pass" | "fail" | "not_run", "reason"?, "seconds", ...}}, "summary"}.
The exit status is 1 when any check failed.

Checks (CPU counterparts run everywhere, so a CPU machine exercises the same code):
  lrcl_zero2_bf16        LRCL steps with DeepSpeed ZeRO-2 in bf16 (CUDA; CPU when there is none)
  two_pass_{fp32,bf16}   efficient vs naive two-pass embeddings and gradients (CUDA)
  crrl_learner_step      the CRRL learner on a rollout batch: every tensor on the learner's device (CUDA)
  weight_sync            two processes: the weight group's broadcast (NCCL with a GPU each; with one GPU the
                         group falls back to gloo, and a raw NCCL group of two ranks on that GPU is tried to show why)
  export_cpu_vs_gpu      export forward (prefix reuse, shared head) items/s on CPU and on the GPU, the ratio
  vllm_vs_torch          the vLLM engine against the torch engine (values and embeddings/s) where vLLM imports
  srs_train              SASRec trained and ranked on the device (the evaluation task's path)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHECKS = ["lrcl_zero2_bf16", "two_pass_fp32", "two_pass_bf16", "crrl_learner_step", "weight_sync",
          "export_cpu_vs_gpu", "vllm_vs_torch", "srs_train"]
TIMEOUT_S = {"vllm_vs_torch": 300, "weight_sync": 150}


class NotRun(Exception):
    """The check cannot run here; the message says why."""


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _need_cuda(what: str) -> None:
    if not _cuda():
        import torch

        raise NotRun(f"no CUDA device (torch {torch.__version__}, cuda {torch.version.cuda}); {what}")


def _need(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise NotRun(f"{module} is not importable here")


def _device(want_gpu: bool):
    from reaemb_ray.device import placement

    return placement("float32", want_gpu=want_gpu).device


def _cache(work: Path) -> Path:
    """Backbone cache shared by the checks of one run (the tiny backbone is built once)."""
    return Path(os.environ.get("REAEMB_GPU_CHECK_CACHE", work / "cache"))


def _tiny(work: Path) -> str:
    from reaemb_ray.model.backbone import resolve_backbone_name

    return resolve_backbone_name("tiny", _cache(work))


def _prompts(tok, n: int) -> list[str]:
    from reaemb_ray.data.prompts import item_prompt
    from reaemb_ray.rl.synthetic import item_texts

    texts = list(item_texts(max(1, n // 4 + 1), 4).values())
    return [item_prompt(tok, texts[i % len(texts)] + f"; size is {i}", "beauty") for i in range(n)]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ checks


def check_lrcl_zero2_bf16(work: Path) -> dict:
    """LRCL as a Ray Train worker runs it: LoRA + attention + tau in a DeepSpeed ZeRO-2 bf16 engine."""
    _need("deepspeed")
    import torch

    from reaemb_ray.config import LoraConfig, LRCLConfig
    from reaemb_ray.device import placement, to_device
    from reaemb_ray.losses import contrastive_loss
    from reaemb_ray.model.backbone import load_backbone
    from reaemb_ray.model.generator import ThoughtEmbedder
    from reaemb_ray.model.two_pass import tokenize_prompts
    from reaemb_ray.rl.learner import init_single_process_distributed
    from reaemb_ray.stages.lrcl import deepspeed_config

    where = placement("bfloat16", want_gpu=_cuda())
    os.environ["DS_ACCELERATOR"] = "cuda" if where.is_cuda else "cpu"
    import deepspeed

    init_single_process_distributed(where.backend)
    torch.manual_seed(0)
    lm, tok = load_backbone(_tiny(work), "float32")
    module = ThoughtEmbedder(lm, lora=LoraConfig())
    params = [p for p in module.parameters() if p.requires_grad]
    lcfg = LRCLConfig(num_workers=1, batch_size=8, micro_batch_size=8, zero_stage=2)
    ds_cfg = deepspeed_config(lcfg, "bfloat16", 1)
    engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=params, config=ds_cfg,
                                           optimizer=torch.optim.AdamW(params, lr=1e-3))
    lora0 = {n: p.detach().float().clone() for n, p in engine.module.named_parameters() if "lora_B" in n}
    prompts = _prompts(tok, 16)
    losses = []
    t0 = time.perf_counter()
    for _ in range(3):
        batch = to_device(tokenize_prompts(tok, prompts, 128), engine.device)
        emb = engine(batch, efficient=True)
        loss = contrastive_loss(emb[:8], emb[8:], engine.module.tau(), lcfg.similarity)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    _sync(engine.device)
    moved = max((p.detach().float() - lora0[n]).abs().max().item()
                for n, p in engine.module.named_parameters() if n in lora0)
    dtypes = {str(p.dtype) for p in engine.module.parameters()}
    ok = all(map(lambda x: x == x and abs(x) < 1e6, losses)) and moved > 0 and dtypes == {"torch.bfloat16"}
    return {"pass": ok, "device": str(engine.device), "zero_stage": 2, "losses": losses, "lora_change": moved,
            "param_dtypes": sorted(dtypes), "step_seconds": (time.perf_counter() - t0) / 3}


def _two_pass(work: Path, dtype_name: str, tol: float) -> dict:
    _need_cuda("the efficient-vs-naive agreement is checked on CUDA kernels (the CPU is covered by the tests)")
    import torch

    from reaemb_ray.config import LoraConfig
    from reaemb_ray.device import placement, to_device
    from reaemb_ray.model.backbone import load_backbone
    from reaemb_ray.model.generator import ThoughtEmbedder
    from reaemb_ray.model.two_pass import tokenize_prompts

    where = placement(dtype_name, want_gpu=True)
    torch.manual_seed(0)
    lm, tok = load_backbone(_tiny(work), dtype_name)
    module = ThoughtEmbedder(lm, lora=LoraConfig(dropout=0.0)).to(where.device)
    with torch.no_grad():  # LoRA B starts at zero: give it values so the LoRA path is exercised
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.05)
    batch = to_device(tokenize_prompts(tok, _prompts(tok, 12), 128), where.device)
    out = {}
    for name, efficient in (("naive", False), ("efficient", True)):
        module.zero_grad()
        emb = module.embed(batch, efficient=efficient)
        emb.float().pow(2).sum().backward()
        grads = torch.cat([p.grad.float().flatten() for p in module.parameters() if p.grad is not None])
        out[name] = (emb.detach().float(), grads)
    (e_n, g_n), (e_e, g_e) = out["naive"], out["efficient"]
    emb_err = ((e_e - e_n).abs().max() / e_n.abs().max()).item()
    grad_err = ((g_e - g_n).abs().max() / g_n.abs().max()).item()
    cos = torch.nn.functional.cosine_similarity(e_e, e_n).min().item()
    return {"pass": emb_err < tol and grad_err < 10 * tol, "device": str(where.device), "dtype": dtype_name,
            "rel_max_err_embeddings": emb_err, "rel_max_err_grads": grad_err, "min_cosine": cos, "tolerance": tol}


def check_two_pass_fp32(work: Path) -> dict:
    return _two_pass(work, "float32", 1e-4)


def check_two_pass_bf16(work: Path) -> dict:
    return _two_pass(work, "bfloat16", 3e-2)


def _crrl_base(work: Path) -> tuple:
    from reaemb_ray.config import load_config
    from reaemb_ray.rl.policy import load_item_texts, prepare_base
    from reaemb_ray.rl.synthetic import write_synthetic_prepared

    prep = write_synthetic_prepared(work / "prepared", clusters=4, per_cluster=4)
    cfg = load_config(None, [f"output_dir={work}", "model.backbone=tiny", f"data.cache_dir={_cache(work)}",
                             "crrl.init_from=backbone", "crrl.warmup_steps=1", "crrl.kl_beta=0.1"])
    return cfg, str(prepare_base(cfg, work / "crrl" / "base", None)), load_item_texts(prep)


def check_crrl_learner_step(work: Path) -> dict:
    _need("deepspeed")
    import numpy as np
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from reaemb_ray.device import placement
    from reaemb_ray.rl.learner import Learner
    from reaemb_ray.rl.rollout import Rollout

    class Devices(TorchDispatchMode):
        """Devices of the tensors the step computes with; 0-dim ones (the optimizer's step counters, which torch
        keeps on the CPU by design) aside."""
        seen: set = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.seen |= {str(t.device) for t in tree_flatten((args, kwargs, out))[0]
                          if isinstance(t, torch.Tensor) and t.dim() > 0}
            return out

    dtype = "bfloat16" if _cuda() else "float32"
    where = placement(dtype, want_gpu=_cuda())
    cfg, base, texts = _crrl_base(work)
    ro = Rollout(base, texts, "torch", 8, 0.5, True, "beauty", 128, dtype, where=where)
    batch = ro.rollout(list(range(1, 9)), {}, seed=0)
    rewards = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    learner = Learner(base, cfg.crrl, total_steps=4, dtype=dtype, where=where)
    rec = Devices()
    t0 = time.perf_counter()
    with rec:
        m = learner.step(batch, rewards)
    _sync(where.device)
    return {"pass": bool(np.isfinite(m["loss"])) and rec.seen == {str(learner.device)}, "device": str(learner.device),
            "dtype": dtype, "tensor_devices": sorted(rec.seen), "loss": m["loss"], "step_seconds": time.perf_counter() - t0,
            "bf16_section": learner.engine.bfloat16_enabled()}


def _sync_member(rank: int, port: int, device_id: str, result: str) -> None:
    """One process of the weight_sync check (run as `gpu_check.py --sync-member ...`)."""
    import numpy as np
    import torch.distributed as dist

    from actors.weight_sync import WeightGroup

    store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, timeout=__import__("datetime").timedelta(seconds=60),
                          wait_for_workers=False)
    like = {"w": np.zeros((64, 64), np.float32), "b": np.zeros(64, np.float32)}
    state = {"w": np.arange(64 * 64, dtype=np.float32).reshape(64, 64), "b": np.ones(64, np.float32)}
    g = WeightGroup(rank, 2, generation=1, timeout_s=60, store=store, use_gpu=device_id != "cpu", device=device_id)
    got = g.broadcast(state if rank == 0 else None, like)
    ok = all(np.array_equal(got[k], state[k]) for k in state)
    g.close()
    Path(result).write_text(json.dumps({"backend": g.backend, "equal": ok}))


def _nccl_member(rank: int, port: int, result: str) -> None:
    """A raw NCCL group of two ranks on the one GPU (what the weight group avoids): does NCCL refuse it?"""
    import torch
    import torch.distributed as dist

    from actors.weight_sync import process_group

    store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, timeout=__import__("datetime").timedelta(seconds=30),
                          wait_for_workers=False)
    out = {}
    try:
        pg = process_group("nccl", store, rank, 2, 30)
        x = torch.full((4,), float(rank), device="cuda")
        pg.broadcast(x, 0).wait()
        torch.cuda.synchronize()
        out = {"worked": True, "value": x.tolist()}
    except Exception as e:  # the point: what NCCL does with it
        out = {"worked": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    Path(result).write_text(json.dumps(out))


def _spawn_pair(args: list[list[str]], timeout: int) -> list:
    procs = [subprocess.Popen([sys.executable, __file__, *a], cwd=ROOT) for a in args]
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append("timeout")
    return codes


def check_weight_sync(work: Path) -> dict:
    from reaemb_ray.runtime import free_port

    out: dict = {}
    gpus = 0
    if _cuda():
        import torch

        gpus = torch.cuda.device_count()
        uuids = [str(torch.cuda.get_device_properties(i).uuid) for i in range(gpus)]
        ids = [uuids[0], uuids[1 % gpus]]  # two GPUs if there are, else both ranks on the one
    else:
        ids = ["cpu", "cpu"]
    port = free_port()
    files = [str(work / f"sync{r}.json") for r in range(2)]
    env_gpu = [str(r % max(gpus, 1)) for r in range(2)]
    args = [["--sync-member", str(r), str(port), ids[r], files[r], env_gpu[r]] for r in range(2)]
    codes = _spawn_pair(args, 120)
    res = [json.loads(Path(f).read_text()) if Path(f).exists() else {} for f in files]
    out.update(gpus=gpus, exit_codes=codes, members=res)
    ok = codes == [0, 0] and all(r.get("equal") for r in res)
    expected = "nccl" if gpus >= 2 else "gloo"
    ok = ok and all(r.get("backend") == expected for r in res)
    out["expected_backend"] = expected
    if gpus == 1:  # show why: NCCL itself with two ranks on one GPU
        files = [str(work / f"nccl{r}.json") for r in range(2)]
        port = free_port()
        codes = _spawn_pair([["--nccl-member", str(r), str(port), files[r]] for r in range(2)], 90)
        out["raw_nccl_two_ranks_one_gpu"] = {"exit_codes": codes, "members": [
            json.loads(Path(f).read_text()) if Path(f).exists() else {} for f in files]}
    out["pass"] = ok
    return out


def _random_smollm2_shaped(work: Path, dtype: str):
    """SmolLM2-135M's shape (576 wide, 30 layers) with random weights and the tiny tokenizer: export cost of a
    real small LLM without downloading one."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from reaemb_ray.model.backbone import load_backbone, load_tokenizer

    path = work / "smollm2-shaped"
    if not (path / "config.json").exists():
        src = _tiny(work)
        tok = load_tokenizer(src)
        cfg = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                          intermediate_size=1536, vocab_size=len(tok), max_position_embeddings=2048,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).save_pretrained(path)
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(src).save_pretrained(path)
    return load_backbone(str(path), dtype)


def _export_rate(work: Path, device, dtype: str, n: int, batch_size: int) -> float:
    import torch

    from reaemb_ray.device import to_device
    from reaemb_ray.model.generator import ThoughtEmbedder
    from reaemb_ray.model.two_pass import tokenize_prompts

    lm, tok = _random_smollm2_shaped(work, dtype)
    module = ThoughtEmbedder(lm).eval().to(device)
    prompts = _prompts(tok, n)
    with torch.no_grad():
        module.embed(to_device(tokenize_prompts(tok, prompts[:batch_size], 256), device))  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for i in range(0, n, batch_size):
            module.embed(to_device(tokenize_prompts(tok, prompts[i:i + batch_size], 256), device)).float().cpu()
        _sync(device)
    return n / (time.perf_counter() - t0)


def check_export_cpu_vs_gpu(work: Path) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    cpu = _export_rate(work, torch.device("cpu"), "bfloat16", 32, 16)
    out = {"cpu_items_per_s": cpu, "cpu_threads": torch.get_num_threads(), "model": "SmolLM2-135M-shaped, random",
           "dtype": "bfloat16"}
    if not _cuda():
        return {"pass": True, **out, "gpu": "not run: no CUDA device"}
    gpu = _export_rate(work, _device(True), "bfloat16", 1024, 128)
    return {"pass": gpu > cpu, **out, "gpu_items_per_s": gpu, "gpu_over_cpu": gpu / cpu}


def check_vllm_vs_torch(work: Path) -> dict:
    _need("vllm")
    import torch

    from reaemb_ray.device import placement
    from reaemb_ray.rl.rollout import Rollout

    dtype = "bfloat16" if _cuda() else "float32"
    where = placement(dtype, want_gpu=_cuda())
    _, base, texts = _crrl_base(work)
    ids = list(range(1, 17))
    out, emb = {}, {}
    for engine in ("torch", "vllm"):
        ro = Rollout(base, texts, engine, 8, 0.5, True, "beauty", 128, dtype, vllm_gpu_memory=0.3, where=where)
        ro.rollout(ids[:4], {}, seed=0)  # warm-up
        _sync(where.device)
        t0 = time.perf_counter()
        r = ro.rollout(ids, {}, seed=1)
        _sync(where.device)
        out[f"{engine}_embeddings_per_s"] = r["emb"].shape[0] * r["emb"].shape[1] / (time.perf_counter() - t0)
        emb[engine] = torch.as_tensor(r["emb"])
        if hasattr(ro.engine, "close"):
            ro.engine.close()
        del ro
    err = ((emb["vllm"] - emb["torch"]).abs().max() / emb["torch"].abs().max()).item()
    tol = 5e-2 if dtype == "bfloat16" else 1e-3
    return {"pass": err < tol, "device": str(where.device), "dtype": dtype, "rel_max_err": err, "tolerance": tol,
            **out, "vllm_over_torch": out["vllm_embeddings_per_s"] / out["torch_embeddings_per_s"]}


def check_srs_train(work: Path) -> dict:
    import numpy as np

    from reaemb_ray.config import SRSConfig
    from reaemb_ray.rl.synthetic import write_synthetic_prepared
    from reaemb_ray.srs.data import load_seq_data
    from reaemb_ray.srs.metrics import summarize
    from reaemb_ray.srs.trainer import fit_and_test

    prep = write_synthetic_prepared(work / "srs_prepared", clusters=8, per_cluster=4, users_per_cluster=20, seq_len=10)
    data = load_seq_data(prep)
    srs = SRSConfig(hidden=32, epochs=3, batch_size=64, max_len=20)
    device = _device(_cuda())
    t0 = time.perf_counter()
    model, res, full, samp = fit_and_test(data, "sasrec", srs, 0, 10, progress=False, device=device)
    return {"pass": bool(np.isfinite(res.best_val_ndcg10)) and len(full) == len(data.test), "device": str(device),
            "full": summarize(full, [10]), "sampled10": summarize(samp, [10]), "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------------ driver


def run_one(name: str, out_file: str) -> None:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            res = globals()[f"check_{name}"](Path(tmp))
            res["status"] = "pass" if res.pop("pass") else "fail"
        except NotRun as e:
            res = {"status": "not_run", "reason": str(e)}
        except Exception as e:  # reported, and the other checks still run
            import traceback

            res = {"status": "fail", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    res["seconds"] = round(time.perf_counter() - t0, 2)
    Path(out_file).write_text(json.dumps(res, default=str))


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpus": os.cpu_count(), "platform": platform.platform()}
    for mod in ("transformers", "peft", "deepspeed", "vllm", "ray"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["capability"] = list(torch.cuda.get_device_capability(0))
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--only", nargs="*", choices=CHECKS, help="run only these checks")
    ap.add_argument("--check", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--sync-member", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--nccl-member", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.sync_member:
        rank, port, device_id, result, gpu = a.sync_member
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu if device_id != "cpu" else os.environ.get("CUDA_VISIBLE_DEVICES", "")
        _sync_member(int(rank), int(port), device_id, result)
        return 0
    if a.nccl_member:
        rank, port, result = a.nccl_member
        _nccl_member(int(rank), int(port), result)
        return 0
    if a.check:
        run_one(a.check, a.result)
        return 0
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed logs its accelerator choice to stdout on import
        report = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "checks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("REAEMB_GPU_CHECK_CACHE", str(Path(tmp) / "cache"))
        for name in a.only or CHECKS:
            result = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, __file__, "--check", name, "--result", str(result)]
            try:
                proc = subprocess.run(cmd, cwd=ROOT, timeout=TIMEOUT_S.get(name, 180), capture_output=True, text=True)
                res = json.loads(result.read_text()) if result.exists() else {
                    "status": "fail", "reason": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}
            except subprocess.TimeoutExpired:
                res = {"status": "fail", "reason": f"timed out after {TIMEOUT_S.get(name, 180)} s"}
            report["checks"][name] = res
            print(f"{name}: {res['status']} {res.get('reason', '')}"[:300], file=sys.stderr, flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    statuses = [c["status"] for c in report["checks"].values()]
    report["summary"] = {s: statuses.count(s) for s in ("pass", "fail", "not_run")}
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 1 if report["summary"]["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
