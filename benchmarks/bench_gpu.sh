#!/usr/bin/env bash
# The ONE prepared benchmark for a lent GPU machine (issue 16): JAX backend, no TensorFlow.
# Everything goes under $OUT (default benchmarks/out/gpu); it stops itself after
# ${LIMIT_S:-420} s so a 600 s device call leaves room to copy the results back.
#
#   run there:  OUT=$OUT bash benchmarks/bench_gpu.sh            (device tool: timeout_s=540)
#   here (CPU): PYTHON=.venv/bin/python OUT=/tmp/gpu_cpu E2E=500 TRAIN=1024 STEPS=3 SAMPLE=64 bash benchmarks/bench_gpu.sh
#
# Wheels: the GPU machines have Python 3.12 + JAX + CUDA but not Keras or this project's other
# dependencies; put them in benchmarks/wheels/ (git-ignored) before the call, e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 -d benchmarks/wheels keras namex optree h5py \
#     astropy pyerfa astropy-iers-data pyyaml pandas click tqdm
# and carry benchmarks/wheels (64 MiB in all); they are installed with --no-index into $SITE.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out/gpu}
SITE=${SITE:-/tmp/cvae_pms_site}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if compgen -G "benchmarks/wheels/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" benchmarks/wheels/*.whl
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export KERAS_BACKEND=jax MPLBACKEND=Agg
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import jax; print(jax.__version__, jax.devices())" > "$OUT/jax.txt" 2>&1 || true
timeout "${LIMIT_S:-420}" "$PY" benchmarks/bench_backend.py --backend jax \
  --train-batches "${TRAIN:-1024,8192,32768}" --train-steps "${STEPS:-20}" \
  --sample-batches "${SAMPLE:-256,2048,8192}" --sample-sources "${SAMPLE_SOURCES:-16384}" \
  --e2e "${E2E:-100000}" --full-epochs "${FULL_EPOCHS:-0}" \
  --out "$OUT/bench_backend.json" 2>&1 | tee "$OUT/log.txt"
