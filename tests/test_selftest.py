"""tpskit selftest with gpiozero's MockFactory, the folder camera and a real broker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from firmware import cli
from firmware.power import FakeGauge
from firmware.selftest import (
    Check,
    Report,
    boot_report,
    check_battery,
    check_button,
    check_clock,
    check_outputs,
    check_storage,
    last_selftest,
    publish_readiness,
    save_report,
)
from inference.digits import DEFAULT_MODEL
from tests.broker import free_port
from tests.selftest_helpers import Presser, make_kit, page_photos


def _registry(tmp_path):
    registry = tmp_path / "registry.json"
    registry.write_text('{"version": 1, "kits": {}}\n')
    return registry


def _collector(tmp_path, broker, registry):
    """The reference collector, built after the kits are in the registry."""
    from comms.collector import Collector

    return Collector(broker_url=broker.url, db_path=tmp_path / "collector.db", registry=registry)


def _latest_readiness(db) -> dict:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return json.loads(con.execute("SELECT body FROM kit_readiness").fetchone()[0])
    finally:
        con.close()


@pytest.fixture
def factory():
    f = MockFactory()
    old = Device.pin_factory
    Device.pin_factory = f
    yield f
    f.reset()
    Device.pin_factory = old


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return page_photos(tmp_path_factory.mktemp("photos"))


def test_button_press_and_timeout(tmp_path, factory):
    conf = make_kit(tmp_path, broker_url="mqtt://127.0.0.1:1")
    pin = factory.pin(conf.gpio.button)

    def press(text):
        assert "Tekan tombol" in text
        pin.drive_low()

    check = check_button(conf, pin_factory=factory, timeout_s=5, prompt=press)
    assert check.ok, check.detail
    pin.drive_high()
    check = check_button(conf, pin_factory=factory, timeout_s=0.2, prompt=lambda t: None)
    assert not check.ok and "tidak ada tekanan" in check.detail and "kabel tombol" in check.fix


def test_leds_and_buzzer_are_driven(tmp_path, factory):
    conf = make_kit(tmp_path, broker_url="mqtt://127.0.0.1:1")
    check = check_outputs(conf, pin_factory=factory, on_s=0.01)
    assert check.ok, check.detail
    for pin_no in (conf.gpio.led_green, conf.gpio.led_yellow, conf.gpio.led_red, conf.gpio.buzzer):
        states = [s.state for s in factory.pin(pin_no).states]
        assert True in states and states[-1] is False  # went on, ended off
    no = check_outputs(conf, pin_factory=factory, on_s=0.01, confirm=lambda q: False)
    assert not no.ok and "polaritas" in no.fix


def test_clock_storage_battery(tmp_path):
    assert not check_clock(now=0.0, source="unsynced").ok  # 1970: the Pi without RTC and network
    c = check_clock(now=time.mktime((2024, 2, 13, 12, 0, 0, 0, 0, 0)), source="unsynced")
    assert c.ok and "belum sinkron" in c.detail
    assert check_clock(now=time.mktime((2024, 2, 13, 12, 0, 0, 0, 0, 0)), source="ntp").ok
    conf = make_kit(tmp_path / "k", broker_url="mqtt://127.0.0.1:1")
    assert check_storage(conf).ok
    blocker = tmp_path / "file"
    blocker.write_text("x")
    conf.paths.state_dir = blocker / "state"  # cannot be created: a file is in the way
    bad = check_storage(conf)
    assert not bad.ok and "tidak bisa ditulis" in bad.detail
    conf = make_kit(tmp_path / "k2", broker_url="mqtt://127.0.0.1:1")
    check, level = check_battery(conf)
    assert check.ok and check.skipped and level is None
    conf.power.fuel_gauge = "max17040"
    check, level = check_battery(conf, gauge=FakeGauge(30))
    assert not check.ok and level == 30 and "isi baterai" in check.fix
    check, level = check_battery(conf, gauge=FakeGauge(95))
    assert check.ok and level == 95


def _selftest(conf_path, *extra):
    return cli.main(["--config", str(conf_path), "selftest", "--json", "--yes", "--button-timeout", "5",
                     "--ack-timeout", "10", *extra])


def _report(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_failing_camera_is_not_ready(tmp_path, factory, mosquitto, capsys):
    empty = tmp_path / "no-photos"
    empty.mkdir()
    registry = _registry(tmp_path)
    conf = make_kit(tmp_path / "kit", broker_url=mosquitto.url, photos=empty, registry=registry)
    collector = _collector(tmp_path, mosquitto, registry).start()
    try:
        assert collector.connected.wait(10)
        with Presser(factory, conf.gpio.button):
            rc = _selftest(tmp_path / "kit" / "config.toml", "--skip", "model")
    finally:
        collector.stop()
    rep = _report(capsys)
    assert rc == 1 and not rep["ready"]
    assert rep["failing"] == ["camera"], rep["checks"]
    cam = next(c for c in rep["checks"] if c["name"] == "camera")
    assert "tidak bisa memotret" in cam["detail"] and "kabel pita" in cam["fix"]
    # the collector acked the test message; the readiness was published too
    assert next(c for c in rep["checks"] if c["name"] == "collector")["ok"]
    assert rep["readiness_message"]["state"] == "acked"
    body = _latest_readiness(tmp_path / "collector.db")  # stored by the reference collector
    assert body["ready"] is False and body["trigger"] == "selftest"
    assert body["failing"][0]["name"] == "camera"


def test_missing_model_is_not_ready(tmp_path, factory, photos, capsys):
    conf = make_kit(tmp_path / "kit", broker_url=f"mqtt://127.0.0.1:{free_port()}", photos=photos,
                    model=tmp_path / "nowhere" / "digits.tflite")
    with Presser(factory, conf.gpio.button):
        rc = _selftest(tmp_path / "kit" / "config.toml", "--skip", "broker,collector", "--no-publish")
    rep = _report(capsys)
    assert rc == 1 and rep["failing"] == ["model"]
    model = next(c for c in rep["checks"] if c["name"] == "model")
    assert "tidak bisa dimuat" in model["detail"] and "pasang ulang" in model["fix"]
    assert next(c for c in rep["checks"] if c["name"] == "camera")["ok"]
    assert next(c for c in rep["checks"] if c["name"] == "button")["ok"]


def test_unreachable_broker_is_not_ready_and_readiness_waits_in_outbox(tmp_path, factory, photos, capsys):
    conf = make_kit(tmp_path / "kit", broker_url=f"mqtt://127.0.0.1:{free_port()}", photos=photos)
    with Presser(factory, conf.gpio.button):
        rc = _selftest(tmp_path / "kit" / "config.toml", "--skip", "model", "--ack-timeout", "2")
    rep = _report(capsys)
    assert rc == 1 and set(rep["failing"]) == {"broker", "collector"}
    broker = next(c for c in rep["checks"] if c["name"] == "broker")
    assert "tidak" in broker["detail"] and "sinyal" in broker["fix"]
    assert rep["readiness_message"]["state"] == "queued"  # sent by the kit once the link is up
    assert last_selftest(conf)["failing"] == ["broker", "collector"]


def test_text_verdict_names_what_to_fix(tmp_path, factory, photos, capsys):
    conf = make_kit(tmp_path / "kit", broker_url=f"mqtt://127.0.0.1:{free_port()}", photos=photos)
    rc = cli.main(["--config", str(tmp_path / "kit" / "config.toml"), "selftest", "--yes", "--no-publish",
                   "--button-timeout", "0.2", "--skip", "model,broker,collector"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "BELUM SIAP" in out and "Tombol / button" in out and "→ periksa kabel tombol" in out
    assert conf.kit.kit_id in out


@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="digit model not committed yet")
def test_everything_ready(tmp_path, factory, photos, mosquitto, capsys):
    registry = _registry(tmp_path)
    make_kit(tmp_path / "kit", broker_url=mosquitto.url, photos=photos, registry=registry)
    collector = _collector(tmp_path, mosquitto, registry).start()
    try:
        assert collector.connected.wait(10)
        with Presser(factory, 17):
            rc = _selftest(tmp_path / "kit" / "config.toml")
    finally:
        collector.stop()
    rep = _report(capsys)
    assert rep["failing"] == [] and rc == 0, rep
    assert rep["readiness_message"]["state"] == "acked"
    assert _latest_readiness(tmp_path / "collector.db")["ready"] is True


def test_boot_report_uses_last_selftest(tmp_path):
    conf = make_kit(tmp_path / "kit", broker_url="mqtt://127.0.0.1:1")
    rep = boot_report(conf)
    assert not rep.ready and rep.failing[-1].name == "selftest" and "belum pernah" in rep.failing[-1].detail
    passed = Report(conf.kit.kit_id, conf.kit.kode_wilayah, conf.kit.tps, "selftest",
                    [Check("camera", True, "ok")])
    save_report(conf, passed)
    rep = boot_report(conf)
    assert rep.ready, rep.text()
    body = rep.readiness_body()
    assert body["trigger"] == "boot" and body["ready"] is True and body["checks"]["selftest"] == "ok"

    class FakeCourier:
        def __init__(self):
            self.sent = []

        def publish_retained(self, kind, body):
            self.sent.append((kind, body))
            return "id-1"

    courier = FakeCourier()
    assert publish_readiness(courier, rep) == "id-1" and courier.sent[0][0] == "readiness"


def test_broker_check_uses_the_kits_credentials(tmp_path, mosquitto_factory):
    import os
    import shutil
    import subprocess

    from firmware.selftest import check_broker

    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd not installed")
    pw = tmp_path / "passwd"
    pw.write_text("user-5:rahasia\n")
    subprocess.run(["mosquitto_passwd", "-U", str(pw)], check=True)
    pw.chmod(0o644)
    # the test broker runs as root here: keep root so it can read the file under pytest's 0700 tmp dir
    user = "user root\n" if os.geteuid() == 0 else ""
    broker = mosquitto_factory(extra_conf=f"{user}password_file {pw}\n")
    conf = make_kit(tmp_path / "kit", broker_url=broker.url)
    ok = check_broker(conf, timeout_s=5)
    assert ok.ok, ok.detail
    conf.mqtt.password_file.write_text("salah\n")  # a wrong password in the kit's credential file
    bad = check_broker(conf, timeout_s=5)
    assert not bad.ok and "menolak" in bad.detail and "password" in bad.fix


def test_boot_readiness_reaches_the_collector(tmp_path, mosquitto):
    """What the Kit does once READY: boot_report() + publish_readiness() through its real Courier."""
    from comms.courier import Courier
    from comms.outbox import Outbox

    registry = _registry(tmp_path)
    conf = make_kit(tmp_path / "kit", broker_url=mosquitto.url, registry=registry)
    collector = _collector(tmp_path, mosquitto, registry)
    save_report(conf, Report(conf.kit.kit_id, conf.kit.kode_wilayah, conf.kit.tps, "selftest",
                             [Check("camera", True, "ok")]))
    collector.start()
    courier = Courier.from_config(conf, password="rahasia")
    try:
        assert collector.connected.wait(10)
        courier.start()
        msg_id = publish_readiness(courier, boot_report(conf))
        box = Outbox(conf.db_path)
        deadline = time.monotonic() + 15
        while box.state_of(msg_id) != "acked" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert box.state_of(msg_id) == "acked"
        box.close()
    finally:
        courier.close()
        collector.stop()
    body = _latest_readiness(tmp_path / "collector.db")
    assert body["trigger"] == "boot" and body["ready"] is True and body["checks"]["selftest"] == "ok"


def test_skipped_checks_are_not_ready(tmp_path, factory, photos, capsys):
    """--skip is for a workshop without signal: the kit is not counted ready until the skipped checks ran."""
    conf = make_kit(tmp_path / "kit", broker_url=f"mqtt://127.0.0.1:{free_port()}", photos=photos)
    with Presser(factory, conf.gpio.button):
        rc = _selftest(tmp_path / "kit" / "config.toml", "--skip", "model,broker", "--skip", "collector",
                       "--no-publish")
    rep = _report(capsys)
    assert rep["failing"] == [], rep["checks"]
    assert rc == 1 and rep["ready"] is False
    assert rep["skipped"] == ["model", "broker", "collector"]
    assert last_selftest(conf)["skipped"] == ["model", "broker", "collector"]
    rc = cli.main(["--config", str(tmp_path / "kit" / "config.toml"), "selftest", "--yes", "--no-publish",
                   "--skip", "camera,button,leds,model,broker,collector"])
    out = capsys.readouterr().out
    verdict = next(line for line in out.splitlines() if line.startswith("KESIMPULAN"))
    assert rc == 1 and "BELUM SIAP" in verdict and "dilewati" in verdict and "camera" in verdict
    assert "[LEWAT]" in out


def test_readiness_names_the_skipped_checks(tmp_path):
    conf = make_kit(tmp_path / "kit", broker_url="mqtt://127.0.0.1:1")
    rep = Report(conf.kit.kit_id, conf.kit.kode_wilayah, conf.kit.tps, "selftest",
                 [Check("camera", True, "ok"), Check("broker", True, "dilewati (--skip)", skipped=True),
                  Check("battery", True, "tidak ada sensor baterai di konfigurasi", skipped=True)],
                 skipped=["broker"])
    assert not rep.ready and rep.failing == []
    body = rep.readiness_body()
    assert body["ready"] is False and body["skipped"] == ["broker"] and body["failing"] == []
    assert body["checks"]["broker"] == "skip"
    # a battery that is not fitted is not a skipped check: the kit is ready without it
    fitted = Report(conf.kit.kit_id, conf.kit.kode_wilayah, conf.kit.tps, "selftest", rep.checks[::2])
    assert fitted.ready and fitted.readiness_body()["skipped"] == []
    # the boot readiness carries the skipped checks of the last self-test: still not ready
    save_report(conf, rep)
    boot = boot_report(conf)
    assert not boot.ready and boot.failing == [] and boot.skipped == ["broker"]
    assert boot.readiness_body()["skipped"] == ["broker"]
    assert "dilewati" in boot.get("selftest").detail


def test_readiness_hints_run_the_selftest_as_in_the_technician_guide(tmp_path):
    """The selftest reads /etc/tpskit and the state dir (root only) and needs the camera and GPIO the service
    holds: docs/technician-guide.md runs 'sudo systemctl stop tpskit' then 'sudo tpskit selftest'. The
    readiness hint said '...; tpskit selftest' (no sudo: fails on permissions)."""
    guide = (Path(__file__).resolve().parents[1] / "docs" / "technician-guide.md").read_text(encoding="utf-8")
    assert "sudo systemctl stop tpskit\nsudo tpskit selftest" in guide
    conf = make_kit(tmp_path / "kit", broker_url="mqtt://127.0.0.1:1")
    fixes = [boot_report(conf).failing[-1].fix]  # never run
    where = (conf.kit.kode_wilayah, conf.kit.tps, "selftest")
    for last in (Report("kit-other", *where, [Check("camera", True, "")]),
                 Report(conf.kit.kit_id, *where, [Check("camera", False, "x", "y")])):
        save_report(conf, last)
        fixes.append(boot_report(conf).failing[-1].fix)
    for fix in fixes:
        assert "sudo systemctl stop tpskit; sudo tpskit selftest" in fix, fix


def test_every_command_in_a_selftest_hint_runs_with_sudo():
    """Every tpskit command the selftest's and the fleet report's texts name (selftest, calibrate, export,
    provision) is written with sudo, as in docs/technician-guide.md: without it the command cannot read
    /etc/tpskit or the state dir."""
    import ast
    import re

    import firmware.fleet
    import firmware.selftest

    command = re.compile(r"(?<!sudo )\btpskit (selftest|calibrate|export|provision)\b")
    for module in (firmware.selftest, firmware.fleet):
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        bad = [
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and command.search(node.value)
        ]
        assert not bad, module.__name__


def test_a_selftest_dated_in_the_future_does_not_stay_valid(tmp_path):
    """No RTC: a self-test run while the kit's clock was ahead (a bad manual 'date -s', 2040 still passes the
    clock check) got a negative age once NTP set the clock right: 'lulus -480 jam lalu', valid for weeks
    past the 14 days, or for ever. A self-test from the future is not trusted: run it again."""
    conf = make_kit(tmp_path / "kit", broker_url="mqtt://127.0.0.1:1")
    ahead = Report(conf.kit.kit_id, conf.kit.kode_wilayah, conf.kit.tps, "selftest",
                   [Check("camera", True, "ok")], checked_at=time.time() + 20 * 86400)
    save_report(conf, ahead)
    rep = boot_report(conf)
    check = rep.get("selftest")
    assert not rep.ready and not check.ok and "masa depan" in check.detail and "jam lalu" not in check.detail
    assert "sudo tpskit selftest" in check.fix
    # a few minutes ahead (clocks differ a little) is fine
    save_report(conf, Report(conf.kit.kit_id, conf.kit.kode_wilayah, conf.kit.tps, "selftest",
                             [Check("camera", True, "ok")], checked_at=time.time() + 120))
    assert boot_report(conf).ready


@pytest.mark.parametrize("option,value", [("--button-timeout", "-1"), ("--button-timeout", "0"),
                                          ("--ack-timeout", "-5"), ("--ack-timeout", "abc")])
def test_a_wait_of_zero_or_less_is_refused_not_a_failed_check(capsys, option, value):
    """--button-timeout -1 ran the self-test and failed the button ('check the wiring to GPIO17')."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["selftest", option, value])
    assert exc.value.code == 2
    assert option in capsys.readouterr().err
