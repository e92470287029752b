#!/usr/bin/env bash
# The cvae-pms main job on the built-in default, end to end, on a fresh machine:
# makes .venv (Python 3.11), installs the package (CPU extra), builds a grid from the physical
# forward model, plots it, trains the cpu-quick CVAE, simulates noisy Gaia observations, infers
# their posteriors, evaluates the model, cross-checks against the truth, and reads real XP files.
# Everything lands in ${OUT:-demo_out}/. Takes ~25 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[cpu,test]'
export TF_CPP_MIN_LOG_LEVEL=2 MPLBACKEND=Agg
CLI=.venv/bin/cvae-pms
OUT=${OUT:-demo_out}
N_GRID=${N_GRID:-20000}
mkdir -p "$OUT"
set -x
