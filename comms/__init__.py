"""Delivery: outbox, signatures, payloads, the Courier (kit side), the collector and USB bundles.

``from comms import Courier, Outbox, OutboxFull`` works; modules load on first use so that
``import comms.signing`` stays light.
"""

from __future__ import annotations

_EXPORTS = {
    "Courier": "comms.courier",
    "Outbox": "comms.outbox",
    "OutboxFull": "comms.outbox",
    "Collector": "comms.collector",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'comms' has no attribute {name!r}")
