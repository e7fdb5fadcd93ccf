#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. This is what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -ra "$@"
