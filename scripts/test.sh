#!/usr/bin/env bash
# Run the cvae-pms test suite on a fresh machine: makes .venv (Python 3.11), installs the
# package with its CPU and test extras, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
exec .venv/bin/python -m pytest -q "$@"
