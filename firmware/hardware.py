"""The kit's button, LEDs and buzzer, only through gpiozero.

gpiozero callbacks run on gpiozero's threads; here they only turn pin changes into events on a
queue (``on_event``). The main loop owns all state and decides what a press means.

Button: a short press captures; a press held for ``hold_s`` or longer is a long press (status and
resend). The choice is made on release, using a flag set by gpiozero's ``when_held``, so one
press never does both. Pulses shorter than ``bounce_s`` are contact bounce and are ignored (the
kernel debounce does this on the Pi; the check here makes it hold for every pin factory).

LED and buzzer patterns (green / yellow / red LEDs, active buzzer), see PATTERNS and README:

=============== ============ ================== ================== ==========================
pattern         green        yellow             red                buzzer
=============== ============ ================== ================== ==========================
ready           on           off                off                -
busy            off          fast blink 5/s     off                -
ok              on           off                off                1 short beep
review          on           on                 off                2 short beeps
retake          on           off                slow blink 1/s     3 short beeps
queued          on           slow pulse 1/2 s   off                -
error           on           off                on                 1 long beep
low_battery     off          off                fast blink 5/s     2 long beeps
fault           off          off                on                 3 long beeps
held            (unchanged)  (unchanged)        (unchanged)        1 very short click
=============== ============ ================== ================== ==========================
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from firmware.events import Event, HoldReached, Press

# LED spec: "on", "off", or ("blink", on_time, off_time)
LedSpec = str | tuple[str, float, float]


@dataclass(frozen=True)
class Pattern:
    """What each LED does and how the buzzer sounds for one kit state."""

    green: LedSpec | None  # None = leave as it is
    yellow: LedSpec | None
    red: LedSpec | None
    beeps: tuple[float, float, int] | None = None  # (on_s, off_s, count)
    meaning: str = ""


PATTERNS: dict[str, Pattern] = {
    "ready": Pattern("on", "off", "off", None, "siap: letakkan halaman, tekan tombol"),
    "busy": Pattern("off", ("blink", 0.1, 0.1), "off", None, "memotret dan membaca"),
    "ok": Pattern("on", "off", "off", (0.1, 0.1, 1), "terbaca, tersimpan"),
    "review": Pattern("on", "on", "off", (0.1, 0.15, 2), "tersimpan, perlu diperiksa"),
    "retake": Pattern("on", "off", ("blink", 0.5, 0.5), (0.1, 0.15, 3), "foto ulang"),
    "queued": Pattern("on", ("blink", 0.1, 1.9), "off", None, "belum terkirim, menunggu sinyal"),
    "error": Pattern("on", "off", "on", (1.0, 0.2, 1), "gagal; kit tetap siap"),
    "low_battery": Pattern("off", "off", ("blink", 0.1, 0.1), (0.6, 0.3, 2), "baterai lemah"),
    # camera or model did not open: no photos; stored data is still sent; the kit retries by itself
    "fault": Pattern("off", "off", "on", (0.8, 0.3, 3), "kit rusak (kamera/model): hubungi teknisi"),
    "held": Pattern(None, None, None, (0.03, 0.05, 1), "tekan lama tercatat: lepaskan tombol"),
}


def make_pin_factory(name: str):
    """A gpiozero pin factory by config name; None means gpiozero's default."""
    if name == "default":
        return None
    if name == "mock":
        from gpiozero.pins.mock import MockFactory

        return MockFactory()
    if name == "lgpio":
        from gpiozero.pins.lgpio import LGPIOFactory

        return LGPIOFactory()
    if name == "rpigpio":
        from gpiozero.pins.rpigpio import RPiGPIOFactory

        return RPiGPIOFactory()
    if name == "native":
        from gpiozero.pins.native import NativeFactory

        return NativeFactory()
    raise ValueError(f"unknown pin factory {name!r}")


class PressButton:
    """The capture button: turns gpiozero callbacks into Press/HoldReached events."""

    def __init__(self, pin: int, *, on_event: Callable[[Event], None], hold_s: float = 3.0,
                 bounce_s: float = 0.05, pin_factory=None) -> None:
        from gpiozero import Button

        self.hold_s = hold_s
        self.bounce_s = bounce_s
        self._on_event = on_event
        self._lock = threading.Lock()
        self._pressed_at: float | None = None
        self._glitch_at: float | None = None  # a release that came too soon (maybe bounce)
        self._held = False
        # bounce_time goes to the pin driver (kernel debounce on the Pi); MockFactory ignores it.
        self.button = Button(pin, pull_up=True, bounce_time=bounce_s or None, hold_time=hold_s,
                             pin_factory=pin_factory)
        self.button.when_pressed = self._pressed
        self.button.when_held = self._held_cb
        self.button.when_released = self._released

    @property
    def pin(self):
        return self.button.pin

    def _pressed(self) -> None:
        now = time.monotonic()
        with self._lock:
            stale = self._glitch_at is not None and now - self._glitch_at > self.bounce_s
            if self._pressed_at is None or stale:
                self._pressed_at = now  # a new press (a lone glitch before it is forgotten)
                self._held = False
            self._glitch_at = None

    def _held_cb(self) -> None:
        with self._lock:
            if self._pressed_at is None or self._held:
                return
            self._held = True
        self._on_event(HoldReached())

    def _released(self) -> None:
        now = time.monotonic()
        with self._lock:
            pressed_at = self._pressed_at
            if pressed_at is None:
                return
            if now - pressed_at < self.bounce_s and not self._held:
                # contact bounce: if the contact closes again within bounce_s the press continues,
                # otherwise this pulse was noise and is dropped.
                self._glitch_at = now
                return
            held = self._held or (now - pressed_at) >= self.hold_s
            self._pressed_at = None
            self._glitch_at = None
            self._held = False
        self._on_event(Press("long" if held else "short", pressed_at=pressed_at, released_at=now))

    def close(self) -> None:
        self.button.close()


class Indicator:
    """LEDs and buzzer showing the PATTERNS. Any pin may be None (not fitted)."""

    def __init__(self, *, green: int | None, yellow: int | None, red: int | None, buzzer: int | None,
                 pin_factory=None) -> None:
        from gpiozero import LED, Buzzer

        self.leds = {name: (LED(pin, pin_factory=pin_factory) if pin is not None else None)
                     for name, pin in (("green", green), ("yellow", yellow), ("red", red))}
        self.buzzer = Buzzer(buzzer, pin_factory=pin_factory) if buzzer is not None else None
        self.current: str | None = None

    def show(self, name: str) -> None:
        pattern = PATTERNS[name]
        for led_name, spec in (("green", pattern.green), ("yellow", pattern.yellow), ("red", pattern.red)):
            led = self.leds[led_name]
            if led is None or spec is None:
                continue
            if spec == "on":
                led.on()
            elif spec == "off":
                led.off()
            else:
                _, on_s, off_s = spec
                led.blink(on_time=on_s, off_time=off_s, background=True)
        if pattern.beeps and self.buzzer is not None:
            on_s, off_s, n = pattern.beeps
            self.buzzer.beep(on_time=on_s, off_time=off_s, n=n, background=True)
        if pattern.green is not None:
            self.current = name

    def state(self) -> dict[str, bool | None]:
        """Which LEDs are lit now (None = not fitted); for tests and status."""
        return {k: (bool(led.is_lit) if led is not None else None) for k, led in self.leds.items()}

    def close(self) -> None:
        for led in self.leds.values():
            if led is not None:
                led.close()
        if self.buzzer is not None:
            self.buzzer.close()


class Panel:
    """Button + indicator built from the gpio config section."""

    def __init__(self, gpio_config, *, on_event: Callable[[Event], None], pin_factory=None) -> None:
        if pin_factory is None:
            pin_factory = make_pin_factory(gpio_config.pin_factory)
        self.pin_factory = pin_factory
        self.button = PressButton(gpio_config.button, on_event=on_event, hold_s=gpio_config.hold_s,
                                  bounce_s=gpio_config.bounce_s, pin_factory=pin_factory)
        self.indicator = Indicator(green=gpio_config.led_green, yellow=gpio_config.led_yellow,
                                   red=gpio_config.led_red, buzzer=gpio_config.buzzer,
                                   pin_factory=pin_factory)

    def show(self, name: str) -> None:
        self.indicator.show(name)

    def close(self) -> None:
        self.button.close()
        self.indicator.close()
