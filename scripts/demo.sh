#!/usr/bin/env bash
# The cvae-pms main job on the built-in default, end to end, on a fresh machine:
# makes .venv (Python 3.11), installs the package (CPU extra), builds a grid from the physical
# forward model, plots it, trains the cpu-quick CVAE, simulates noisy Gaia observations, infers
# their posteriors, evaluates the model, cross-checks against the truth, and reads real XP files.
# Everything lands in ${OUT:-demo_out}/. Takes ~14 minutes on 2 idle CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
CLI=.venv/bin/cvae-pms
OUT=${OUT:-demo_out}
N_GRID=${N_GRID:-20000}
mkdir -p "$OUT"
set -x
SHARED=../shared/data/real_xp/gaiaxpy_samples

# 1. the built-in grid from the physical forward model, its summary and figures
$CLI grid synth --n "$N_GRID" --seed 1 --out "$OUT/grid.h5"
$CLI grid info "$OUT/grid.h5"
$CLI grid plot "$OUT/grid.h5" --all --out "$OUT/grid_plots"

# 2. train the CVAE (cpu-quick recipe: <= 15 min on 2 cores); builds RUN/ood.npz at the end
$CLI train --grid "$OUT/grid.h5" --config cpu-quick --out "$OUT/run"

# 3. 50 noisy mock Gaia observations of held-out test stars (archive CSV + truth table)
$CLI simulate --grid "$OUT/grid.h5" --run "$OUT/run" --n 50 --g-mag 12:17 --transits 15:80 \
    --seed 2 --out "$OUT/observed.csv"

# 4. posteriors: samples, summary table, corner plots with the true values marked
$CLI infer "$OUT/run" "$OUT/observed.csv" --samples 1000 --out "$OUT/posteriors.h5" \
    --summary "$OUT/posteriors.ecsv" --plots "$OUT/corner" --max-plots 5 \
    --truth "$OUT/observed_truth.csv" --quiet

# 5. validation: accuracy, P-P, SBC, TARP and the gradient-boosting baseline on held-out spectra
$CLI evaluate "$OUT/run" --grid "$OUT/grid.h5" --g-mag 12,15,17 --n 300 --samples 1000 \
    --baseline-rows 5000 --out "$OUT/evaluation"

# 6. cross-check the posteriors against the truth table treated as a literature table
$CLI crosscheck "$OUT/posteriors.ecsv" "$OUT/observed_truth.csv" --lit-extinction a0 \
    --out "$OUT/crosscheck"

# 7. real Gaia DR3 XP spectra (when ../shared is beside the project): read them, infer 18 Sco
if [ -d "$SHARED" ]; then
  $CLI xp info "$SHARED/XP_CONTINUOUS_RAW.csv" "$SHARED/XP_CONTINUOUS_RAW_with_missing_BP.csv"
  $CLI infer "$OUT/run" "$SHARED/18Sco-XP-spectra.csv" --out "$OUT/18sco.h5" \
      --summary "$OUT/18sco.ecsv" --plots "$OUT/corner_18sco" --quiet
fi
set +x
echo "demo done: results in $OUT/ (grid_plots/, run/loss.png, posteriors.ecsv, corner/, evaluation/metrics.json, crosscheck/)"
