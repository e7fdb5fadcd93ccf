"""Payload schema v1: builds, parses, sizes, JSON Schema."""

from __future__ import annotations

import json

import pytest

from comms import payloads
from comms.signing import generate_key

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
