#!/usr/bin/env bash
# Install tpskit onto Raspberry Pi OS Lite (bookworm, 64-bit): apt packages, the service user, a venv with
# system site packages (python3-picamera2 comes from apt), /etc/tpskit, and the systemd units.
# Idempotent: running it again only does what is missing (and refreshes the code and units; a running kit
# is restarted when they changed).
#
#   sudo bash scripts/install.sh                 # on the Pi, from a copy of the repository
#   sudo bash scripts/install.sh --collector     # also install (not start) the reference collector unit
#   bash scripts/install.sh --dry-run            # print what would be done, change nothing
#   bash scripts/install.sh --destdir /tmp/root --no-apt --no-venv   # stage the files under a directory
#
# With --destdir, files go under that directory and nothing is done to the running system
# (no apt, no user, no systemctl): the commands are printed instead. Tests use this.
set -euo pipefail
# the code, the venv and the units are read by the service user: an admin's umask 077 must not hide them
umask 022

PREFIX=/opt/tpskit
CONF_DIR=/etc/tpskit
UNIT_DIR=/etc/systemd/system
SERVICE_USER=tpskit
GROUPS_WANTED=(gpio video i2c)
APT_PACKAGES=(python3-picamera2 python3-venv python3-pip python3-lgpio python3-smbus2 i2c-tools
              ca-certificates)

DESTDIR=""
DRY_RUN=0
DO_APT=1
DO_VENV=1
COLLECTOR=0
ENABLE_I2C=0
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --destdir) DESTDIR="${2:?--destdir needs a directory}"; shift ;;
    --destdir=*) DESTDIR="${1#*=}" ;;
    --src) SRC="${2:?--src needs a directory}"; shift ;;
    --no-apt) DO_APT=0 ;;
    --no-venv) DO_VENV=0 ;;
    --collector) COLLECTOR=1 ;;
    --enable-i2c) ENABLE_I2C=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# Staging (--destdir) never touches the live system; --dry-run touches nothing at all.
LIVE=1
[ -n "$DESTDIR" ] && LIVE=0
DESTDIR="${DESTDIR%/}"

say() { echo "install: $*"; }
# run CMD...: execute (live), or print it (dry run, or a system command while staging)
show() { printf '+'; printf ' %q' "$@"; echo; }
run() {
  if ((DRY_RUN)); then show "$@"; else "$@"; fi
}
system() {
  if ((DRY_RUN || !LIVE)); then show "$@"; else "$@"; fi
}

if ((LIVE && !DRY_RUN)) && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo bash scripts/install.sh), or use --dry-run / --destdir" >&2
  exit 1
fi
if [ ! -f "$SRC/pyproject.toml" ] || [ ! -f "$SRC/systemd/tpskit.service" ]; then
  echo "install.sh: $SRC is not a tpskit checkout (no pyproject.toml / systemd/tpskit.service)" >&2
  exit 1
fi

# --- the system ------------------------------------------------------------------------------------
if ((LIVE)) && [ -r /etc/os-release ]; then
  # shellcheck disable=SC1091
  . /etc/os-release
  if [ "${VERSION_CODENAME:-}" != bookworm ]; then
    say "warning: made for Raspberry Pi OS bookworm, this is ${PRETTY_NAME:-unknown}"
  fi
  if [ "$(uname -m)" != aarch64 ]; then
    say "warning: made for 64-bit Raspberry Pi OS (aarch64), this is $(uname -m)"
  fi
fi

if ((DO_APT)); then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    say "apt: installing ${missing[*]}"
    system apt-get update -qq
    # --no-install-recommends keeps the GUI preview parts of picamera2 off a Lite image
    system env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  else
    say "apt: all packages present"
  fi
fi

# --- service user and groups -----------------------------------------------------------------------
if ((LIVE)) && id -u "$SERVICE_USER" >/dev/null 2>&1; then
  say "user $SERVICE_USER exists"
else
  say "creating system user $SERVICE_USER"
  system useradd --system --user-group --home-dir /var/lib/tpskit --no-create-home \
    --shell /usr/sbin/nologin --comment "tpskit polling-station kit" "$SERVICE_USER"
fi
for g in "${GROUPS_WANTED[@]}"; do
  if ((LIVE)) && ! getent group "$g" >/dev/null; then
    say "group $g does not exist here (not a Raspberry Pi OS image?): skipped"
    continue
  fi
  if ((LIVE)) && id -nG "$SERVICE_USER" 2>/dev/null | tr ' ' '\n' | grep -qx "$g"; then
    continue
  fi
  system usermod -a -G "$g" "$SERVICE_USER"
done

# --- code and venv ---------------------------------------------------------------------------------
say "code -> $DESTDIR$PREFIX/src"
# a fresh copy, then swapped in: a file the new version no longer has (and pip's build/ in the old copy,
# whose leftovers setuptools packs into the next wheel) must not survive into the install
code_changed=1
if ((DRY_RUN)); then
  echo "+ copy $SRC (without .git, .venv, build/, caches) to $DESTDIR$PREFIX/src (replacing it)"
else
  mkdir -p "$DESTDIR$PREFIX"
  # root's, whatever the checkout (a USB stick's modes, the technician's user): root builds from it
  rm -rf "$DESTDIR$PREFIX/src.new" "$DESTDIR$PREFIX/src.old"
  mkdir "$DESTDIR$PREFIX/src.new"
  tar -C "$SRC" --exclude=.git --exclude=.venv --exclude=./.venv-tflite --exclude=./build --exclude=./out \
    --exclude=./var --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache --exclude='*.egg-info' \
    -cf - . | tar -C "$DESTDIR$PREFIX/src.new" --no-same-owner --no-same-permissions -xf -
  if [ -e "$DESTDIR$PREFIX/src" ]; then mv "$DESTDIR$PREFIX/src" "$DESTDIR$PREFIX/src.old"; fi
  mv "$DESTDIR$PREFIX/src.new" "$DESTDIR$PREFIX/src"
  # (pip's own build/ and egg-info in the old copy are no change)
  if [ -d "$DESTDIR$PREFIX/src.old" ] && diff -rq -x build -x '*.egg-info' -x __pycache__ \
      "$DESTDIR$PREFIX/src.old" "$DESTDIR$PREFIX/src" >/dev/null 2>&1; then
    code_changed=0
  fi
  rm -rf "$DESTDIR$PREFIX/src.old"
fi

if ((DO_VENV)); then
  VENV="$DESTDIR$PREFIX/venv"
  if [ -x "$VENV/bin/python" ]; then
    say "venv exists: $VENV"
  else
    say "creating venv (with system site packages, for python3-picamera2): $VENV"
    run python3 -m venv --system-site-packages "$VENV"
  fi
  # picamera2's compiled parts (simplejpeg, ...) are built against the system numpy: keep that version
  constraints="$DESTDIR$PREFIX/constraints.txt"
  if ((!DRY_RUN)); then
    : >"$constraints"
    if [ "${TPSKIT_NUMPY_PIN:-1}" = 1 ] && python3 -c "import numpy" 2>/dev/null && dpkg-query -W python3-numpy \
      >/dev/null 2>&1; then
      python3 -c "import numpy; print('numpy==' + numpy.__version__)" >"$constraints"
    fi
  fi
  say "installing tpskit into the venv"
  # no [pi] extra: lgpio comes from apt (python3-lgpio), visible through the system site packages
  run "$VENV/bin/python" -m pip install --quiet --upgrade --constraint "$constraints" "$DESTDIR$PREFIX/src"
fi
# the technician types 'tpskit ...'
run mkdir -p "$DESTDIR/usr/local/bin"
if [ "$(readlink "$DESTDIR/usr/local/bin/tpskit" 2>/dev/null)" != "$PREFIX/venv/bin/tpskit" ]; then
  run ln -sfn "$PREFIX/venv/bin/tpskit" "$DESTDIR/usr/local/bin/tpskit"
fi

# --- configuration ---------------------------------------------------------------------------------
run mkdir -p "$DESTDIR$CONF_DIR"
run chmod 0755 "$DESTDIR$CONF_DIR"
if [ -e "$DESTDIR$CONF_DIR/config.toml" ]; then
  say "config exists, kept: $CONF_DIR/config.toml"
else
  say "no config yet: 'tpskit provision' writes $CONF_DIR/config.toml"
fi

# --- units -----------------------------------------------------------------------------------------
run mkdir -p "$DESTDIR$UNIT_DIR"
units=(tpskit.service)
((COLLECTOR)) && units+=(tpskit-collector.service)
changed=0
for u in "${units[@]}"; do
  if [ -f "$DESTDIR$UNIT_DIR/$u" ] && cmp -s "$SRC/systemd/$u" "$DESTDIR$UNIT_DIR/$u"; then
    say "unit $u unchanged"
    continue
  fi
  say "unit $u -> $UNIT_DIR/$u"
  run install -m 0644 "$SRC/systemd/$u" "$DESTDIR$UNIT_DIR/$u"
  changed=1
done
if ((changed)); then
  system systemctl daemon-reload
fi
system systemctl enable tpskit.service
# a running kit goes on with the old code (and lazily imports the new one's modules) until restarted;
# try-restart: only if it runs (a clean stop finishes the current write first)
if ((code_changed || changed)); then
  system systemctl try-restart "${units[@]}"
fi
if ((ENABLE_I2C)); then
  system raspi-config nonint do_i2c 0
fi

say "done. Next (see docs/technician-guide.md):"
say "  sudo tpskit provision --kode-wilayah NN.NN.NN.NNNN --tps N --broker mqtts://HOST:8883 ..."
say "  sudo tpskit calibrate && sudo tpskit selftest"
say "  sudo systemctl start tpskit"
