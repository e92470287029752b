#!/usr/bin/env bash
# The cvae-pms main job with the shipped default model, on a fresh machine: makes .venv
# (Python 3.11), installs the package (CPU extra), and infers posteriors for the real Gaia DR3
# XP spectra beside the project (../shared/data/real_xp: the GaiaXPy sample sources incl.
# Proxima Cen, 18 Sco, the Avro datalink source with its covariance and the 4 full-covariance
# VOTable sources; the two other Avro files hold truncated coefficient sets cvae-pms refuses).
# No grid, no training. Writes ${OUT:-examples_out}/: posteriors.h5, summary.ecsv, corner/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
OUT=${OUT:-examples_out}
REAL=${REAL:-../shared/data/real_xp}
if [ ! -d "$REAL" ]; then
    echo "real Gaia XP files not found at $REAL: set REAL=folder, or run" >&2
    echo "  .venv/bin/cvae-pms infer YOUR_XP_FILES --summary summary.ecsv --plots corner" >&2
    exit 1
fi
mkdir -p "$OUT"
set -x
.venv/bin/cvae-pms infer \
    "$REAL"/gaiaxpy_samples/XP_CONTINUOUS_RAW.csv \
    "$REAL"/gaiaxpy_samples/18Sco-XP-spectra.csv \
    "$REAL"/gaiaxpy_samples/MeanSpectrumSolutionWithCov.avro \
    "$REAL"/xp_spectral_lines/xp_continuous_combined_weiler2023_examples.vot \
    --samples 1000 --out "$OUT/posteriors.h5" --summary "$OUT/summary.ecsv" \
    --plots "$OUT/corner" --max-plots 12 --overwrite --quiet
.venv/bin/python - "$OUT/summary.ecsv" <<'PY'
import sys
from astropy.table import Table
t = Table.read(sys.argv[1])
cols = ["source_id", "teff_median", "teff_p16", "teff_p84", "logg_median", "mh_median",
        "a0_median", "log_mdot_median", "flags"]
t = t[[c for c in cols if c in t.colnames]]
for c in t.colnames[1:-1]:
    t[c].info.format = ".3g" if "teff" not in c else ".0f"
t.pprint(max_lines=-1, max_width=-1)
PY
