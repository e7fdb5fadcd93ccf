"""Automatic presses for long runs and fault tests (``tpskit run --soak``, scripts/bench_soak.py).

The presser is a producer like gpiozero's callbacks: it presses the button (the mock pin when
gpiozero runs on MockFactory, so presses take the same path as a finger; otherwise it posts the
Press event), waits for the Kit's verdict, waits ``interval_s``, and presses again.
"""

from __future__ import annotations

import logging
import threading
import time

from firmware.events import Press

log = logging.getLogger(__name__)


class SoakPresser:
    """Presses *presses* times (0 = until stopped), one press per verdict plus *interval_s*."""

    def __init__(self, kit, *, interval_s: float = 2.0, presses: int = 0, press_s: float | None = None,
                 verdict_timeout_s: float = 120.0, stop_kit_when_done: bool = True,
                 drain_s: float = 30.0) -> None:
        self.kit = kit
        self.interval_s = interval_s
        self.presses = presses
        # long enough to pass the bounce filter, far from a long press
        self.press_s = press_s if press_s is not None else 2 * kit.config.gpio.bounce_s + 0.03
        self.verdict_timeout_s = verdict_timeout_s
        self.stop_kit_when_done = stop_kit_when_done
        self.drain_s = drain_s
        self.done = 0
        self._verdict = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tpskit-soak", daemon=True)
        kit.on_verdict.append(lambda _v: self._verdict.set())

    def _mock_pin(self):
        panel = getattr(self.kit, "panel", None)
        try:
            from gpiozero.pins.mock import MockPin

            pin = panel.button.pin
            return pin if isinstance(pin, MockPin) else None
        except (AttributeError, ImportError):
            return None

    def press(self) -> None:
        pin = self._mock_pin()
        if pin is not None:
            pin.drive_low()
            time.sleep(self.press_s)
            pin.drive_high()
        else:
            now = time.monotonic()
            self.kit.post(Press("short", pressed_at=now - self.press_s, released_at=now, source="soak"))

    def _run(self) -> None:
        while not self._stop.is_set() and (self.presses == 0 or self.done < self.presses):
            self._verdict.clear()
            self.press()
            if not self._verdict.wait(self.verdict_timeout_s):
                log.error("soak: no verdict within %.0f s of press %d", self.verdict_timeout_s, self.done + 1)
            self.done += 1
            if self._stop.wait(self.interval_s):
                break
        if self.stop_kit_when_done and not self._stop.is_set():
            self._drain()
            self.kit.stop(f"soak run done: {self.done} presses")

    def _drain(self) -> None:
        """Give the courier up to drain_s to get everything acknowledged before the kit stops."""
        courier = getattr(self.kit, "courier", None)
        deadline = time.monotonic() + self.drain_s
        while courier is not None and time.monotonic() < deadline and not self._stop.is_set():
            try:
                st = courier.status()
            except Exception:  # noqa: BLE001
                return
            if not st.get("queued") and not st.get("sent"):
                return
            self._stop.wait(0.2)

    def start(self) -> SoakPresser:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
