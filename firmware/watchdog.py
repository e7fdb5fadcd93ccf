"""Liveness gate for the systemd watchdog.

A free-running ping thread would keep systemd happy while the kit is hung, so
there is none. Instead the main loop calls :meth:`LivenessGate.tick` on each
pass; ``tick`` pings ``WATCHDOG=1`` only if every registered part has shown a
sign of life recently:

- parts that report by themselves call :meth:`LivenessGate.alive` (e.g. the
  main loop itself, or a worker at the top of its loop);
- parts that are checked from outside get a *probe*, a callable returning True
  while they are healthy (e.g. ``courier_thread.is_alive``).

If the main loop hangs, ``tick`` is never called and pings stop; if a worker
hangs or dies, ``tick`` keeps running but does not ping. Either way systemd
restarts the service after ``WatchdogSec``.

A bounded wait is not a hang: the kit runs a camera capture (whose
``camera.timeout_s`` may be longer than ``WatchdogSec``) through
``capture.base.BoundedCall``, on a helper thread while the main loop keeps
ticking, for at most the camera's timeout and a grace.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from firmware.notify import SystemdNotifier

log = logging.getLogger(__name__)



@dataclass
class _Part:
    name: str
    max_silence_s: float | None
    probe: Callable[[], bool] | None
    last_alive: float


class LivenessGate:
    """Pings the systemd watchdog only while every registered part is alive.

    ``interval_s`` defaults to the notifier's recommended interval (half of
    ``WatchdogSec``); without a watchdog it is 1 s and pings are no-ops.
    """

    def __init__(self, notifier: SystemdNotifier, *, interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._notifier = notifier
        self._clock = clock
        self.interval_s = interval_s or notifier.watchdog_interval() or 1.0
        self._parts: dict[str, _Part] = {}
        self._lock = threading.Lock()
        self._last_ping: float | None = None
        self._last_failing: tuple[str, ...] = ()
        self.pings = 0

    def register(self, name: str, *, max_silence_s: float | None = None,
                 probe: Callable[[], bool] | None = None) -> None:
        """Watch a part: it calls ``alive(name)`` every ``max_silence_s`` and/or ``probe()`` is True."""
        if max_silence_s is None and probe is None:
            raise ValueError(f"part {name!r} needs max_silence_s, a probe, or both")
        with self._lock:
            self._parts[name] = _Part(name, max_silence_s, probe, self._clock())

    def unregister(self, name: str) -> None:
        with self._lock:
            self._parts.pop(name, None)

    def alive(self, name: str) -> None:
        """Report that *name* is alive now (cheap; any thread)."""
        with self._lock:
            part = self._parts.get(name)
            if part is None:
                raise KeyError(f"unknown part {name!r}: register it first")
            part.last_alive = self._clock()

    def failing(self) -> list[str]:
        """Names of parts that are silent too long or whose probe says not alive."""
        now = self._clock()
        with self._lock:
            parts = list(self._parts.values())
        bad = []
        for part in parts:
            if part.max_silence_s is not None and now - part.last_alive > part.max_silence_s:
                bad.append(part.name)
                continue
            if part.probe is not None:
                try:
                    ok = bool(part.probe())
                except Exception:  # a probe that raises means "not alive"
                    ok = False
                if not ok:
                    bad.append(part.name)
        return bad

    def tick(self) -> bool:
        """Call from the main loop; pings WATCHDOG=1 when due and all parts are alive. True if pinged."""
        now = self._clock()
        if self._last_ping is not None and now - self._last_ping < self.interval_s:
            return False
        bad = tuple(self.failing())
        if bad:
            if bad != self._last_failing:
                log.error("watchdog: not pinging, not alive: %s", ", ".join(bad))
                self._notifier.status("not alive: " + ", ".join(bad))
            self._last_failing = bad
            return False
        if self._last_failing:
            log.info("watchdog: all parts alive again")
            self._last_failing = ()
        self._notifier.watchdog()
        self._last_ping = now
        self.pings += 1
        return True
