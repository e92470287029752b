# Sourced by scripts/demo.sh and scripts/test.sh: from the project root, make .venv with
# Python 3.11 (or $PYTHON) if it is not there, install cvae-pms with its CPU and test extras,
# and quieten TensorFlow's start-up logs.
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[cpu,test]'
export TF_CPP_MIN_LOG_LEVEL=2 MPLBACKEND=Agg
