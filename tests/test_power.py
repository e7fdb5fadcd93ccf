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
