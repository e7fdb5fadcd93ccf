"""Battery level and the low-battery signal.

Two sources, either or both (``[power]`` in the config):

- a GPIO line from the UPS HAT, active low (``low_battery_pin``): when it goes
  active the battery is about to run out, so it counts as *critical*;
- an I2C fuel gauge (``fuel_gauge = "max17040"``) read through the small
  :class:`FuelGauge` interface; ``warn_percent`` makes it *low*,
  ``critical_percent`` makes it *critical*.

Callbacks (``when_low``, ``when_critical``) run on gpiozero's thread or on the
caller of :meth:`BatteryMonitor.poll`; they must only enqueue an event for the
Kit's main loop, which finishes its current write, warns and shuts down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from firmware.config import PowerConfig

log = logging.getLogger(__name__)

Callback = Callable[[], None]
HYSTERESIS = 1.0

#: Exit status of ``tpskit run`` after a clean stop for a critical battery. Under systemd the service user
#: cannot power off; tpskit.service treats 75 as success, does not restart, and powers off in ExecStopPost=+.
EXIT_POWEROFF = 75


class FuelGauge(Protocol):
    """Anything that reports the state of charge."""

    def percent(self) -> float:
        """State of charge 0..100; raises OSError if the gauge cannot be read."""
        ...

    def close(self) -> None: ...


class MAX17040Gauge:
    """MAX17040/17041/17043/17048 fuel gauge on I2C (smbus2, imported lazily).

    SOC register 0x04: high byte = whole percent, low byte = 1/256 percent.
    """

    SOC_REGISTER = 0x04

    def __init__(self, *, bus: int = 1, address: int = 0x36) -> None:
        # the bus is opened at the first read: a bus that is not there (I2C off) is an unreadable gauge, not a
        # kit that cannot start (systemd would restart it until it reboots the Pi)
        self._bus_number = bus
        self._bus = None
        self._address = address

    def percent(self) -> float:
        hi, lo = self._open().read_i2c_block_data(self._address, self.SOC_REGISTER, 2)
        return min(100.0, hi + lo / 256.0)

    def _open(self):
        if self._bus is None:
            try:
                from smbus2 import SMBus
            except ImportError:
                raise OSError("fuel_gauge = 'max17040' needs smbus2: sudo apt install python3-smbus2"
                              ) from None
            try:
                self._bus = SMBus(self._bus_number)
            except OSError as exc:
                raise OSError(f"I2C bus {self._bus_number} not available ({exc}): enable I2C (sudo "
                              "raspi-config nonint do_i2c 0) and reboot") from None
        return self._bus

    def close(self) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None


class FakeGauge:
    """A settable gauge for tests and the demo; ``percent=None`` simulates an I2C error."""

    def __init__(self, percent: float | None = 100.0) -> None:
        self.value = percent

    def percent(self) -> float:
        if self.value is None:
            raise OSError("fake gauge: no answer on I2C")
        return float(self.value)

    def close(self) -> None:
        pass


def open_gauge(power: PowerConfig) -> FuelGauge | None:
    """The fuel gauge named in the config, or None."""
    if power.fuel_gauge == "max17040":
        return MAX17040Gauge()
    return None


class BatteryMonitor:
    """Battery state for the Kit: ``level()``, ``low``, ``critical`` and edge callbacks.

    ``pin_factory`` is passed to gpiozero (``MockFactory`` in tests); ``gauge``
    overrides the gauge named in the config (``FakeGauge`` in tests).
    """

    def __init__(self, power_config: PowerConfig, *, pin_factory=None, gauge: FuelGauge | None = None,
                 bounce_s: float | None = 0.1) -> None:
        self._config = power_config
        self._lock = threading.Lock()
        self._gauge = gauge if gauge is not None else open_gauge(power_config)
        self._line = None
        self._level: float | None = None
        self._was_low = False
        self._was_critical = False
        self.when_low: Callback | None = None
        self.when_critical: Callback | None = None
        # why a configured source cannot be read (the line could not be claimed, the gauge did not answer):
        # the kit runs on without it, and says so (``problem``) in its readiness and heartbeat
        self._line_problem: str | None = None
        self._gauge_problem: str | None = None
        if power_config.low_battery_pin is not None:
            from gpiozero import DigitalInputDevice

            try:  # active low: the HAT pulls the line to GND when the battery is nearly empty
                self._line = DigitalInputDevice(power_config.low_battery_pin, pull_up=True,
                                                bounce_time=bounce_s, pin_factory=pin_factory)
            except Exception as exc:  # noqa: BLE001 - gpiozero's pin errors: in use, no such pin, no access
                self._line_problem = f"low-battery line GPIO{power_config.low_battery_pin}: {exc}"
                log.error("%s: running without it", self._line_problem)
            else:
                self._line.when_activated = self._on_line

    @property
    def has_source(self) -> bool:
        """True if a low-battery line or a gauge is fitted."""
        return self._line is not None or self._gauge is not None

    @property
    def problem(self) -> str | None:
        """Why a configured source cannot be read now (the line, the gauge's last read), or None."""
        found = [p for p in (self._line_problem, self._gauge_problem) if p]
        return "; ".join(found) or None

    def level(self) -> float | None:
        """State of charge in percent from the gauge, or None (no gauge, or it did not answer)."""
        if self._gauge is None:
            return None
        try:
            value = round(float(self._gauge.percent()), 1)
        except OSError as exc:
            if self._gauge_problem is None:
                log.warning("fuel gauge not readable: %s", exc)
            self._gauge_problem = f"fuel gauge: {exc}"
            return None
        self._gauge_problem = None
        with self._lock:
            self._level = value
        return value

    @property
    def line_active(self) -> bool:
        """The UPS HAT's low-battery line is asserted."""
        return bool(self._line is not None and self._line.is_active)

    @property
    def low(self) -> bool:
        """At or below ``warn_percent``, or the low-battery line is asserted."""
        if self.line_active:
            return True
        level = self._last_or_read()
        return level is not None and level <= self._config.warn_percent

    @property
    def critical(self) -> bool:
        """At or below ``critical_percent``, or the low-battery line is asserted: shut down now."""
        if self.line_active:
            return True
        level = self._last_or_read()
        return level is not None and level <= self._config.critical_percent

    def _last_or_read(self) -> float | None:
        with self._lock:
            level = self._level
        return level if level is not None else self.level()

    def poll(self) -> float | None:
        """Read the gauge now and fire ``when_low``/``when_critical`` on crossing; call it periodically."""
        level = self.level()
        line = self.line_active
        # 1 % hysteresis so a level wobbling around a threshold does not warn again and again
        warn = self._config.warn_percent + (HYSTERESIS if self._was_low else 0.0)
        crit = self._config.critical_percent + (HYSTERESIS if self._was_critical else 0.0)
        low = line or (level is not None and level <= warn)
        critical = line or (level is not None and level <= crit)
        self._edges(low, critical)
        return level

    def status(self) -> dict:
        """For the heartbeat: ``{"percent": float|None, "low": bool, "critical": bool}``, and ``problem``
        when a configured source cannot be read."""
        level = self.level()
        out = {"percent": level, "low": self.low, "critical": self.critical}
        if self.problem:
            out["problem"] = self.problem
        return out

    def _on_line(self) -> None:
        log.warning("low-battery line from the UPS HAT is active")
        self._edges(True, True)

    def _edges(self, low: bool, critical: bool) -> None:
        with self._lock:
            fire_low = low and not self._was_low
            fire_critical = critical and not self._was_critical
            self._was_low, self._was_critical = low, critical
        if fire_low and self.when_low is not None:
            self.when_low()
        if fire_critical and self.when_critical is not None:
            self.when_critical()

    def close(self) -> None:
        if self._line is not None:
            self._line.close()
            self._line = None
        if self._gauge is not None:
            self._gauge.close()
            self._gauge = None
