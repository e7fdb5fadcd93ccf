#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. This is what .ci/run calls.
# Without arguments it also runs the inference tests under the fallback runtime, tflite-runtime 2.14 with
# numpy 1.24 (scripts/tflite-runtime-check; TPSKIT_TFLITE=0 leaves that out). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -ra "$@"
if [ $# -eq 0 ] && [ "${TPSKIT_TFLITE:-1}" != 0 ]; then
  bash scripts/tflite-runtime-check
fi
