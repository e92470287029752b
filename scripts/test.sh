#!/usr/bin/env bash
# Run the cvae-pms test suite on a fresh machine: makes .venv (Python 3.11), installs the
# package with its CPU and test extras, then runs pytest; the 20 slowest tests are listed at the
# end (--durations=20). Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
exec .venv/bin/python -m pytest -q --durations=20 "$@"
