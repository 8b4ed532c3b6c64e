#!/usr/bin/env bash
# One-shot GPU check (issue 16.6): GAN, kill/resume, SimSiam, traversal and physics on CUDA,
# bf16 autocast + channels_last as the pipeline trains, outputs and losses checked, images/s and
# MFU against the GPU's measured matmul rate. Installs nothing: it uses what `make` installed
# (.venv), else python3 with src/ on PYTHONPATH. Hard limit 290 s (< 5 minutes); the exit status
# is non-zero when any check fails (124: the time limit). Arguments go to gpu_check.py, e.g.
#   benchmarks/gpu_check.sh --json gpu_check.json
#   benchmarks/gpu_check.sh --device cpu --smoke
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
exec timeout 290 "$PY" benchmarks/gpu_check.py "$@"
