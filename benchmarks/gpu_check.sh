#!/usr/bin/env bash
# GPU check: the XBT stage-2 step (LoRA on a random-weight open_clip ViT-L-14 + psi, bf16
# autocast, batch 64) on a CUDA machine that has PyTorch but no internet; prints images/s and
# peak memory in well under 5 minutes. Without CUDA it says so and runs the same step at a tiny
# size on the CPU.
#
#   bash benchmarks/gpu_check.sh                  # defaults
#   bash benchmarks/gpu_check.sh --batch 128      # extra options go to bench_stage2_step.py
#   bash benchmarks/gpu_check.sh --download-wheels
#
# Packages the machine lacks (open_clip_torch, peft, faiss-cpu and their dependencies) are
# installed offline from benchmarks/wheels/ when that folder exists. `--download-wheels` (or
# `make gpu-wheels`), run where there is internet and the project's .venv, fills that folder
# with the wheels of those packages and their dependencies at the installed versions, minus
# the PyTorch stack (torch, torchvision, triton, nvidia-*) the GPU machine brings. For a GPU
# machine with another Python version or platform, set e.g.
# GPU_WHEELS_PIP_ARGS="--python-version 3.12 --platform manylinux2014_x86_64".
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
WHEELS=benchmarks/wheels
LIMIT_S=${GPU_CHECK_TIMEOUT:-280}

if [[ "${1:-}" == "--download-wheels" ]]; then
    mapfile -t PINS < <("$PYTHON" - <<'PY'
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

BROUGHT = {"torch", "torchvision", "triton"}  # the GPU machine's PyTorch stack
pins, todo = {}, ["open_clip_torch", "peft", "faiss-cpu"]
while todo:
    name = canonicalize_name(todo.pop())
    if name in pins or name in BROUGHT or name.startswith(("nvidia-", "cuda-")):
        continue
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        continue  # not installed here: an optional dependency of this platform
    pins[name] = dist.version
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
for name, version in sorted(pins.items()):
    print(f"{name}=={version}")
PY
    )
    echo "downloading ${#PINS[@]} wheels into $WHEELS: ${PINS[*]}"
    # GPU_WHEELS_PIP_ARGS holds several options: split on purpose.
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$WHEELS" \
        ${GPU_WHEELS_PIP_ARGS:-} "${PINS[@]}"
    du -sh "$WHEELS"
    exit 0
fi

if [[ -d "$WHEELS" ]]; then
    echo "installing missing packages offline from $WHEELS"
    "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" \
        open_clip_torch peft faiss-cpu
fi

"$PYTHON" - <<'PY'
import torch

if torch.cuda.is_available():
    name = torch.cuda.get_device_name(0)
    count = torch.cuda.device_count()
    print(f"CUDA {torch.version.cuda}: {count} x {name}, torch {torch.__version__}")
else:
    print(f"no CUDA device (torch {torch.__version__}): CPU mode, tiny size")
PY

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1
timeout "$LIMIT_S" "$PYTHON" benchmarks/bench_stage2_step.py "$@"
