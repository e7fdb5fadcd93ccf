"""Versioned JSON payloads (schema v1, documented in docs/payloads.md).

Every kit message is one signed *envelope*::

    {"v": 1, "kind": "reading", "id": "<kit_id>:<capture_id>:reading", "kit_id": "...",
     "kode_wilayah": "31.71.01.1001", "tps": 7, "seq": 42, "created_at": 1700000000.0,
     "body": {...}, "sig": "<base64 Ed25519 over canonical JSON of all other fields>"}

The wire bytes are the canonical JSON (sorted keys, no spaces, UTF-8) of the signed envelope.
``seq`` is the kit's monotonic sequence number for outbox messages (reading, photo, readiness);
heartbeat and status are not queued and carry ``seq: null``.

A *pack* (schema v1, pack format 1) carries several already-signed envelopes of one topic in one MQTT
message while a backlog drains: a header line ``{"count":N,"kind":"pack","v":1}`` then the exact wire
bytes of each envelope, one per line (canonical JSON never contains a raw newline). Every envelope keeps
its own id, seq and signature, so idempotency, order and tamper evidence are those of single messages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from typing import Any, Literal

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comms.signing import canonical_json, sign_document, verify_bytes, verify_document

SCHEMA_VERSION = 1
READING_MAX_BYTES = 2048  # numbers of one page on the wire (target)
MAX_MESSAGE_BYTES = 512 * 1024  # anything larger is refused by the collector
# The shipped broker (message_size_limit in comms/mosquitto/mosquitto.conf; a test checks they agree) refuses
# a larger payload: MQTT 5 kits lose the connection, MQTT 3.1.1 kits get a PUBACK and the message is dropped.
BROKER_MESSAGE_LIMIT = 262_144
# A photo chunk message is the base64 of the chunk (4 bytes per 3, rounded up) plus the rest of the signed
# envelope: at most ~2.2 KB even with a 64-character kit_id, a 128-character capture_id that JSON escapes to
# 6 bytes per character (twice: body and id) and the largest numbers (tests/test_payloads.py), bounded here.
CHUNK_MESSAGE_OVERHEAD = 4096
# Raw photo bytes per chunk so that a chunk message fits the broker: 4·(n/3) + 4096 ≤ 262,144 → n ≤ 193,536.
MAX_CHUNK_BYTES = (BROKER_MESSAGE_LIMIT - CHUNK_MESSAGE_OVERHEAD) // 4 * 3
KIT_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
KODE_WILAYAH_PATTERN = r"^\d{2}\.\d{2}\.\d{2}\.\d{4}$"
QUEUED_KINDS = ("reading", "photo", "readiness")
PACK_VERSION = 1  # version of the pack framing (the envelopes inside stay schema v1)
PACK_MAX_BYTES = 1024 * 1024  # a larger pack is refused whole by the collector
PACK_MAX_COUNT = 1000  # envelopes per pack, at most
INT_MAX = 2**31 - 1  # the collector's INTEGER columns (PostgreSQL: 4 bytes): seq, sizes, chunk numbers
BIGINT_MAX = 2**63 - 1  # its BIGINT column: epoch
_PACK_HEAD = b'{"count":'
_PACK_TAIL = b',"kind":"pack","v":%d}' % PACK_VERSION  # the header is _PACK_HEAD, the count, _PACK_TAIL


class MalformedMessage(ValueError):
    """A message does not follow the schema; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class PhotoMeta(_Model):
    """The photo that follows a reading in chunks."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the whole JPEG.")
    bytes: int = Field(ge=1, le=INT_MAX, description="JPEG size.")
    chunks: int = Field(ge=1, le=INT_MAX, description="Number of photo messages.")
    chunk_bytes: int = Field(ge=1, le=INT_MAX, description="Raw bytes per chunk (the last may be shorter).")
    content_type: Literal["image/jpeg"] = "image/jpeg"


class ReadingBody(_Model):
    """kind=reading: the numbers of one page (sent first, ≤ 2 KB)."""

    capture_id: str = Field(min_length=1, max_length=128)
    halaman: int | None = Field(None, ge=1, le=99, description="Page number of the C.HASIL form.")
    taken_at: float = Field(description="Unix time the photo was taken (kit clock).")
    time_source: str = Field(
        max_length=32,
        description="How the kit knew the time (firmware.clock.time_source): ntp (synchronised), unsynced "
        "(the last saved time: may be days off on a Pi without an RTC) or unknown.",
    )
    reading: dict[str, Any] = Field(description="The page reading (inference.reader PageReading.to_dict()).")
    photo: PhotoMeta | None = None


class PhotoChunkBody(_Model):
    """kind=photo: one checksummed chunk of the photo of a reading."""

    capture_id: str = Field(min_length=1, max_length=128)
    halaman: int | None = Field(None, ge=1, le=99)
    index: int = Field(ge=0, le=INT_MAX)
    count: int = Field(ge=1, le=INT_MAX)
    photo_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    chunk_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    data: str = Field(description="Base64 of the chunk bytes.")


class StatusBody(_Model):
    state: Literal["online", "offline"]
    reason: str | None = None
    session: int | None = Field(
        None, ge=1, le=INT_MAX, description="The kit's connection count in this epoch: orders its status."
    )


class Envelope(_Model):
    v: Literal[1] = Field(description="Schema version.")
    kind: Literal["reading", "photo", "readiness", "heartbeat", "status"]
    id: str = Field(min_length=1, max_length=256, description="Unique message id; resends reuse it.")
    kit_id: str = Field(pattern=KIT_ID_PATTERN)
    kode_wilayah: str = Field(pattern=KODE_WILAYAH_PATTERN)
    tps: int = Field(ge=1, le=999)
    seq: int | None = Field(None, ge=1, le=INT_MAX, description="Per-kit sequence number of queued messages.")
    epoch: int | None = Field(
        None, ge=0, le=BIGINT_MAX, description="Identifies the kit's sequence (outbox creation, ms)."
    )
    created_at: float
    body: dict[str, Any]
    sig: str = Field(min_length=80, max_length=100, description="Base64 Ed25519 signature.")


class Ack(_Model):
    """Collector → kit on <prefix>/<kw>/<tps>/ack: these message ids are stored."""

    v: Literal[1] = 1
    kind: Literal["ack"] = "ack"
    ids: list[str] = Field(min_length=1)
    collector: str = ""
    at: float = 0.0
    sig: str | None = Field(None, description="Ed25519 signature of the collector (when it has a key).")


BODY_MODELS: dict[str, type[_Model] | None] = {
    "reading": ReadingBody,
    "photo": PhotoChunkBody,
    "status": StatusBody,
    "readiness": None,
    "heartbeat": None,
}


# --- ids ----------------------------------------------------------------------------------------


def reading_id(kit_id: str, capture_id: str) -> str:
    return f"{kit_id}:{capture_id}:reading"


def photo_chunk_id(kit_id: str, capture_id: str, index: int) -> str:
    return f"{kit_id}:{capture_id}:photo:{index}"


# --- building (kit side) -------------------------------------------------------------------------


def build(
    key: SigningKey,
    *,
    kind: str,
    msg_id: str,
    kit_id: str,
    kode_wilayah: str,
    tps: int,
    seq: int | None,
    created_at: float,
    body: dict,
    epoch: int | None = None,
) -> bytes:
    """Sign an envelope and return its wire bytes."""
    env = {
        "v": SCHEMA_VERSION,
        "kind": kind,
        "id": msg_id,
        "kit_id": kit_id,
        "kode_wilayah": kode_wilayah,
        "tps": int(tps),
        "seq": seq,
        "epoch": epoch,
        "created_at": float(created_at),
        "body": body,
    }
    return canonical_json(sign_document(key, env))


def reading_body(
    *,
    capture_id: str,
    halaman: int | None,
    reading: dict,
    taken_at: float,
    time_source: str,
    photo: bytes | None,
    chunk_bytes: int,
) -> dict:
    meta = None
    if photo:
        meta = {
            "sha256": hashlib.sha256(photo).hexdigest(),
            "bytes": len(photo),
            "chunks": math.ceil(len(photo) / chunk_bytes),
            "chunk_bytes": chunk_bytes,
            "content_type": "image/jpeg",
        }
    body = {
        "capture_id": capture_id,
        "halaman": halaman,
        "taken_at": float(taken_at),
        "time_source": time_source,
        "reading": reading,
        "photo": meta,
    }
    ReadingBody.model_validate(body)  # refuse bad input at the kit already
    return body


def photo_chunk_bodies(*, capture_id: str, halaman: int | None, photo: bytes, chunk_bytes: int) -> list[dict]:
    photo_sha = hashlib.sha256(photo).hexdigest()
    count = math.ceil(len(photo) / chunk_bytes)
    out = []
    for i in range(count):
        chunk = photo[i * chunk_bytes : (i + 1) * chunk_bytes]
        out.append(
            {
                "capture_id": capture_id,
                "halaman": halaman,
                "index": i,
                "count": count,
                "photo_sha256": photo_sha,
                "chunk_sha256": hashlib.sha256(chunk).hexdigest(),
                "data": base64.b64encode(chunk).decode("ascii"),
            }
        )
    return out


# --- parsing (collector side) --------------------------------------------------------------------


def parse(payload: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> tuple[Envelope, dict]:
    """Decode and validate the schema (not the signature). Returns (envelope, raw dict)."""
    if len(payload) > max_bytes:
        raise MalformedMessage("too_large", f"{len(payload)} bytes > {max_bytes}")
    try:
        raw = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MalformedMessage("not_json", str(exc)[:100]) from None
    if not isinstance(raw, dict):
        raise MalformedMessage("not_object")
    if "sig" not in raw:
        raise MalformedMessage("unsigned", "no 'sig' field")
    try:
        env = Envelope.model_validate(raw)
        model = BODY_MODELS.get(env.kind)
        if model is not None:
            model.model_validate(env.body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise MalformedMessage("schema", f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    if env.kind in QUEUED_KINDS and env.seq is None:
        raise MalformedMessage("schema", f"kind {env.kind} needs a seq")
    if env.epoch is None:
        env.epoch = 0  # messages without an epoch share epoch 0
    return env, raw


def parse_wire(payload: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Envelope:
    """Like ``parse`` but without building the raw dict (the collector's hot path).

    pydantic parses the bytes in one pass; anything it refuses goes through ``parse`` so that the
    reject reason (not_json, not_object, unsigned, schema) is exactly the same.
    """
    if len(payload) <= max_bytes:
        try:
            env = Envelope.model_validate_json(payload)
            model = BODY_MODELS.get(env.kind)
            if model is not None:
                model.model_validate(env.body)
        except ValidationError:
            pass
        else:
            if env.kind not in QUEUED_KINDS or env.seq is not None:
                if env.epoch is None:
                    env.epoch = 0
                return env
    return parse(payload, max_bytes=max_bytes)[0]


def verify_wire(key: VerifyKey, env: Envelope, payload: bytes) -> bool:
    """``verify`` for an envelope from ``parse_wire``: the raw dict is decoded only on the slow path."""
    needle = b',"sig":"' + env.sig.encode("ascii", errors="replace") + b'"'
    at = payload.find(needle)
    if at > 0 and payload.find(needle, at + 1) < 0:
        # libsodium directly (the checks run in a pool thread: it releases the GIL, little Python around)
        try:
            sig = base64.b64decode(env.sig, validate=True)
            if len(sig) == 64:
                crypto_sign_open(sig + payload[:at] + payload[at + len(needle) :], key.encode())
                return True
        except (BadSignatureError, binascii.Error, ValueError, TypeError):
            pass
    try:
        raw = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(raw, dict) and verify_document(key, raw)


def verify(key: VerifyKey, raw: dict, payload: bytes | None = None) -> bool:
    """Check the envelope's signature.

    Fast path: the wire bytes are canonical JSON, so the signed bytes are the payload with its
    ``,"sig":"..."`` member cut out (``sig`` is never the first key). If that does not verify, the
    canonical JSON is rebuilt from the parsed dict and checked again.
    """
    sig = raw.get("sig")
    if payload is not None and isinstance(sig, str):
        needle = b',"sig":"' + sig.encode("ascii", errors="replace") + b'"'
        if payload.count(needle) == 1 and verify_bytes(key, payload.replace(needle, b""), sig):
            return True
    return verify_document(key, raw)


def decode_chunk(body: dict) -> bytes:
    """The bytes of a photo chunk, checked against its own SHA-256."""
    try:
        data = base64.b64decode(body["data"], validate=True)
    except (binascii.Error, ValueError, KeyError):
        raise MalformedMessage("bad_chunk", "data is not base64") from None
    if hashlib.sha256(data).hexdigest() != body.get("chunk_sha256"):
        raise MalformedMessage("bad_chunk", "chunk_sha256 does not match the data")
    return data


# --- packs (several signed envelopes in one MQTT message) -----------------------------------------


def pack(envelopes: list[bytes]) -> bytes:
    """One MQTT payload carrying these envelopes' exact wire bytes (see the module docstring)."""
    if not 1 <= len(envelopes) <= PACK_MAX_COUNT:
        raise ValueError(f"a pack holds 1..{PACK_MAX_COUNT} envelopes, not {len(envelopes)}")
    if any(b"\n" in e for e in envelopes):
        raise ValueError("an envelope in a pack must not contain a newline (use canonical JSON)")
    head = _PACK_HEAD + b"%d" % len(envelopes) + _PACK_TAIL
    return b"\n".join([head, *envelopes])


def pack_overhead(count: int) -> int:
    """Bytes a pack of *count* envelopes adds to their own sizes (header and newlines)."""
    return len(_PACK_HEAD) + len(str(count)) + len(_PACK_TAIL) + count


def is_pack(payload: bytes) -> bool:
    """True if *payload* is framed as a pack (a single envelope starts with ``{"body":``)."""
    return payload.startswith(_PACK_HEAD)


def unpack(payload: bytes) -> list[bytes]:
    """The envelopes of a pack, in order (their wire bytes; each still needs every check).

    Raises MalformedMessage("bad_pack", …) if the framing is wrong: unknown version, count that does not
    match, too large. Nothing of a bad pack is taken.
    """
    if len(payload) > PACK_MAX_BYTES:
        raise MalformedMessage("bad_pack", f"{len(payload)} bytes > {PACK_MAX_BYTES}")
    head, _, rest = payload.partition(b"\n")
    try:
        meta = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise MalformedMessage("bad_pack", "header is not JSON") from None
    if (
        not isinstance(meta, dict)
        or meta.get("kind") != "pack"
        or meta.get("v") != PACK_VERSION
        or not isinstance(meta.get("count"), int)
        or set(meta) != {"count", "kind", "v"}
    ):
        raise MalformedMessage("bad_pack", f"header must be {{count, kind: pack, v: {PACK_VERSION}}}")
    parts = rest.split(b"\n") if rest else []
    if len(parts) != meta["count"] or not 1 <= len(parts) <= PACK_MAX_COUNT:
        raise MalformedMessage("bad_pack", f"header says {meta['count']} envelopes, found {len(parts)}")
    return parts


def ack_payload(ids: list[str], *, collector: str, at: float, key: SigningKey | None = None) -> bytes:
    doc = {"v": 1, "kind": "ack", "ids": list(ids), "collector": collector, "at": at}
    return canonical_json(sign_document(key, doc) if key is not None else doc)


def parse_ack(payload: bytes, *, keys: list[VerifyKey] | None = None) -> list[str]:
    """The acked ids. With *keys* (the collectors' public keys) the ack must be signed by one of them."""
    try:
        ack = Ack.model_validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage("bad_ack", str(exc.errors()[0]["msg"])) from None
    if keys:
        doc = json.loads(payload)
        if not any(verify_document(k, doc) for k in keys):
            raise MalformedMessage("bad_ack_signature", "ack not signed by a known collector key")
    return ack.ids


def json_schema() -> dict:
    """JSON Schema of the envelope and bodies (for docs/payloads.md)."""
    return {
        name: m.model_json_schema()
        for name, m in (
            ("envelope", Envelope),
            ("reading", ReadingBody),
            ("photo", PhotoChunkBody),
            ("status", StatusBody),
            ("ack", Ack),
        )
    }
