"""The systemd units: `systemd-analyze verify` (where installed) and the directives issue 7 requires."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNITS = ["tpskit.service", "tpskit-collector.service"]
ANALYZE = shutil.which("systemd-analyze")


def directives(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    text = (ROOT / "systemd" / unit).read_text().replace("\\\n", " ")  # continuation lines joined
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def localized(tmp_path: Path) -> list[Path]:
    """Copies of the units whose ExecStart points at this checkout's tpskit (verify checks it exists)."""
    exe = Path(sys.executable).with_name("tpskit")
    if not exe.exists():
        exe = Path(shutil.which("true") or "/bin/true")
    paths = []
    for unit in UNITS:
        text = (ROOT / "systemd" / unit).read_text().replace("/opt/tpskit/venv/bin/tpskit", str(exe))
        (tmp_path / unit).write_text(text)
        paths.append(tmp_path / unit)
    return paths


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (apt install systemd)")
def test_systemd_analyze_verify(tmp_path):
    paths = localized(tmp_path)
    res = subprocess.run([ANALYZE, "verify", *map(str, paths)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    # any warning about our own units is a mistake (unknown key, bad value, ...)
    ours = [line for line in res.stderr.splitlines() if "tpskit" in line]
    assert not ours, "\n".join(ours)


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (apt install systemd)")
@pytest.mark.parametrize("unit", UNITS)
def test_exposure_is_low(tmp_path, unit):
    paths = dict(zip(UNITS, localized(tmp_path), strict=True))
    res = subprocess.run([ANALYZE, "security", "--offline=yes", str(paths[unit])],
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0 and "offline" in res.stderr:
        pytest.skip("this systemd-analyze has no --offline")
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
    assert m, res.stdout[-500:] + res.stderr
    assert float(m.group(1)) <= 3.0


def test_kit_unit_has_what_issue_7_requires():
    d = directives("tpskit.service")
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert int(d["WatchdogSec"][0]) >= 10
    assert d["Restart"] == ["on-failure"]
    assert d["StateDirectory"] == ["tpskit"]
    assert d["User"] == ["tpskit"]
    assert set(d["SupplementaryGroups"][0].split()) >= {"gpio", "video"}
    assert d["ProtectSystem"] == ["strict"]
    assert d["ProtectHome"] == ["yes"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["CapabilityBoundingSet"] == [""]
    assert set(d["RestrictAddressFamilies"][0].split()) <= {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert d["DevicePolicy"] == ["closed"]
    allowed = " ".join(d["DeviceAllow"])
    for dev in ("gpiochip", "video4linux", "media", "dma_heap", "i2c"):
        assert f"char-{dev} rw" in allowed
    assert any(v.startswith("mqtt-password:") for v in d["LoadCredential"])
    # the low-battery exit is clean, not restarted, and powers off with privileges only in ExecStopPost
    assert "75" in d["SuccessExitStatus"][0].split() and "75" in d["RestartPreventExitStatus"][0].split()
    assert d["ExecStopPost"][0].startswith("+") and "75) exec /usr/bin/systemctl --no-block poweroff" in (
        d["ExecStopPost"][0])
    assert "LG_WD=/run/tpskit" in d["Environment"][0]
    # firmware.clock asks adjtimex() (read-only) whether NTP synced the clock: it must stay allowed
    assert "adjtimex" in d["SystemCallFilter"][0].split() and "ProtectClock" not in d


def test_low_battery_exit_code_matches_power_module():
    from firmware.power import EXIT_POWEROFF

    assert str(EXIT_POWEROFF) in directives("tpskit.service")["SuccessExitStatus"][0].split()


def test_a_part_that_stays_down_reboots_the_pi_and_is_restarted_if_the_reboot_does_not_come():
    """tpskit run exits EXIT_REBOOT when the camera or model stayed down (it kept sending meanwhile): systemd
    reboots the Pi (privileged ExecStopPost). The exit counts as a failure, not a clean stop, so a reboot that
    does not happen leaves the kit restarted (and sending), not stopped all day."""
    from firmware.app import EXIT_POWEROFF, EXIT_REBOOT

    d = directives("tpskit.service")
    assert EXIT_REBOOT != EXIT_POWEROFF
    assert d["Restart"] == ["on-failure"]
    assert str(EXIT_REBOOT) not in d["SuccessExitStatus"][0].split()
    assert str(EXIT_REBOOT) not in d["RestartPreventExitStatus"][0].split()
    assert f"{EXIT_REBOOT}) exec /usr/bin/systemctl --no-block reboot" in d["ExecStopPost"][0]


def test_exec_stop_post_reboots_or_powers_off_only_on_its_exit_codes(tmp_path):
    """ExecStopPost run with a fake systemctl: exit 75 powers off, 76 reboots, any other does nothing."""
    import subprocess

    line = directives("tpskit.service")["ExecStopPost"][0].lstrip("+")
    fake = tmp_path / "systemctl"
    log = tmp_path / "calls"
    fake.write_text(f"#!/bin/sh\necho \"$*\" >> {log}\n")
    fake.chmod(0o755)
    script = line.split(" -c ", 1)[1].strip()[1:-1].replace("$$", "$")
    script = script.replace("/usr/bin/systemctl", str(fake))
    for status in ("0", "1", "2", "75", "76", "143"):
        subprocess.run(["/bin/sh", "-c", script], env={"EXIT_STATUS": status}, check=True)
    assert log.read_text().splitlines() == ["--no-block poweroff", "--no-block reboot"]


def test_files_a_root_command_left_in_the_state_directory_are_given_back_before_start(tmp_path):
    """A root-owned tpskit.db-shm (a read-only `sudo sqlite3`, an interrupted root command) keeps the service
    user from writing its database: the privileged ExecStartPre gives the whole StateDirectory back to it,
    without following a symlink out of it."""
    import os
    import shlex
    import subprocess

    import pytest

    d = directives("tpskit.service")
    line = d["ExecStartPre"][0]
    # privileged ("+"), and its failure (a card remounted read-only) does not stop the kit from starting ("-")
    assert line[:2] in ("+-", "-+") and d["StateDirectory"] == ["tpskit"] and d["User"] == ["tpskit"]
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    state = tmp_path / "tpskit"
    (state / "photos").mkdir(parents=True)
    for name in ("tpskit.db", "tpskit.db-shm", "photos/a.jpg"):
        (state / name).write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.write_bytes(b"x")
    (state / "link").symlink_to(outside)
    argv = [a.replace("%S", str(tmp_path)) for a in shlex.split(line.lstrip("+-"))]
    argv = [a.replace("tpskit:tpskit", "65534:65534") if ":" in a else a for a in argv]
    subprocess.run(argv, check=True)
    for p in [state, *state.rglob("*")]:
        assert (p.lstat().st_uid, p.lstat().st_gid) == (65534, 65534), p
    assert outside.stat().st_uid == 0


def test_collector_unit():
    d = directives("tpskit-collector.service")
    assert d["Restart"] == ["on-failure"]
    assert d["DynamicUser"] == ["yes"]
    assert d["StateDirectory"] == ["tpskit-collector"]
    assert d["CapabilityBoundingSet"] == [""]
    assert "collector" in d["ExecStart"][0]
    # a stable client id: the broker keeps the collector's session (and queues readings) while it restarts;
    # without one the collector asks for a clean session
    assert "--client-id tpskit-collector-%H" in d["ExecStart"][0]


def test_a_kit_that_keeps_failing_to_start_is_rebooted_not_left_down():
    """Unattended on polling day: when the daemon keeps failing to start (e.g. a camera driver wedged after a
    watchdog kill), hitting the start limit reboots the Pi (what a person would do) instead of leaving the kit
    down until someone comes. systemd 252 (bookworm) has no RestartSteps, so no back-off: a burst, then
    reboot."""
    d = directives("tpskit.service")
    assert d["Restart"] == ["on-failure"]
    assert d["StartLimitAction"] == ["reboot"]
    interval, burst, restart_s = (int(d[k][0])
                                  for k in ("StartLimitIntervalSec", "StartLimitBurst", "RestartSec"))
    assert interval > 0 and burst * restart_s < interval  # the limit is reachable, so the reboot does happen
    assert burst * restart_s >= 60  # transient trouble gets a minute of plain restarts first
    # a refused config (tpskit run exits 2) is not restarted: a reboot would not mend it, only loop
    assert "2" in d["RestartPreventExitStatus"][0].split()
    # a kit not provisioned yet (install.sh enables the unit) is skipped, never caught in a reboot loop
    config = d["ExecStart"][0].split("--config", 1)[1].split()[0]
    assert d["ConditionPathExists"] == [config]


CERT_DROPIN = ROOT / "systemd" / "tpskit-collector-certificate.conf"


def test_collector_unit_says_what_the_operator_must_create():
    """The unit loads /etc/tpskit/collector-mqtt-password as a credential: systemd refuses to start it while
    that file is missing. The unit says so, and names the drop-in for a certificate-only collector."""
    text = (ROOT / "systemd" / "tpskit-collector.service").read_text()
    d = directives("tpskit-collector.service")
    password = "/etc/tpskit/collector-mqtt-password"
    assert d["LoadCredential"] == [f"collector-mqtt-password:{password}"]
    assert f"--password-file {password}" in d["ExecStart"][0]
    assert "install -m 600" in text and password in text and CERT_DROPIN.name in text


def test_a_certificate_only_collector_needs_no_password_file():
    """The drop-in (systemd/tpskit-collector-certificate.conf) drops the password credential and argument and
    passes the client certificate and key as credentials (DynamicUser cannot read a root-only key)."""
    base = directives("tpskit-collector.service")
    text = CERT_DROPIN.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "[Service]"
    pairs = [line.partition("=")[::2] for line in lines[1:]]
    creds = [v for k, v in pairs if k == "LoadCredential"]
    starts = [v for k, v in pairs if k == "ExecStart"]
    assert creds[0] == "" and starts[0] == ""  # empty assignments reset what the unit sets
    assert not any("password" in v for v in creds + starts)
    assert set(creds[1:]) == {f"collector.{x}:/etc/tpskit/collector.{x}" for x in ("crt", "key")}
    (start,) = starts[1:]
    assert "--cert-file %d/collector.crt" in start and "--key-file %d/collector.key" in start
    # everything else as in the unit: same program, database, registry, client id and extra arguments
    same = base["ExecStart"][0].replace(" --password-file /etc/tpskit/collector-mqtt-password", "")
    cert = " --cert-file %d/collector.crt --key-file %d/collector.key"
    assert start.replace(cert, "").split() == same.split()


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (apt install systemd)")
def test_systemd_analyze_verify_collector_with_the_certificate_drop_in(tmp_path):
    paths = dict(zip(UNITS, localized(tmp_path), strict=True))
    exe = directives("tpskit-collector.service")["ExecStart"][0].split()[0]
    dropin = tmp_path / "tpskit-collector.service.d" / "certificate.conf"
    dropin.parent.mkdir()
    local = paths["tpskit-collector.service"].read_text().split("ExecStart=", 1)[1].split()[0]
    dropin.write_text(CERT_DROPIN.read_text().replace(exe, local))
    res = subprocess.run([ANALYZE, "verify", str(paths["tpskit-collector.service"])],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    ours = [line for line in res.stderr.splitlines() if "tpskit" in line]
    assert not ours, "\n".join(ours)
