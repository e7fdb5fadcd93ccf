"""MQTT topic layout: ``<prefix>/<kode_wilayah>/<tps>/<kind>`` (documented in docs/payloads.md).

Kit → collector: ``reading``, ``photo``, ``readiness`` (retained), ``heartbeat`` (retained),
``status`` (retained, last will).
Collector → kit: ``ack``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX = "tpskit/v1"
KIT_KINDS = ("reading", "photo", "readiness", "heartbeat", "status")
# published with retain: the broker keeps each TPS's latest
RETAINED_KINDS = ("readiness", "heartbeat", "status")
# The retained kinds a collector takes over a plain subscription, so that it gets the broker's copy again
# when it (re)subscribes: readiness (every 6 h) and status (at each connection) come rarely. Heartbeats come
# every few minutes and stay on the shared subscription (a retained message is delivered live to shared
# subscriptions too; only the stored copy is not): a plain one would hand every heartbeat to every collector
# of a group, and every kit's stored heartbeat to each collector at each resubscribe. Their copy at the
# broker is for ``tpskit fleet readiness --broker`` (a kit's latest state and faults).
PLAIN_KINDS = ("readiness", "status")
ACK = "ack"
KINDS = (*KIT_KINDS, ACK)
SHARE_GROUP = "collectors"

_KW = re.compile(r"^\d{2}\.\d{2}\.\d{2}\.\d{4}$")


def topic(prefix: str, kode_wilayah: str, tps: int, kind: str) -> str:
    """The topic of one kind of message of one TPS."""
    if kind not in KINDS:
        raise ValueError(f"unknown topic kind {kind!r}; one of {', '.join(KINDS)}")
    return f"{prefix.strip('/')}/{kode_wilayah}/{int(tps)}/{kind}"


@dataclass(frozen=True)
class TopicParts:
    kode_wilayah: str
    tps: int
    kind: str


def parse_topic(prefix: str, name: str) -> TopicParts:
    """Split a topic into (kode_wilayah, tps, kind); raise ValueError if it is not ours."""
    prefix = prefix.strip("/")
    if not name.startswith(prefix + "/"):
        raise ValueError(f"topic {name!r} is not under {prefix!r}")
    parts = name[len(prefix) + 1 :].split("/")
    if len(parts) != 3:
        raise ValueError(f"topic {name!r} is not <prefix>/<kode_wilayah>/<tps>/<kind>")
    kw, tps, kind = parts
    if not _KW.match(kw):
        raise ValueError(f"topic {name!r}: kode wilayah {kw!r} is not NN.NN.NN.NNNN")
    if not tps.isdigit() or not 1 <= int(tps) <= 999 or str(int(tps)) != tps:
        raise ValueError(f"topic {name!r}: TPS {tps!r} is not a number 1..999 without leading zeros")
    if kind not in KINDS:
        raise ValueError(f"topic {name!r}: unknown kind {kind!r}")
    return TopicParts(kw, int(tps), kind)


def collector_filters(prefix: str, *, group: str | None = SHARE_GROUP) -> list[tuple[str, bool]]:
    """(filter, shared) pairs a collector subscribes to.

    Readings, photos and heartbeats go through a shared subscription ($share/<group>/...) so several
    collectors split the load. Readiness and status (``PLAIN_KINDS``) use plain subscriptions: brokers do not
    deliver the stored retained messages to shared subscriptions (MQTT 5, 4.8.2), and every collector
    stores them idempotently.
    """
    prefix = prefix.strip("/")
    out = []
    for kind in (k for k in KIT_KINDS if k not in PLAIN_KINDS):
        f = f"{prefix}/+/+/{kind}"
        out.append((f"$share/{group}/{f}" if group else f, bool(group)))
    for kind in PLAIN_KINDS:
        out.append((f"{prefix}/+/+/{kind}", False))
    return out


def acl_for_kit(prefix: str, username: str, kode_wilayah: str, tps: int) -> str:
    """mosquitto acl_file lines: the kit may publish only under its own TPS and read only its acks."""
    base = f"{prefix.strip('/')}/{kode_wilayah}/{int(tps)}"
    lines = [f"user {username}"]
    lines += [f"topic write {base}/{kind}" for kind in KIT_KINDS]
    lines.append(f"topic read {base}/{ACK}")
    return "\n".join(lines) + "\n"
