"""firmware.power.BatteryMonitor with gpiozero's MockFactory and a fake fuel gauge."""

from __future__ import annotations

import queue

import pytest
from gpiozero.pins.mock import MockFactory

from firmware.config import PowerConfig
from firmware.power import BatteryMonitor, FakeGauge, MAX17040Gauge


@pytest.fixture
def factory():
    f = MockFactory()
    yield f
    f.reset()


def test_low_battery_line_fires_critical_once(factory):
    events: queue.Queue[str] = queue.Queue()
    mon = BatteryMonitor(PowerConfig(low_battery_pin=6), pin_factory=factory, bounce_s=None)
    mon.when_low = lambda: events.put("low")
    mon.when_critical = lambda: events.put("critical")
    assert mon.has_source and not mon.low and not mon.critical
    assert mon.level() is None  # a line gives no percentage
    pin = factory.pin(6)
    pin.drive_low()  # the UPS HAT pulls the line down
    assert events.get(timeout=2) == "low"
    assert events.get(timeout=2) == "critical"
    assert mon.low and mon.critical
    mon.poll()  # still asserted: no second event
    assert events.empty()
    pin.drive_high()
    mon.poll()
    assert not mon.critical
    pin.drive_low()
    assert events.get(timeout=2) == "low"
    mon.close()


def test_gauge_thresholds_and_hysteresis():
    gauge = FakeGauge(80)
    events: list[str] = []
    mon = BatteryMonitor(PowerConfig(warn_percent=15, critical_percent=5), gauge=gauge)
    mon.when_low = lambda: events.append("low")
    mon.when_critical = lambda: events.append("critical")
    assert mon.poll() == 80.0 and not mon.low
    gauge.value = 14.5
    mon.poll()
    assert events == ["low"] and mon.low and not mon.critical
    gauge.value = 15.5  # within hysteresis: stays low, no new warning
    mon.poll()
    gauge.value = 14.9
    mon.poll()
    assert events == ["low"]
    gauge.value = 5
    mon.poll()
    assert events == ["low", "critical"] and mon.critical
    assert mon.status() == {"percent": 5.0, "low": True, "critical": True}


def test_unreadable_gauge_gives_none_not_an_error():
    mon = BatteryMonitor(PowerConfig(), gauge=FakeGauge(None))
    assert mon.level() is None
    assert mon.poll() is None
    assert not mon.low and not mon.critical


def test_no_source():
    mon = BatteryMonitor(PowerConfig())
    assert not mon.has_source
    assert mon.level() is None
    assert mon.status() == {"percent": None, "low": False, "critical": False}


def test_max17040_reads_soc_register(monkeypatch):
    import sys
    import types

    class Bus:
        def __init__(self, n):
            self.n = n

        def read_i2c_block_data(self, addr, reg, length):
            assert (addr, reg, length) == (0x36, 0x04, 2)
            return [57, 128]

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "smbus2", types.SimpleNamespace(SMBus=Bus))
    assert MAX17040Gauge().percent() == 57.5


def test_a_fuel_gauge_that_cannot_be_reached_is_a_problem_to_report_not_a_kit_that_cannot_start(monkeypatch):
    """I2C switched off (no /dev/i2c-1) or smbus2 missing: the gauge used to fail when the kit was built, so
    `tpskit run` exited and systemd restarted it until it rebooted the Pi, over and over. Now the gauge reads
    nothing, the monitor says why (and what to do), and a bus that comes back is read again."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "smbus2", None)  # not installed: the import fails
    mon = BatteryMonitor(PowerConfig(fuel_gauge="max17040"))
    assert mon.has_source and mon.level() is None
    assert "python3-smbus2" in mon.problem and mon.status()["problem"] == mon.problem
    mon.close()

    answers: list = []

    class Bus:
        def __init__(self, n):
            if not answers:
                raise FileNotFoundError(2, "No such file or directory", f"/dev/i2c-{n}")

        def read_i2c_block_data(self, addr, reg, length):
            return answers

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "smbus2", types.SimpleNamespace(SMBus=Bus))
    mon = BatteryMonitor(PowerConfig(fuel_gauge="max17040"))
    assert mon.level() is None and "raspi-config nonint do_i2c 0" in mon.problem
    answers[:] = [80, 0]  # I2C switched on
    assert mon.level() == 80.0 and mon.problem is None and "problem" not in mon.status()
    mon.close()


def test_a_low_battery_line_that_cannot_be_claimed_is_a_problem_to_report():
    """The pin is taken (another process, a wrong pin in the config): the kit runs on without the line and
    says so, instead of failing to start."""
    from gpiozero import DigitalInputDevice
    from gpiozero.pins.mock import MockFactory

    factory = MockFactory()
    taken = DigitalInputDevice(6, pin_factory=factory)
    try:
        mon = BatteryMonitor(PowerConfig(low_battery_pin=6), pin_factory=factory)
        assert not mon.has_source and not mon.line_active
        assert mon.problem.startswith("low-battery line GPIO6: ")
        mon.close()
    finally:
        taken.close()
