"""The button and LEDs through gpiozero's MockFactory, pressed like a real finger would."""

from __future__ import annotations

import queue
import time

import pytest
from gpiozero.pins.mock import MockFactory

from firmware.events import HoldReached, Press
from firmware.hardware import PATTERNS, Indicator, PressButton


@pytest.fixture
def factory():
    f = MockFactory()
    yield f
    f.reset()


def make_button(factory, *, hold_s=0.4, bounce_s=0.08):
    events: queue.Queue = queue.Queue()
    button = PressButton(17, on_event=events.put, hold_s=hold_s, bounce_s=bounce_s, pin_factory=factory)
    return button, events, factory.pin(17)


def drain(events, wait=0.15):
    time.sleep(wait)
    out = []
    while not events.empty():
        out.append(events.get_nowait())
    return out


def bounce(pin, level_low: bool, *, times=3, step=0.004):
    """Contact chatter ending at level_low."""
    for _ in range(times):
        (pin.drive_low if level_low else pin.drive_high)()
        time.sleep(step)
        (pin.drive_high if level_low else pin.drive_low)()
        time.sleep(step)
    (pin.drive_low if level_low else pin.drive_high)()


def test_short_press_gives_one_short_event(factory):
    button, events, pin = make_button(factory)
    pin.drive_low()
    time.sleep(0.15)
    pin.drive_high()
    got = drain(events)
    assert [type(e) for e in got] == [Press]
    assert got[0].kind == "short"
    assert got[0].released_at >= got[0].pressed_at
    button.close()


def test_bouncing_contact_is_one_press(factory):
    button, events, pin = make_button(factory)
    bounce(pin, level_low=True)      # press with chatter
    time.sleep(0.15)
    bounce(pin, level_low=False)     # release with chatter
    got = drain(events)
    assert [(type(e), getattr(e, "kind", None)) for e in got] == [(Press, "short")]
    # a later clean press is again a short press (the release chatter left nothing behind)
    time.sleep(0.5)
    pin.drive_low()
    time.sleep(0.15)
    pin.drive_high()
    got = drain(events)
    assert [e.kind for e in got] == ["short"]
    button.close()


def test_lone_glitch_is_ignored(factory):
    button, events, pin = make_button(factory)
    pin.drive_low()
    time.sleep(0.005)
    pin.drive_high()
    assert drain(events) == []
    button.close()


def test_long_press_decided_on_release_never_also_short(factory):
    button, events, pin = make_button(factory, hold_s=0.3)
    pin.drive_low()
    time.sleep(0.6)
    during = drain(events, wait=0)
    assert [type(e) for e in during] == [HoldReached]  # feedback only; nothing decided yet
    pin.drive_high()
    got = drain(events)
    assert [(type(e), getattr(e, "kind", None)) for e in got] == [(Press, "long")]
    button.close()


def test_presses_in_a_row_are_all_counted(factory):
    button, events, pin = make_button(factory)
    for _ in range(5):
        pin.drive_low()
        time.sleep(0.12)
        pin.drive_high()
        time.sleep(0.1)
    assert [e.kind for e in drain(events)] == ["short"] * 5
    button.close()


def test_patterns_drive_leds_and_buzzer(factory):
    ind = Indicator(green=22, yellow=23, red=24, buzzer=25, pin_factory=factory)
    ind.show("ready")
    assert ind.state() == {"green": True, "yellow": False, "red": False}
    ind.show("error")
    assert ind.state() == {"green": True, "yellow": False, "red": True}
    ind.show("review")
    assert ind.state() == {"green": True, "yellow": True, "red": False}
    buzzer = factory.pin(25)
    time.sleep(0.6)  # two beeps of 0.1 s
    assert sum(1 for s in buzzer.states if s.state) >= 2
    ind.show("busy")
    time.sleep(0.35)
    yellow = factory.pin(23)
    assert sum(1 for s in yellow.states[-6:] if s.state) >= 1  # blinking
    assert ind.state()["green"] is False
    ind.close()


def test_every_documented_pattern_is_distinct_and_shown(factory):
    ind = Indicator(green=22, yellow=23, red=24, buzzer=None, pin_factory=factory)
    names = ["ready", "busy", "ok", "review", "retake", "queued", "error", "low_battery"]
    assert set(names) <= set(PATTERNS)
    looks = {(PATTERNS[n].green, PATTERNS[n].yellow, PATTERNS[n].red, PATTERNS[n].beeps) for n in names}
    assert len(looks) == len(names)
    for n in names:
        ind.show(n)
    ind.close()


def test_missing_leds_are_tolerated(factory):
    ind = Indicator(green=22, yellow=None, red=None, buzzer=None, pin_factory=factory)
    ind.show("retake")
    assert ind.state() == {"green": True, "yellow": None, "red": None}
    ind.close()
