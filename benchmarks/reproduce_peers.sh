#!/usr/bin/env bash
# Issue 18 in one command: the cpu-quick CVAE, the dynesty reference at G = 12, 15 and 17
# (100 stars each, 30 run twice for the self-JS floor) and the peer table with JS columns.
#
#   pip install -e '.[cpu,reference,peers]'
#   bash benchmarks/reproduce_peers.sh            # ~2 h on 2 cores; steps already done are kept
#
# Steps run one after another, each with the whole CPU: a wall-clock budget on a shared CPU
# is not an equal budget (RESULTS.md). Outputs: runs/cal-quick, benchmarks/out/reference_g*,
# benchmarks/out/peers/{peers.md,peers.json,corner_g*_star*.png}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RUN=${RUN:-runs/cal-quick}
GS=${GS:-"12 15 17"}
if [ ! -f grids/cal-quick.h5 ]; then
  cvae-pms grid synth --n 20000 --seed 1 --out grids/cal-quick.h5
fi
if [ ! -f "$RUN/ood.npz" ]; then     # written last by train; a killed training resumes
  resume=$([ -f "$RUN/config.json" ] && echo --resume || true)
  cvae-pms train --grid grids/cal-quick.h5 --config cpu-quick --out "$RUN" $resume
fi
refs=()
for g in $GS; do
  d=benchmarks/out/reference_g$g
  if [ ! -f "$d/reference_samples.npz" ]; then
    OMP_NUM_THREADS=1 "$PY" benchmarks/bench_reference.py --run "$RUN" --n 100 \
      --n-repeat 30 --g "$g" --out "$d"
  fi
  refs+=("$d")
done
"$PY" benchmarks/bench_peers.py "$RUN" --g "$(echo $GS | tr ' ' ,)" \
  --reference "$(IFS=,; echo "${refs[*]}")" --out benchmarks/out/peers
