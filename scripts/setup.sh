#!/usr/bin/env bash
# Set up a development machine (Debian/Ubuntu): system packages, then a venv in .venv with tpskit installed.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(mosquitto poppler-utils tesseract-ocr systemd postgresql shellcheck)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]} (apt)"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The apt mosquitto package starts a system broker on :1883; tpskit's tests and demo start their own on free ports.
# postgresql: its server binaries back the collector's PostgreSQL tests (throw-away clusters, tests/pg.py).
# The shellcheck package lints the kit's installer and the other shell scripts (tests/test_install.py).

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[dev]"
echo "setup: ready (.venv)"
