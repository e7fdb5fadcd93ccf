"""argparse types for the CLI's numbers: a bad value is refused by argparse (exit 2) with what to give."""

from __future__ import annotations

import argparse
import math


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} bukan angka / is not a number")
    return value


def seconds(text: str) -> float:
    """A wait of more than 0 s (with 0 or less a check that waits for something fails at once)."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: harus lebih dari 0 detik / must be more than 0 seconds")
    return value


def at_least_zero(text: str) -> float:
    """A number of 0 or more (0 often meaning "no limit")."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: tidak boleh negatif / must be 0 or more")
    return value
