#!/usr/bin/env bash
# Set up (if needed) and run the end-to-end demo on a laptop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tpskit demo "$@"
