"""Low battery end to end with the Kit, through the UPS HAT line (gpiozero MockFactory) or the fuel gauge:
the write in progress finishes, STOPPING=1 goes to a real notify socket, the exit code asks systemd to power
off, nothing is lost, and the kit starts again when power returns."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from gpiozero.pins.mock import MockFactory

from firmware import app
from firmware.notify import SystemdNotifier
from firmware.power import EXIT_POWEROFF, BatteryMonitor, FakeGauge
from tests.kit_helpers import KitHarness, StubReader, make_config, photo_folder


@pytest.fixture
def photos(tmp_path):
    return photo_folder(tmp_path / "photos")


@pytest.mark.parametrize("source", ["line", "gauge"])
def test_critical_battery_finishes_write_then_powers_off(tmp_path, photos, monkeypatch, source):
    monkeypatch.setattr(app, "BATTERY_POLL_S", 0.05)
    sock_path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(sock_path)
    server.settimeout(0.2)
    if source == "line":
        power = {"low_battery_pin": 5, "shutdown_command": ["true"]}
    else:
        power = {"fuel_gauge": "max17040", "warn_percent": 15, "critical_percent": 5,
                 "shutdown_command": ["true"]}
    cfg = make_config(tmp_path / "state", photos, power=power)
    factory = MockFactory()
    gauge = FakeGauge(60) if source == "gauge" else None
    powered_off = threading.Event()
    try:
        battery = BatteryMonitor(cfg.power, pin_factory=factory, gauge=gauge, bounce_s=None)
        notifier = SystemdNotifier(socket_path=sock_path)
        with KitHarness(cfg, battery=battery, factory=factory, notifier=notifier, power_off=powered_off.set,
                        reader=StubReader(delay_s=0.5)) as h:
            h.press()
            time.sleep(0.15)  # the capture is being read
            if source == "line":
                factory.pin(5).drive_low()  # the UPS HAT asserts low battery mid-write
            else:
                gauge.value = 3.0  # the battery collapses mid-write
            assert h.verdict().pattern == "ok"  # the write in progress is finished first
            deadline = time.monotonic() + 10
            while h.rc is None and time.monotonic() < deadline:
                time.sleep(0.05)
        assert h.rc == EXIT_POWEROFF and powered_off.is_set()
        assert h.store.counts()["total"] == 1 and h.store.integrity_ok()
        msgs = []
        while True:
            try:
                msgs.append(server.recv(4096).decode())
            except TimeoutError:
                break
        assert any(m.startswith("READY=1") for m in msgs)
        assert any(m.startswith("STOPPING=1") for m in msgs)
        assert any("Baterai" in m for m in h.messages)

        # power returns: systemd starts the kit again; it is ready with its data intact
        factory2 = MockFactory()
        if gauge is not None:
            gauge.value = 80.0
        with KitHarness(cfg, battery=BatteryMonitor(cfg.power, pin_factory=factory2, gauge=gauge),
                        factory=factory2) as h2:
            assert h2.kit.state == "ready"
            assert h2.store.counts()["total"] == 1
        assert h2.rc == 0
    finally:
        server.close()
