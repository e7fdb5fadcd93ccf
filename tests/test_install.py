"""scripts/install.sh: dry run and staging into a directory (--destdir), idempotent."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install.sh"


def install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LC_ALL": "C"})


def test_syntax():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (scripts/setup.sh)")
def test_shellcheck():
    res = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
    # the other shell scripts: setup, tests, demo, CI, the arm64 and fallback-runtime checks
    others = [*ROOT.glob("scripts/*.sh"), ROOT / "scripts" / "arm64-check",
              ROOT / "scripts" / "tflite-runtime-check", ROOT / ".ci" / "run"]
    res = subprocess.run(["shellcheck", "-S", "warning", *map(str, others)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_dry_run_changes_nothing_and_shows_the_plan(tmp_path):
    res = install("--dry-run", "--destdir", str(tmp_path / "root"))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "apt-get install -y --no-install-recommends" in out and "python3-picamera2" in out
    assert "useradd --system --user-group" in out and "tpskit" in out
    for group in ("gpio", "video", "i2c"):
        assert f"usermod -a -G {group} tpskit" in out
    assert "venv --system-site-packages" in out
    assert "systemctl enable tpskit.service" in out
    assert not (tmp_path / "root").exists()


def test_destdir_stages_files_and_is_idempotent(tmp_path):
    root = tmp_path / "root"
    first = install("--destdir", str(root), "--no-apt", "--no-venv", "--collector")
    assert first.returncode == 0, first.stderr
    unit = root / "etc/systemd/system/tpskit.service"
    assert filecmp.cmp(unit, ROOT / "systemd/tpskit.service", shallow=False)
    assert (root / "etc/systemd/system/tpskit-collector.service").exists()
    assert oct(unit.stat().st_mode & 0o777) == "0o644"
    src = root / "opt/tpskit/src"
    assert (src / "firmware/notify.py").exists() and (src / "pyproject.toml").exists()
    assert not (src / ".git").exists() and not (src / ".venv").exists()
    assert (root / "etc/tpskit").is_dir() and not (root / "etc/tpskit/config.toml").exists()
    assert os.readlink(root / "usr/local/bin/tpskit") == "/opt/tpskit/venv/bin/tpskit"
    # the running system is left alone: its commands are only printed
    assert "+ systemctl daemon-reload" in first.stdout and "+ useradd" in first.stdout
    second = install("--destdir", str(root), "--no-apt", "--no-venv", "--collector")
    assert second.returncode == 0, second.stderr
    assert "unit tpskit.service unchanged" in second.stdout
    assert "daemon-reload" not in second.stdout
    # an existing config is never replaced
    (root / "etc/tpskit/config.toml").write_text("# provisioned\n")
    third = install("--destdir", str(root), "--no-apt", "--no-venv")
    assert "config exists, kept" in third.stdout
    assert (root / "etc/tpskit/config.toml").read_text() == "# provisioned\n"


def test_bad_option_and_not_a_checkout(tmp_path):
    res = install("--frobnicate")
    assert res.returncode == 2 and "unknown option" in res.stderr
    res = install("--destdir", str(tmp_path / "r"), "--src", str(tmp_path), "--no-apt")
    assert res.returncode == 1 and "not a tpskit checkout" in res.stderr


def test_reinstall_leaves_no_stale_files(tmp_path):
    """What the new version no longer has is gone after installing it over the old one: a form page left in
    /opt/tpskit/src would be installed again, and so would one in the build/ that pip leaves in the source
    (setuptools packs build/lib's leftovers into the next wheel: load_form would read a page that is gone)."""
    root = tmp_path / "root"
    assert install("--destdir", str(root), "--no-apt", "--no-venv").returncode == 0
    src = root / "opt/tpskit/src"
    stale = [src / "inference/forms/C.HASIL-PPWP-2024/page9.json", src / "firmware/removed.py",
             src / "build/lib/inference/forms/C.HASIL-PPWP-2024/page9.json"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")
    again = install("--destdir", str(root), "--no-apt", "--no-venv")
    assert again.returncode == 0, again.stderr
    assert [p for p in stale if p.exists()] == []
    assert (src / "inference/forms/C.HASIL-PPWP-2024/page1.json").exists()
    assert not list(root.glob("opt/tpskit/src.*"))


def test_build_leftovers_of_the_checkout_are_not_copied(tmp_path):
    """A checkout that ran the tests or a build has build/, .venv-tflite/ ...: none of it goes to a kit."""
    checkout = tmp_path / "my checkout"  # a path with a space
    (checkout / "systemd").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", checkout)
    shutil.copy(ROOT / "systemd/tpskit.service", checkout / "systemd")
    for rel in ("firmware/__init__.py", "build/lib/firmware/old.py", ".venv-tflite/bin/python", "out/a/x"):
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / rel).write_text("")
    root = tmp_path / "staged root"
    res = install("--destdir", str(root), "--src", str(checkout), "--no-apt", "--no-venv")
    assert res.returncode == 0, res.stderr
    src = root / "opt/tpskit/src"
    assert (src / "firmware/__init__.py").exists()
    assert not (src / "build").exists() and not (src / ".venv-tflite").exists() and not (src / "out").exists()


def test_an_upgrade_restarts_a_running_kit_and_a_plain_rerun_does_not(tmp_path):
    """pip replaces the code under a running daemon: it would go on with the old version (and import the new
    one's modules lazily) until a reboot. New code or units restart it (try-restart: only if it runs)."""
    root = tmp_path / "root"
    first = install("--destdir", str(root), "--no-apt", "--no-venv")
    assert first.returncode == 0, first.stderr
    assert "+ systemctl try-restart tpskit.service" in first.stdout
    # what pip's build leaves in the copy is no change of code
    (root / "opt/tpskit/src/build/lib/firmware").mkdir(parents=True)
    (root / "opt/tpskit/src/tpskit.egg-info").mkdir()
    again = install("--destdir", str(root), "--no-apt", "--no-venv")
    assert "try-restart" not in again.stdout
    (root / "opt/tpskit/src/firmware/app.py").write_text("# the old version\n")
    upgrade = install("--destdir", str(root), "--no-apt", "--no-venv")
    assert "+ systemctl try-restart tpskit.service" in upgrade.stdout
    assert "systemctl try-restart" in install("--dry-run", "--destdir", str(tmp_path / "dry")).stdout
    # the regency's collector host upgrades the same way
    collector = install("--destdir", str(tmp_path / "c"), "--no-apt", "--no-venv", "--collector")
    assert "+ systemctl try-restart tpskit.service tpskit-collector.service" in collector.stdout


def test_setup_apt_is_noninteractive_through_sudo(tmp_path):
    """sudo resets the environment: DEBIAN_FRONTEND set in front of 'sudo apt-get' never reaches apt-get, and
    a debconf question (tzdata, postgresql) then waits for an answer nobody gives."""
    repo, bin_ = tmp_path / "repo", tmp_path / "bin"
    (repo / "scripts").mkdir(parents=True)
    bin_.mkdir()
    shutil.copy(ROOT / "scripts/setup.sh", repo / "scripts")
    log = tmp_path / "apt.log"
    fakes = {
        "id": 'echo 1000',
        "sudo": 'exec env -i PATH="$PATH" "$@"',  # env_reset, as sudo does by default
        "dpkg-query": "exit 1",
        "apt-get": f'echo "DEBIAN_FRONTEND=${{DEBIAN_FRONTEND:-}} $*" >>"{log}"; [ "$1" != install ]',
    }
    for name, body in fakes.items():
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)
    res = subprocess.run(["bash", str(repo / "scripts/setup.sh")], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"})
    assert res.returncode != 0  # the fake apt-get install fails: setup stops there
    installs = [line for line in log.read_text().splitlines() if " install " in line]
    assert installs and all(line.startswith("DEBIAN_FRONTEND=noninteractive ") for line in installs), installs


def test_dependencies_keep_out_the_next_major_version():
    """Every runtime dependency has an upper bound, so a kit installed the day before polling day cannot pull
    in a major release nobody tested (a LiteRT 3 may drop the Interpreter API the kit uses); the tflite extra
    brings numpy < 2 with it, since tflite-runtime 2.14 fails at Interpreter() under numpy 2."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    runtime = [Requirement(r) for r in [*project["dependencies"], *extras["tflite"], *extras["postgres"]]]
    unbounded = [str(r) for r in runtime if not any(s.operator in ("<", "==", "~=") for s in r.specifier)]
    assert unbounded == []
    numpy = [Requirement(r) for r in extras["tflite"] if Requirement(r).name == "numpy"]
    assert numpy and not any(r.specifier.contains("2.0.0") for r in numpy)
    assert numpy[0].specifier.contains("1.24.2")  # bookworm's python3-numpy


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown the checkout (as install.sh runs)")
def test_the_copy_belongs_to_root_whatever_the_checkout(tmp_path):
    """A checkout copied from a USB stick or by scp belongs to the technician's user, with the modes of the
    stick (vfat umask=000: everything 0777). root builds and installs from /opt/tpskit/src at every run, so
    the copy must be root's and not writable by anyone else; and readable by all (the service user) even when
    root's umask is 077."""
    checkout = tmp_path / "usb"
    shutil.copytree(ROOT / "systemd", checkout / "systemd")
    shutil.copy(ROOT / "pyproject.toml", checkout)
    (checkout / "firmware").mkdir()
    (checkout / "firmware/__init__.py").write_text("")
    for path in [checkout, *checkout.rglob("*")]:
        os.chown(path, 1000, 1000)
        path.chmod(0o777)
    root = tmp_path / "root"
    res = subprocess.run(["bash", str(SCRIPT), "--destdir", str(root), "--src", str(checkout), "--no-apt",
                          "--no-venv"], capture_output=True, text=True, timeout=120,
                         preexec_fn=lambda: os.umask(0o077))
    assert res.returncode == 0, res.stderr
    src = root / "opt/tpskit/src"
    wrong = [(str(p), p.stat().st_uid, oct(p.stat().st_mode & 0o777)) for p in [src, *src.rglob("*")]
             if p.stat().st_uid != 0 or p.stat().st_mode & 0o022 or not p.stat().st_mode & 0o004]
    assert wrong == []


# --- install.sh --uninstall ------------------------------------------------------------------------------
# A real install is staged first (--destdir); its venv is stood in for by a python that runs the staged
# /opt/tpskit/src with this test's interpreter (install.sh --no-venv: no pip here), so the uninstaller asks
# the installed code, as on a kit. Outboxes are real SQLite files made with the product's Outbox.

def stage_kit(root: Path, *extra: str) -> Path:
    """A staged install with a stand-in venv; returns the staged state directory /var/lib/tpskit."""
    import shlex
    import sys

    res = install("--destdir", str(root), "--no-apt", "--no-venv", *extra)
    assert res.returncode == 0, res.stderr
    venv_bin = root / "opt/tpskit/venv/bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(
        f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(root / 'opt/tpskit/src'))} "
        f'exec {shlex.quote(sys.executable)} "$@"\n')
    (venv_bin / "python").chmod(0o755)
    (venv_bin / "tpskit").write_text("#!/bin/sh\n")
    (root / "opt/tpskit/constraints.txt").write_text("")
    (root / "etc/tpskit/config.toml").write_text('[kit]\nkit_id = "kit-3171011001-005"\n')
    (root / "etc/tpskit/mqtt-password").write_text("secret")
    state = root / "var/lib/tpskit"
    (state / "keys").mkdir(parents=True)
    (state / "keys/kit.key").write_text("PRIVATE\n")
    return state


def outbox_with(state: Path, *, queued: int = 0, acked: int = 0) -> Path:
    """The kit's database with *queued* unacked and *acked* acked messages (the product's Outbox)."""
    from comms.outbox import Outbox

    db = state / "tpskit.db"
    with Outbox(db) as ob:
        for i in range(queued + acked):
            ob.enqueue(msg_id=f"m{i}", kind="reading", topic="tpskit/v1/kit/reading", payload=b"{}")
        ob.mark_acked([f"m{i}" for i in range(queued, queued + acked)])
        assert ob.unacked_count() == queued
    return db


def tree(root: Path) -> dict:
    """Every path under *root* with what it holds: nothing may change."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = ("link", os.readlink(p)) if p.is_symlink() else ("dir",) if p.is_dir() else p.read_bytes()
    return out


def uninstall(root: Path, *args: str) -> subprocess.CompletedProcess:
    return install("--uninstall", "--destdir", str(root), *args)


def refused_purge(root: Path) -> subprocess.CompletedProcess:
    """``--uninstall --purge``, which must refuse (exit 1) and change nothing at all."""
    before = tree(root)
    res = uninstall(root, "--purge")
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert tree(root) == before
    return res


def assert_code_gone(root: Path):
    for rel in ("opt/tpskit", "usr/local/bin/tpskit", "etc/systemd/system/tpskit.service",
                "etc/systemd/system/tpskit-collector.service"):
        assert not (root / rel).exists() and not (root / rel).is_symlink(), rel


def test_uninstall_removes_code_venv_units_and_command_and_keeps_config_and_data(tmp_path):
    root = tmp_path / "root"
    state = stage_kit(root)
    db = outbox_with(state, queued=2, acked=1)
    kept = {k: v for k, v in tree(root).items() if k.startswith(("etc/tpskit", "var/lib/tpskit"))}
    res = uninstall(root)
    assert res.returncode == 0, res.stderr
    assert_code_gone(root)
    for cmd in ("stop tpskit.service", "disable tpskit.service", "daemon-reload"):
        assert f"+ systemctl {cmd}" in res.stdout
    assert "+ userdel" not in res.stdout
    # config, data and identity stay, byte for byte; the technician is told where, and how to remove them
    assert {k: v for k, v in tree(root).items() if k.startswith(("etc/tpskit", "var/lib/tpskit"))} == kept
    assert db.exists() and (state / "keys/kit.key").exists()
    assert "KEPT / disimpan: /etc/tpskit" in res.stdout and "KEPT / disimpan: /var/lib/tpskit" in res.stdout
    assert "2 pesan belum di-ack" in res.stdout and "--uninstall --purge" in res.stdout
    assert "apt packages left installed" in res.stdout and "python3-picamera2" in res.stdout
    # twice in a row: nothing left to remove, still fine, still kept
    again = uninstall(root)
    assert again.returncode == 0, again.stderr
    assert "nothing to remove" in again.stdout and "systemctl" not in again.stdout
    assert db.exists() and "KEPT / disimpan: /var/lib/tpskit" in again.stdout


@pytest.mark.parametrize("data", ["no database", "empty outbox", "all acked"])
def test_purge_removes_everything_when_nothing_would_be_lost(tmp_path, data):
    root = tmp_path / "root"
    state = stage_kit(root)
    if data == "empty outbox":
        outbox_with(state)
    elif data == "all acked":
        outbox_with(state, acked=3)
    (root / "etc/systemd/system/tpskit.service.d").mkdir()
    (root / "etc/systemd/system/tpskit.service.d/override.conf").write_text("[Service]\n")
    res = uninstall(root, "--purge")
    assert res.returncode == 0, res.stderr
    assert_code_gone(root)
    assert not (root / "etc/tpskit").exists() and not state.exists()
    assert not (root / "etc/systemd/system/tpskit.service.d").exists()
    assert "+ userdel tpskit" in res.stdout
    assert "THE KIT'S PRIVATE SIGNING KEY IS GONE: /var/lib/tpskit/keys/kit.key" in res.stdout
    assert "REFUSED" not in res.stderr and "WARNING" not in res.stderr
    again = uninstall(root, "--purge")
    assert again.returncode == 0, again.stderr
    assert "nothing to remove" in again.stdout and "SIGNING KEY" not in again.stdout


def test_purge_refuses_while_messages_wait_for_the_collector_and_removes_nothing(tmp_path):
    root = tmp_path / "root"
    state = stage_kit(root)
    outbox_with(state, queued=1, acked=5)
    before = tree(root)
    res = uninstall(root, "--purge")
    assert res.returncode == 1
    assert "DITOLAK / REFUSED" in res.stderr and "1 pesan belum di-ack" in res.stderr
    assert "tpskit export /media/usb" in res.stderr and "tpskit status" in res.stderr
    assert "nothing was removed or stopped" in res.stderr
    assert "systemctl" not in res.stdout and "removing" not in res.stdout
    assert tree(root) == before
    # a dry run says the same
    dry = uninstall(root, "--purge", "--dry-run")
    assert dry.returncode == 1 and "REFUSED" in dry.stderr and tree(root) == before


def test_purge_refuses_captures_not_yet_in_the_outbox(tmp_path):
    """A page photographed and committed, not yet handed to the outbox (the kit hands it over at its next
    start): the outbox is empty, and the reading would still be lost."""
    from firmware.store import CaptureStore

    root = tmp_path / "root"
    state = stage_kit(root)
    outbox_with(state)
    store = CaptureStore(state, volatile_ok=True, min_free_mb=1)
    store.save(jpeg=b"\xff\xd8 not really a jpeg", status="ok", reading={"page": 1}, taken_at=1.0,
               time_source="ntp")
    store.close()
    res = refused_purge(root)
    assert "captures not yet in the outbox" in res.stderr


def test_purge_checks_the_state_directory_the_config_names(tmp_path):
    root = tmp_path / "root"
    stage_kit(root)
    (root / "etc/tpskit/config.toml").write_text('[kit]\nkit_id = "k"\n[paths]\nstate_dir = "/srv/tpskit"\n')
    outbox_with(root / "srv/tpskit", queued=3)
    res = refused_purge(root)
    assert "3 pesan belum di-ack" in res.stderr and "srv/tpskit" in res.stderr


def test_purge_refuses_an_unreadable_database_or_config(tmp_path):
    root = tmp_path / "root"
    state = stage_kit(root)
    (state / "tpskit.db").write_bytes(b"this is not a database, maybe a damaged SD card" * 100)
    res = refused_purge(root)
    assert "cannot be read" in res.stderr and "file is not a database" in res.stderr
    assert "is not" in res.stderr and "proof that it is empty" in res.stderr
    # a config that cannot be read hides where the data is
    (state / "tpskit.db").unlink()
    (root / "etc/tpskit/config.toml").write_text("[kit\n")
    res = refused_purge(root)
    assert "config" in res.stderr and "REFUSED" in res.stderr


def test_purge_after_a_plain_uninstall_cannot_check_without_the_installed_code(tmp_path):
    """The venv went with the first uninstall: nobody can look into the database any more, so purge refuses
    (and says to install again, or --force)."""
    root = tmp_path / "root"
    state = stage_kit(root)
    outbox_with(state, acked=1)
    assert uninstall(root).returncode == 0
    res = refused_purge(root)
    assert "cannot be checked" in res.stderr and "scripts/install.sh" in res.stderr


def test_purge_with_an_older_installed_version_says_to_install_this_one_first(tmp_path):
    """The check runs this checkout's scripts/uninstall_check.py on the installed code: an older install
    lacks what it calls, so the check crashes. Purge refuses (nothing is known), names the crash in one line
    (not a traceback) and says to install this version first."""
    root = tmp_path / "root"
    state = stage_kit(root)
    outbox_with(state, acked=1)
    outbox_py = root / "opt/tpskit/src/comms/outbox.py"
    outbox_py.write_text(outbox_py.read_text().replace("def connect_reading(", "def _not_yet_written("))
    res = refused_purge(root)
    assert "REFUSED" in res.stderr
    assert "could not run the check (exit 3): ImportError: cannot import name 'connect_reading'" in res.stderr
    assert "Traceback" not in res.stderr
    assert "install again so it can be checked" in res.stderr and "older than this checkout" in res.stderr


def test_force_overrides_the_refusal_loudly(tmp_path):
    root = tmp_path / "root"
    state = stage_kit(root)
    outbox_with(state, queued=4)
    res = uninstall(root, "--purge", "--force")
    assert res.returncode == 0, res.stderr
    assert "WARNING" in res.stderr and "LOST" in res.stderr and "4 pesan belum di-ack" in res.stderr
    assert_code_gone(root)
    assert not state.exists() and not (root / "etc/tpskit").exists()
    assert "PRIVATE SIGNING KEY IS GONE" in res.stdout


def test_uninstall_dry_run_changes_nothing(tmp_path):
    root = tmp_path / "root"
    state = stage_kit(root)
    outbox_with(state, acked=2)
    before = tree(root)
    for args in ([], ["--purge"]):
        res = uninstall(root, "--dry-run", *args)
        assert res.returncode == 0, res.stderr
        assert "+ rm -rf --" in res.stdout and "+ systemctl stop tpskit.service" in res.stdout
        assert tree(root) == before
    assert "userdel tpskit" in res.stdout


def test_uninstall_where_install_never_ran(tmp_path):
    for args in ([], ["--purge"]):
        res = uninstall(tmp_path / "empty", *args)
        assert res.returncode == 0, res.stderr
        assert "nothing to remove" in res.stdout
    assert not (tmp_path / "empty").exists()


def test_uninstall_on_a_collector_host_needs_collector_and_keeps_its_database(tmp_path):
    root = tmp_path / "root"
    state = stage_kit(root, "--collector")
    outbox_with(state, acked=1)
    dropin = root / "etc/systemd/system/tpskit-collector.service.d"
    dropin.mkdir()
    shutil.copy(ROOT / "systemd/tpskit-collector-certificate.conf", dropin)
    collected = root / "var/lib/private/tpskit-collector/collector.db"
    collected.parent.mkdir(parents=True)
    collected.write_bytes(b"every kit's results")
    before = tree(root)
    res = uninstall(root, "--purge")
    assert res.returncode == 1 and "--collector" in res.stderr and tree(root) == before
    res = uninstall(root, "--purge", "--collector")
    assert res.returncode == 0, res.stderr
    assert "+ systemctl stop tpskit-collector.service" in res.stdout
    assert_code_gone(root)
    assert not dropin.exists()
    assert collected.read_bytes() == b"every kit's results"
    assert "KEPT / disimpan: /var/lib/tpskit-collector" in res.stdout


def test_uninstall_options(tmp_path):
    for args in (["--purge"], ["--force"], ["--uninstall", "--force"], ["--uninstall", "--enable-i2c"]):
        res = install(*args, "--destdir", str(tmp_path / "r"))
        assert res.returncode == 2, args
    assert not (tmp_path / "r").exists()
    assert "--uninstall" in install("--help").stdout


def test_uninstall_from_the_installed_copy_and_what_enable_linked(tmp_path):
    """The checkout may be gone: the copy in /opt/tpskit/src uninstalls too (and removes itself); a link
    'systemctl enable' made goes as well, should 'disable' not have removed it."""
    root = tmp_path / "root"
    state = stage_kit(root)
    outbox_with(state, acked=1)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    (wants / "tpskit.service").symlink_to("/etc/systemd/system/tpskit.service")
    res = subprocess.run(["bash", str(root / "opt/tpskit/src/scripts/install.sh"), "--uninstall", "--purge",
                          "--destdir", str(root)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert_code_gone(root)
    assert not state.exists() and not (wants / "tpskit.service").is_symlink()


def test_purge_never_deletes_a_folder_that_is_not_tpskit_s_own(tmp_path):
    """A config naming /srv as its state_dir must not make --purge delete /srv; a signing key kept elsewhere
    (signing.key_file) is the kit's all the same: it goes, and purge says so."""
    root = tmp_path / "root"
    stage_kit(root)
    (root / "etc/tpskit/config.toml").write_text(
        '[kit]\nkit_id = "k"\n[paths]\nstate_dir = "/srv"\n[signing]\nkey_file = "/etc/ssl/kit.key"\n')
    outbox_with(root / "srv", acked=2)
    (root / "srv/other-service").mkdir()
    (root / "etc/ssl").mkdir()
    (root / "etc/ssl/kit.key").write_text("PRIVATE\n")
    res = uninstall(root, "--purge")
    assert res.returncode == 0, res.stderr
    assert (root / "srv/other-service").is_dir() and (root / "srv/tpskit.db").exists()
    assert "state directory /srv (from the config) is not tpskit's own folder" in res.stdout
    assert not (root / "etc/ssl/kit.key").exists() and (root / "etc/ssl").is_dir()
    assert "PRIVATE SIGNING KEY IS GONE: /etc/ssl/kit.key" in res.stdout
    assert not (root / "var/lib/tpskit").exists() and not (root / "etc/tpskit").exists()


def test_purge_refuses_unacked_messages_in_a_database_provision_archived(tmp_path):
    """provision --force moves an old database to <state_dir>/archive/<time>-<kit>/: its unacked messages are
    never sent by the kit again, and --purge must not delete them unnoticed."""
    root = tmp_path / "root"
    state = stage_kit(root)
    outbox_with(state, acked=1)
    outbox_with(state / "archive/20240101T000000-old-kit", queued=2)
    before = tree(root)
    res = uninstall(root, "--purge")
    assert res.returncode == 1 and "2 pesan belum di-ack" in res.stderr and "archive" in res.stderr
    assert tree(root) == before


def test_purge_refuses_photos_left_without_their_database(tmp_path):
    """Page photos whose database is gone (deleted by hand, lost with a damaged card): nothing can tell
    whether their readings ever reached the collector, so --purge refuses as for an unreadable database."""
    root = tmp_path / "root"
    state = stage_kit(root)
    (state / "photos").mkdir()
    (state / "photos/0123abcd.jpg").write_bytes(b"\xff\xd8 a page \xff\xd9")
    res = refused_purge(root)
    assert "REFUSED" in res.stderr
    assert "1 foto" in res.stderr and "no database" in res.stderr
