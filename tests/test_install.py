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
