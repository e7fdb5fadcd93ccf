"""Shared pieces of the delivery tests: polling, a test courier, a collector for one registered kit and the
shipped broker's message size limit."""

from __future__ import annotations

import time
from pathlib import Path

from comms import payloads
from comms.collector import Collector
from comms.courier import Courier
from comms.signing import registry_add

KW, TPS = "31.71.01.1001", 7
KIT = "kit-1"
EPOCH = 1_700_000_000_000


def wait_for(pred, timeout: float = 60.0, step: float = 0.05) -> bool:
    """Poll ``pred`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


def make_courier(key, broker, tmp_path: Path, **kw) -> Courier:
    """A courier for ``KIT`` with short test timings (ack timeout 1.5 s, backoff 0.2-1 s); ``kw`` override."""
    opts = dict(
        db_path=tmp_path / "tpskit.db",
        kit_id=KIT,
        kode_wilayah=KW,
        tps=TPS,
        signing_key=key,
        broker_url=broker.url,
        ack_timeout_s=1.5,
        backoff_base_s=0.2,
        backoff_max_s=1.0,
        heartbeat_s=0.5,
    )
    opts.update(kw)
    return Courier(**opts)


def start_collector(key, broker, tmp_path: Path, *, client_id: str, db_path=None, ack_key=None) -> Collector:
    """Register ``KIT`` with ``key`` in ``tmp_path/kits.json`` and start a connected collector for it (signing
    its acks with *ack_key*, when given)."""
    registry_add(tmp_path / "kits.json", KIT, key.verify_key, kode_wilayah=KW, tps=TPS)
    collector = Collector(
        broker_url=broker.url,
        db_path=db_path if db_path is not None else tmp_path / "collector.db",
        registry=tmp_path / "kits.json",
        client_id=client_id,
        ack_key=ack_key,
    ).start()
    assert collector.connected.wait(10), "collector did not connect"
    return collector


def signed_reading(
    key, seq: int = 1, capture: str = "c1", value: int = 120, photo=None, kit_id: str = KIT
) -> bytes:
    """A signed reading envelope of ``kit_id`` (one number, ``value``) as a kit would publish it."""
    body = payloads.reading_body(
        capture_id=capture,
        halaman=1,
        reading={"suara": {"01": value}},
        taken_at=1.0,
        time_source="rtc",
        photo=photo,
        chunk_bytes=1000,
    )
    return payloads.build(
        key,
        kind="reading",
        msg_id=payloads.reading_id(kit_id, capture),
        kit_id=kit_id,
        kode_wilayah=KW,
        tps=TPS,
        seq=seq,
        created_at=2.0,
        body=body,
        epoch=EPOCH,
    )


def shipped_message_size_limit() -> int:
    """``message_size_limit`` of the shipped broker config, comms/mosquitto/mosquitto.conf."""
    conf = Path(__file__).resolve().parents[1] / "comms" / "mosquitto" / "mosquitto.conf"
    values = [
        int(words[1])
        for words in (line.split() for line in conf.read_text(encoding="utf-8").splitlines())
        if words[:1] == ["message_size_limit"]
    ]
    assert len(values) == 1, f"{conf} must set message_size_limit once"
    return values[0]
