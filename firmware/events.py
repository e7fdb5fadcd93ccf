"""Events that reach the Kit's main loop. Producers (gpiozero callbacks, the battery monitor,
signal handlers, soak and demo drivers) only create these and put them on the queue."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Press:
    """A button press, decided on release: short = capture, long = status + resend."""

    kind: Literal["short", "long"]
    pressed_at: float  # time.monotonic() when the button went down
    released_at: float = field(default_factory=time.monotonic)
    source: Literal["button", "soak", "demo"] = "button"


@dataclass(frozen=True)
class HoldReached:
    """The button has been held for hold_s: releasing now is a long press (feedback only)."""

    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class LowBattery:
    """The battery monitor reports a low (warn) or critical (shut down) level."""

    level: float | None = None
    critical: bool = False


@dataclass(frozen=True)
class Stop:
    """Stop the main loop cleanly (SIGTERM, end of a soak or demo run)."""

    reason: str = "stop requested"


Event = Press | HoldReached | LowBattery | Stop
