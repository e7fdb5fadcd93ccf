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
#   sudo bash scripts/install.sh --uninstall     # remove code, venv, units, 'tpskit'; KEEP /etc/tpskit and data
#   sudo bash scripts/install.sh --uninstall --purge   # also config, data, signing key, user tpskit: refused
#                                                # while messages wait for the collector's ack (--force: lose them)
#
# With --destdir, files go under that directory and nothing is done to the running system
# (no apt, no user, no systemctl): the commands are printed instead. Tests use this.
# --uninstall never removes apt packages (other software may use them) nor the collector's database
# (/var/lib/tpskit-collector); on a collector host it needs --collector too. --dry-run works with it.
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
UNINSTALL=0
PURGE=0
FORCE=0
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

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
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    --force) FORCE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if ((!UNINSTALL && (PURGE || FORCE))); then
  echo "install.sh: --purge and --force go with --uninstall (see --help)" >&2; exit 2
fi
if ((FORCE && !PURGE)); then
  echo "install.sh: --force only overrides --purge's refusal (see --help)" >&2; exit 2
fi
if ((UNINSTALL && ENABLE_I2C)); then
  echo "install.sh: --enable-i2c does not go with --uninstall" >&2; exit 2
fi

# Staging (--destdir) never touches the live system; --dry-run touches nothing at all.
LIVE=1
[ -n "$DESTDIR" ] && LIVE=0
DESTDIR="${DESTDIR%/}"

ME=install
((UNINSTALL)) && ME=uninstall
say() { echo "$ME: $*"; }
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

# --- uninstall ------------------------------------------------------------------------------------
STATE_DEFAULT=/var/lib/tpskit        # tpskit.service's StateDirectory=tpskit
COLLECTOR_STATE=/var/lib/tpskit-collector
KIT_UNITS=(tpskit.service tpskit-collector.service)

warn() { echo "uninstall: $*" >&2; }

# check_data: what --purge would lose, decided by the installed tpskit (scripts/uninstall_check.py run by
# the venv's python). Sets STATES, KEY, HELD, ERRORS and CHECK_BROKEN (the check itself failed: an installed
# version older than this checkout lacks what it calls); returns 0 (nothing to lose), 1 (data held) or 3
# (unknown).
check_data() {
  STATES=("$STATE_DEFAULT") KEY="$STATE_DEFAULT/keys/kit.key" HELD=() ERRORS=() CHECK_BROKEN=0
  local py="$DESTDIR$PREFIX/venv/bin/python" out rc=0 line fix=() crash=""
  if [ ! -x "$py" ]; then
    # without the kit's code nobody can look: only a kit that never had config or state is known to be empty
    if [ -e "$DESTDIR$CONF_DIR/config.toml" ] || [ -e "$DESTDIR$STATE_DEFAULT" ]; then
      ERRORS+=("the installed tpskit ($PREFIX/venv) is gone, so the kit's data cannot be checked")
      return 3
    fi
    return 0
  fi
  ((LIVE && !DRY_RUN)) && fix=(--fix-ownership)
  out="$("$py" "$SRC/scripts/uninstall_check.py" --root "$DESTDIR" --config "$CONF_DIR/config.toml" \
    --default-state "$STATE_DEFAULT" "${fix[@]}" 2>&1)" || rc=$?
  STATES=()
  while IFS= read -r line; do
    case "$line" in
      "state "*) STATES+=("${line#state }") ;;
      "key "*) KEY="${line#key }" ;;
      "held "*) HELD+=("${line#held }") ;;
      "error "*) ERRORS+=("${line#error }") ;;
      "broken "*) CHECK_BROKEN=1 crash="${line#broken }" ;;
      *) [ -n "$line" ] && CHECK_BROKEN=1 crash="$line" ;;  # a traceback: its last line says what
    esac
  done <<<"$out"
  ((${#STATES[@]})) || STATES=("$STATE_DEFAULT")
  case "$rc" in
    0|1|3) ;;
    *) CHECK_BROKEN=1 ;;
  esac
  ((CHECK_BROKEN)) && ERRORS+=("the installed tpskit could not run the check (exit $rc): ${crash:-no output}")
  ((${#ERRORS[@]})) && rc=3
  return "$rc"
}

# refuse_or_force VERDICT: --purge stops here (exit 1) unless --force, which goes on, loudly
refuse_or_force() {
  local verdict="$1" x
  ((verdict == 0)) && return 0
  if ((FORCE)); then
    warn "PERINGATAN / WARNING: --force: data ini DIHAPUS dan HILANG / this is DELETED and LOST:"
    for x in "${HELD[@]}" "${ERRORS[@]}"; do warn "  - $x"; done
    return 0
  fi
  if ((verdict == 3)); then
    warn "DITOLAK / REFUSED: tidak bisa dipastikan bahwa semua data kit sudah terkirim / cannot tell whether"
    warn "the kit still holds data that was never delivered:"
    for x in "${ERRORS[@]}" "${HELD[@]}"; do warn "  - $x"; done
    warn "Database yang tidak terbaca bukan bukti bahwa isinya kosong / a database that cannot be read is not"
    warn "proof that it is empty."
  else
    warn "DITOLAK / REFUSED: --purge akan menghapus data yang belum terkirim / --purge would delete data that"
    warn "was never delivered:"
    for x in "${HELD[@]}"; do warn "  - $x"; done
  fi
  warn "Tidak ada yang dihapus atau dihentikan / nothing was removed or stopped. Yang harus dilakukan / what to do:"
  warn "  - sambungkan kit ke jaringannya sampai 'sudo tpskit status' menunjukkan 0 waiting, lalu ulangi /"
  warn "    connect the kit to its network until 'sudo tpskit status' shows 0 waiting (all acked), then run this again;"
  warn "  - atau / or: 'sudo tpskit export /media/usb', kabupaten menjalankan 'tpskit import' untuk bundel itu,"
  warn "    lalu ulangi dengan --force / have the regency import that bundle, then run again with --force;"
  if ((verdict == 3)); then
    warn "  - salin dulu folder data kit / first copy the kit's data off: sudo cp -a ${STATES[*]} /media/usb/"
    if ((CHECK_BROKEN)) || [ ! -x "$DESTDIR$PREFIX/venv/bin/python" ]; then
      warn "  - pasang ulang dulu agar bisa diperiksa / install again so it can be checked (the installed tpskit is"
      warn "    missing or older than this checkout): sudo bash scripts/install.sh, then run this again"
    fi
  fi
  warn "  - atau / or: --uninstall tanpa / without --purge: konfigurasi dan data tetap disimpan / config and data are kept."
  exit 1
}

# remove PATH...: each one that exists (a symlink too), under DESTDIR; says what
remove() {
  local p
  for p in "$@"; do
    if [ -e "$DESTDIR$p" ] || [ -L "$DESTDIR$p" ]; then
      say "removing $p"
      run rm -rf -- "$DESTDIR$p"
      REMOVED=$((REMOVED + 1))
    fi
  done
}

uninstall() {
  local u x verdict=0 present=() active=()
  REMOVED=0
  for u in "${KIT_UNITS[@]}"; do
    if [ -e "$DESTDIR$UNIT_DIR/$u" ] || [ -d "$DESTDIR$UNIT_DIR/$u.d" ]; then present+=("$u"); fi
  done
  if [ -e "$DESTDIR$UNIT_DIR/tpskit-collector.service" ] && ((!COLLECTOR)); then
    warn "DITOLAK / REFUSED: mesin ini juga menjalankan collector kabupaten (tpskit-collector.service), yang"
    warn "berjalan dari $PREFIX/venv dan ikut terhapus / this machine also runs the reference collector, which runs"
    warn "from $PREFIX/venv and would go too. Bila memang itu maksudnya, ulangi dengan --collector / if that is"
    warn "what you want, run again with --collector (its database $COLLECTOR_STATE is kept). Nothing was removed."
    exit 1
  fi

  # --- would anything be lost? (before anything is stopped or removed) -------------------------------
  check_data || verdict=$?
  if ((PURGE)); then
    refuse_or_force "$verdict"
  fi
  # --- stop and disable the units ----------------------------------------------------------------------
  for u in "${present[@]}"; do
    if ((LIVE && !DRY_RUN)) && systemctl is-active --quiet "$u"; then active+=("$u"); fi
    say "stopping $u"
    if ! system systemctl stop "$u"; then
      # a unit systemd never loaded cannot be stopped, nor is it running; one still running must not lose its files
      if ((LIVE && !DRY_RUN)) && systemctl is-active --quiet "$u"; then
        warn "$u did not stop (see journalctl -u ${u%.service}): nothing was removed"
        exit 1
      fi
    fi
  done
  if ((PURGE && LIVE && !DRY_RUN && ${#present[@]})); then
    # the kit may have run until now (or been starting: "activating" is not "active"): only a check of the
    # stopped kit's database counts
    verdict=0
    check_data || verdict=$?
    if ((verdict && !FORCE && ${#active[@]})); then
      warn "the kit queued messages while this ran; starting again what ran: ${active[*]}"
      systemctl start "${active[@]}" || true
    fi
    refuse_or_force "$verdict"
  fi
  for u in "${present[@]}"; do
    system systemctl disable "$u" || warn "systemctl disable $u failed: its links are removed below"
  done
  # --- the unit files and their drop-ins (a technician's certificate drop-in, systemctl edit) -----------
  local units_removed="$REMOVED"
  for u in "${KIT_UNITS[@]}"; do
    remove "$UNIT_DIR/$u" "$UNIT_DIR/$u.d"
    # what 'enable' linked, should 'disable' have failed (or the unit file was gone already)
    for x in "$DESTDIR$UNIT_DIR"/*.wants/"$u"; do
      if [ -L "$x" ]; then remove "${x#"$DESTDIR"}"; fi
    done
  done
  if ((REMOVED > units_removed)); then
    system systemctl daemon-reload
  fi
  # --- the command, the code, the venv -------------------------------------------------------------------
  local cmd="$DESTDIR/usr/local/bin/tpskit"
  if [ "$(readlink "$cmd" 2>/dev/null)" = "$PREFIX/venv/bin/tpskit" ]; then
    remove /usr/local/bin/tpskit
  elif [ -e "$cmd" ] || [ -L "$cmd" ]; then
    say "/usr/local/bin/tpskit is not the link install.sh made ($PREFIX/venv/bin/tpskit): left alone"
  fi
  remove "$PREFIX/src" "$PREFIX/src.new" "$PREFIX/src.old" "$PREFIX/venv" "$PREFIX/constraints.txt"
  if [ -d "$DESTDIR$PREFIX" ]; then
    if ((DRY_RUN)) || [ -z "$(find "$DESTDIR$PREFIX" -mindepth 1 -maxdepth 1 -print -quit)" ]; then
      run rmdir "$DESTDIR$PREFIX"
    else
      say "$PREFIX still holds files install.sh did not put there: left alone: $(find "$DESTDIR$PREFIX" -mindepth 1 -maxdepth 1 -printf '%f ')"
    fi
  fi

  # --- configuration and data ----------------------------------------------------------------------------
  if ((PURGE)); then
    # what goes: the config, and each state directory that is tpskit's own (a config naming /var or /srv as
    # state_dir must not make this delete it: then only the kit's files there are to go, by hand)
    local doomed=("$CONF_DIR" /etc/default/tpskit-collector) key_doomed=0 key_in_state=0 had_key=0 base
    for x in "${STATES[@]}"; do
      base="${x%/}"
      base="${base##*/}"
      case "$x:$base" in
        /*:*tpskit*) doomed+=("$x") ;;
        *) [ -e "$DESTDIR$x" ] &&
             say "state directory $x (from the config) is not tpskit's own folder: left alone, remove the kit's files in it by hand" ;;
      esac
      case "$KEY" in "${x%/}"/*) key_in_state=1 ;; esac
    done
    case "$KEY" in "$CONF_DIR"/*) key_in_state=1 ;; esac
    ((key_in_state)) || doomed+=("$KEY")  # signing.key_file elsewhere: it is the kit's all the same
    for x in "${doomed[@]}"; do
      case "$KEY" in "$x"|"${x%/}"/*) key_doomed=1 ;; esac
    done
    [ -e "$DESTDIR$KEY" ] && had_key=1
    if [ -d "$DESTDIR$CONF_DIR" ]; then
      say "configuration in $CONF_DIR: $(find "$DESTDIR$CONF_DIR" -mindepth 1 -maxdepth 1 -printf '%f ')"
    fi
    remove "${doomed[@]}"
    if ((had_key && !key_doomed)); then
      say "the kit's private signing key stays: $KEY"
    fi
    if ((had_key && key_doomed)); then
      say "KUNCI PRIBADI KIT DIHAPUS / THE KIT'S PRIVATE SIGNING KEY IS GONE: $KEY"
      say "  identitas kit ini hilang; kit yang di-provision ulang mendapat kunci baru, dan baris registry-nya"
      say "  harus diserahkan lagi ke collector kabupaten / this kit's identity is gone: provisioned again it gets"
      say "  a new key, and its new registry row must go to the regency collector"
    fi
    # staged: the user counts as there when an install was (its commands were only printed, too)
    if { ((LIVE)) && id -u "$SERVICE_USER" >/dev/null 2>&1; } || { ((!LIVE && REMOVED)); }; then
      say "removing the service user $SERVICE_USER"
      system userdel "$SERVICE_USER" || warn "userdel $SERVICE_USER failed (a process of it still runs?): later, sudo userdel $SERVICE_USER"
      REMOVED=$((REMOVED + 1))
      if ((LIVE)) && getent group "$SERVICE_USER" >/dev/null 2>&1; then
        system groupdel "$SERVICE_USER" || warn "groupdel $SERVICE_USER failed: later, sudo groupdel $SERVICE_USER"
      fi
    fi
  else
    for x in "$CONF_DIR" "${STATES[@]}"; do
      [ -e "$DESTDIR$x" ] || continue
      case "$x" in
        "$CONF_DIR") say "KEPT / disimpan: $x (configuration: config.toml, broker password, CA; the kit's identity)" ;;
        *) say "KEPT / disimpan: $x (the kit's data: database tpskit.db, photos, signing key keys/kit.key)" ;;
      esac
    done
    if ((verdict == 1)); then
      for x in "${HELD[@]}"; do say "  still to deliver / belum terkirim: $x"; done
    fi
    if [ -e "$DESTDIR$CONF_DIR" ] || [ -e "$DESTDIR$STATE_DEFAULT" ]; then
      say "to remove them too / untuk menghapusnya juga: sudo bash scripts/install.sh --uninstall --purge"
      say "  (with the kit's identity, its signing key; refused while messages wait for the collector's ack;"
      say "  it checks with the installed tpskit: after this uninstall, run scripts/install.sh again first)"
    fi
  fi
  if [ -e "$DESTDIR$COLLECTOR_STATE" ] || [ -e "$DESTDIR/var/lib/private/tpskit-collector" ]; then
    say "KEPT / disimpan: $COLLECTOR_STATE (the collector's database: the results of every kit), also with"
    say "  --purge; when the results are safe elsewhere: sudo rm -rf /var/lib/private/tpskit-collector $COLLECTOR_STATE"
  fi
  say "apt packages left installed (other software may use them): ${APT_PACKAGES[*]}"
  if ((REMOVED == 0)); then
    say "nothing to remove: tpskit is not installed here (or was already removed)"
  else
    say "done"
  fi
}

if ((UNINSTALL)); then
  uninstall
  exit 0
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
