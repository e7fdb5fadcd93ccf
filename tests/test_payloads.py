"""Payload schema v1: builds, parses, sizes, JSON Schema."""

from __future__ import annotations

import json

import annotated_types
import pytest

from comms import payloads
from comms.signing import generate_key
from tests.delivery_helpers import shipped_message_size_limit

KW, TPS = "31.71.01.1001", 7


def test_reading_roundtrip_and_size():
    key = generate_key()
    body = payloads.reading_body(
        capture_id="4f2c" * 8,
        halaman=2,
        reading={"fields": {"suara_01": 120}},
        taken_at=1.7e9,
        time_source="rtc",
        photo=b"\xff\xd8" * 5000,
        chunk_bytes=4000,
    )
    assert body["photo"]["chunks"] == 3
    wire = payloads.build(
        key,
        kind="reading",
        msg_id="kit-1:x:reading",
        kit_id="kit-1",
        kode_wilayah=KW,
        tps=TPS,
        seq=1,
        epoch=5,
        created_at=1.7e9,
        body=body,
    )
    assert len(wire) < payloads.READING_MAX_BYTES
    env, raw = payloads.parse(wire)
    assert env.kind == "reading" and env.seq == 1 and env.epoch == 5
    assert payloads.verify(key.verify_key, raw, wire) and payloads.verify(key.verify_key, raw)
    assert not payloads.verify(generate_key().verify_key, raw, wire)


def test_chunks_rebuild_the_photo():
    photo = bytes(range(256)) * 40
    bodies = payloads.photo_chunk_bodies(capture_id="c", halaman=1, photo=photo, chunk_bytes=3000)
    assert b"".join(payloads.decode_chunk(b) for b in bodies) == photo
    with pytest.raises(payloads.MalformedMessage):
        payloads.decode_chunk({**bodies[0], "data": "AAAA"})


@pytest.mark.parametrize(
    "bad",
    [
        dict(halaman=0),
        dict(time_source="x" * 40),
        dict(capture_id=""),
        dict(reading=[1, 2]),
    ],
)
def test_bad_reading_refused_at_the_kit(bad):
    args = dict(
        capture_id="c", halaman=1, reading={}, taken_at=1.0, time_source="rtc", photo=None, chunk_bytes=1000
    )
    args.update(bad)
    with pytest.raises(Exception):  # noqa: B017 - pydantic ValidationError
        payloads.reading_body(**args)


def test_ack_and_schema():
    assert payloads.parse_ack(payloads.ack_payload(["a", "b"], collector="c", at=1.0)) == ["a", "b"]
    with pytest.raises(payloads.MalformedMessage):
        payloads.parse_ack(b'{"ids": []}')
    schema = payloads.json_schema()
    assert set(schema) == {"envelope", "reading", "photo", "status", "ack"}
    json.dumps(schema)


def config_maximum(section, name: str) -> int:
    """The ``le`` bound of a config field."""
    return next(m.le for m in section.model_fields[name].metadata if isinstance(m, annotated_types.Le))


def largest_chunk_message(chunk_bytes: int) -> bytes:
    """A photo chunk message of *chunk_bytes* with every other field as long as the schema allows:
    kit_id of 64 characters, a capture_id of 128 characters that JSON escapes to 6 bytes each, the
    largest numbers."""
    kit_id, capture_id = "k" * 64, "\x01" * 128
    photo = bytes(range(256)) * (chunk_bytes // 256 + 1)
    body = payloads.photo_chunk_bodies(capture_id=capture_id, halaman=99, photo=photo[:chunk_bytes],
                                       chunk_bytes=chunk_bytes)[0]
    body.update(index=payloads.INT_MAX - 1, count=payloads.INT_MAX)
    return payloads.build(
        generate_key(),
        kind="photo",
        msg_id=payloads.photo_chunk_id(kit_id, capture_id, payloads.INT_MAX - 1),
        kit_id=kit_id,
        kode_wilayah=KW,
        tps=999,
        seq=payloads.INT_MAX,
        epoch=payloads.BIGINT_MAX,
        created_at=-1.2345678901234567e-300,
        body=body,
    )


def test_the_largest_photo_chunk_fits_the_shipped_broker():
    """A chunk over the broker's message_size_limit is refused by it (MQTT 5: the connection drops) and sent
    again for ever: the largest chunk the config and the courier allow must fit, with every other field at
    its longest."""
    from firmware.config import OutboxConfig

    limit = shipped_message_size_limit()
    assert payloads.BROKER_MESSAGE_LIMIT == limit
    assert config_maximum(OutboxConfig, "chunk_bytes") <= payloads.MAX_CHUNK_BYTES
    wire = largest_chunk_message(payloads.MAX_CHUNK_BYTES)
    assert len(wire) <= limit
    overhead = len(wire) - len(json.loads(wire)["body"]["data"])
    assert overhead <= payloads.CHUNK_MESSAGE_OVERHEAD  # the bound MAX_CHUNK_BYTES is derived from


def test_the_largest_pack_fits_the_shipped_broker():
    """The courier keeps a pack within pack_max_bytes (header included): the config's largest must fit."""
    from firmware.config import MqttConfig

    assert config_maximum(MqttConfig, "pack_max_bytes") <= shipped_message_size_limit()
