#!/usr/bin/env bash
# Wheels for running scripts/gpu_check.py's DeepSpeed checks on a GPU machine that has torch but no DeepSpeed
# and no package index (a few MB; vLLM's 330 MB wheel does not travel this way).
#   here:     bash scripts/gpu_check_wheels.sh wheels/ [python version, default 3.12]
#   there:    pip install --no-index --find-links wheels/ --no-build-isolation deepspeed
#             python scripts/gpu_check.py --out docs/bench/gpu_check_<date>_<machine>.json
set -euo pipefail
DEST=${1:?usage: gpu_check_wheels.sh DIR [PYTHON_VERSION]}
PYV=${2:-3.12}
mkdir -p "$DEST"
DS=$(python3 -c 'import tomllib; print(next(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] if d.startswith("deepspeed")))' 2>/dev/null || echo deepspeed)
# DeepSpeed is published as a source archive; it builds against the torch already installed there
python3 -m pip download -q --no-deps --no-binary=:all: "$DS" -d "$DEST"
python3 -m pip download -q --only-binary=:all: --python-version "$PYV" --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  hjson py-cpuinfo ninja einops msgpack psutil "pydantic>=2" -d "$DEST"
du -sh "$DEST"
