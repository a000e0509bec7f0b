#!/usr/bin/env bash
# One GPU check of dmdl (issue 19): build for the GPU found here, run every CUDA test, time the ops
# against their baselines, train two short regdb epochs (plain and under torchrun), one JSON report.
#
#   bash tools/gpu_check.sh [--out gpu_check_report.json] [--budget 450] [--steps a,b] [--build pip]
#   bash tools/gpu_check.sh --dry-run          # the same steps on the CPU, tiny sizes (in the test suite)
#
# Run it from anywhere (relative paths are the caller's). The Python is $PYTHON, else python3, else
# python: the one whose torch the extension is built against. The logic is in tools/gpu_check.py
# (`--help` lists the options and the steps).
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3 python; do
    if command -v "$candidate" >/dev/null 2>&1; then PY="$candidate"; break; fi
  done
fi
if [ -z "$PY" ]; then
  echo "tools/gpu_check.sh: no python3 or python on PATH (set PYTHON=/path/to/python)" >&2
  exit 2
fi

exec "$PY" "$ROOT/tools/gpu_check.py" "$@"
