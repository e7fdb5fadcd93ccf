"""The collector's storage: stateless message checks (``precheck``) and the database (``CollectorStore``).

Storage is SQLite (WAL, synchronous=FULL). PostgreSQL is not implemented yet (``CollectorStore`` is the one
class to port).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from comms import payloads, topics
from comms.outbox import connect
from comms.signing import KitEntry

log = logging.getLogger("tpskit.comms.collector")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY, kit_id TEXT NOT NULL, epoch INTEGER, seq INTEGER, kind TEXT NOT NULL,
    digest TEXT NOT NULL,
    topic TEXT NOT NULL, created_at REAL, received_at REAL NOT NULL, payload BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS messages_kit_seq ON messages(kit_id, epoch, seq) WHERE seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS readings (
    message_id TEXT PRIMARY KEY, kit_id TEXT NOT NULL, kode_wilayah TEXT NOT NULL, tps INTEGER NOT NULL,
    capture_id TEXT NOT NULL, halaman INTEGER, seq INTEGER NOT NULL, taken_at REAL, time_source TEXT,
    reading TEXT NOT NULL, photo_sha256 TEXT, photo_bytes INTEGER, photo_chunks INTEGER,
    created_at REAL, received_at REAL NOT NULL, UNIQUE(kit_id, capture_id));
CREATE TABLE IF NOT EXISTS photo_chunks (
    kit_id TEXT NOT NULL, capture_id TEXT NOT NULL, idx INTEGER NOT NULL, count INTEGER NOT NULL,
    photo_sha256 TEXT NOT NULL, data BLOB NOT NULL, message_id TEXT NOT NULL,
    PRIMARY KEY (kit_id, capture_id, idx));
CREATE TABLE IF NOT EXISTS photos (
    kit_id TEXT NOT NULL, capture_id TEXT NOT NULL, sha256 TEXT NOT NULL, bytes INTEGER NOT NULL,
    jpeg BLOB NOT NULL, completed_at REAL NOT NULL, PRIMARY KEY (kit_id, capture_id));
CREATE TABLE IF NOT EXISTS kit_readiness (
    kit_id TEXT PRIMARY KEY, kode_wilayah TEXT NOT NULL, tps INTEGER NOT NULL, message_id TEXT NOT NULL,
    seq INTEGER, created_at REAL, received_at REAL NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kit_heartbeat (
    kit_id TEXT PRIMARY KEY, kode_wilayah TEXT NOT NULL, tps INTEGER NOT NULL, created_at REAL,
    received_at REAL NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kit_status (
    kit_id TEXT PRIMARY KEY, kode_wilayah TEXT NOT NULL, tps INTEGER NOT NULL, state TEXT NOT NULL,
    reason TEXT, created_at REAL, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rejects (
    id INTEGER PRIMARY KEY AUTOINCREMENT, received_at REAL NOT NULL, topic TEXT, reason TEXT NOT NULL,
    detail TEXT, kit_id TEXT, message_id TEXT, payload_head BLOB);
"""

ACKED_KINDS = ("reading", "photo", "readiness")


@dataclass
class Outcome:
    """What happened to one message: stored, duplicate, latest (non-queued kinds), stale or rejected."""

    status: str
    reason: str = ""
    msg_id: str | None = None
    kit_id: str | None = None
    kode_wilayah: str | None = None
    tps: int | None = None
    kind: str | None = None

    @property
    def ack(self) -> bool:
        return self.status in ("stored", "duplicate") and self.kind in ACKED_KINDS


@dataclass
class Checked:
    """Result of the stateless checks of one message (``precheck``)."""

    topic: str
    payload: bytes
    env: payloads.Envelope | None = None
    reject: tuple | None = None  # (reason, detail, kit_id, message_id)
    ignored: bool = False


def precheck(prefix: str, topic: str, payload: bytes, registry: dict[str, KitEntry]) -> Checked:
    """Topic, schema, registered kit, TPS and Ed25519 signature; no database. Thread-safe.

    Signature checks dominate the collector's CPU (libsodium, ~60-90 µs per message on the 2-core
    bench box); libsodium releases the GIL, so batches are checked by a small thread pool before they
    are stored in order. The envelope is parsed once (pydantic from the bytes, no raw dict).
    """
    try:
        parts = topics.parse_topic(prefix, topic)
    except ValueError as exc:
        return Checked(topic, payload, reject=("bad_topic", str(exc), None, None))
    if parts.kind == topics.ACK:
        return Checked(topic, payload, ignored=True)
    try:
        env = payloads.parse_wire(payload)
    except payloads.MalformedMessage as exc:
        return Checked(topic, payload, reject=(exc.reason, exc.detail, None, None))
    ids = (env.kit_id, env.id)
    kit = registry.get(env.kit_id)
    if kit is None:
        return Checked(topic, payload, env, ("unknown_kit", "kit not in the registry", *ids))
    if env.kind != parts.kind or env.kode_wilayah != parts.kode_wilayah or env.tps != parts.tps:
        detail = f"message {env.kind} {env.kode_wilayah}/{env.tps} on topic {topic}"
        return Checked(topic, payload, env, ("topic_mismatch", detail, *ids))
    if (kit.kode_wilayah and kit.kode_wilayah != env.kode_wilayah) or (kit.tps and kit.tps != env.tps):
        detail = f"kit registered for {kit.kode_wilayah}/{kit.tps}"
        return Checked(topic, payload, env, ("wrong_tps", detail, *ids))
    if not payloads.verify_wire(kit.public_key, env, payload):
        return Checked(topic, payload, env, ("bad_signature", "Ed25519 verification failed", *ids))
    if not env.id.startswith(env.kit_id + ":"):
        return Checked(topic, payload, env, ("schema", "id must start with '<kit_id>:'", *ids))
    return Checked(topic, payload, env)


class CollectorStore:
    """The collector's SQLite database; ``process`` validates and stores one message (call within a batch)."""

    def __init__(self, path: Path | str, *, prefix: str = topics.DEFAULT_PREFIX):
        self.path = Path(path)
        self.prefix = prefix.strip("/")
        self.conn = connect(self.path)
        self.conn.executescript(SCHEMA)
        self.max_seq: dict[tuple[str, int], int] = {
            (k, e): s
            for k, e, s in self.conn.execute(
                "SELECT kit_id, epoch, MAX(seq) FROM messages WHERE seq IS NOT NULL GROUP BY kit_id, epoch"
            )
        }

    # --- batches --------------------------------------------------------------------------------------
    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()

    # --- processing -----------------------------------------------------------------------------------
    def _reject(
        self,
        now: float,
        topic: str,
        payload: bytes,
        reason: str,
        detail: str = "",
        kit_id: str | None = None,
        msg_id: str | None = None,
    ) -> Outcome:
        log.warning("rejected message on %s: %s %s (kit %s, id %s)", topic, reason, detail, kit_id, msg_id)
        self.conn.execute(
            "INSERT INTO rejects (received_at, topic, reason, detail, kit_id, message_id, payload_head) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (now, topic, reason, detail[:500], kit_id, msg_id, payload[:512]),
        )
        return Outcome("rejected", reason, msg_id, kit_id)

    def process(
        self, topic: str, payload: bytes, registry: dict[str, KitEntry], *, now: float | None = None
    ) -> Outcome:
        """Check and store one message (inside a batch: begin() … commit())."""
        return self.store(precheck(self.prefix, topic, payload, registry), now=now)

    def store(self, checked: Checked, *, now: float | None = None) -> Outcome:
        """Store a message that went through ``precheck`` (rejections are recorded here)."""
        now = now if now is not None else time.time()
        topic, payload = checked.topic, checked.payload
        if checked.ignored:
            return Outcome("ignored", "ack")
        if checked.reject is not None:
            return self._reject(now, topic, payload, *checked.reject)
        env = checked.env
        base = Outcome("stored", "", env.id, env.kit_id, env.kode_wilayah, env.tps, env.kind)
        if env.kind == "heartbeat":
            return self._latest(base, "kit_heartbeat", env, now, {"body": json.dumps(env.body)})
        if env.kind == "status":
            return self._latest(
                base, "kit_status", env, now, {"state": env.body["state"], "reason": env.body.get("reason")}
            )
        return self._store_queued(base, env, topic, payload, now)

    def _latest(self, base: Outcome, table: str, env, now: float, cols: dict) -> Outcome:
        row = self.conn.execute(f"SELECT created_at FROM {table} WHERE kit_id = ?", (env.kit_id,)).fetchone()
        # The last will (offline/lost) is built when the kit connects, with the same created_at as that
        # session's online status: on a tie, offline wins.
        tie_ok = table == "kit_status" and cols.get("state") == "offline"
        if (
            row is not None
            and row[0] is not None
            and (row[0] > env.created_at or (row[0] == env.created_at and not tie_ok))
        ):
            base.status, base.reason = "stale", "older than the stored one"
            return base
        names = ["kit_id", "kode_wilayah", "tps", "created_at", "received_at", *cols]
        values = [env.kit_id, env.kode_wilayah, env.tps, env.created_at, now, *cols.values()]
        self.conn.execute(
            f"INSERT OR REPLACE INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            values,
        )
        base.status = "latest"
        return base

    def _store_queued(self, base: Outcome, env, topic: str, payload: bytes, now: float) -> Outcome:
        digest = hashlib.sha256(payload).hexdigest()
        ids = (env.kit_id, env.id)
        body = env.body
        if env.kind == "photo":
            try:
                data = payloads.decode_chunk(body)
            except payloads.MalformedMessage as exc:
                return self._reject(now, topic, payload, exc.reason, exc.detail, *ids)
            if body["index"] >= body["count"]:
                return self._reject(now, topic, payload, "bad_chunk", "index >= count", *ids)
        reading_new = False
        if env.kind == "reading":
            # Insert the readings row first (the common case: one statement, no look-up); it is taken
            # back below if the message turns out to be a replay.
            photo = body.get("photo") or {}
            reading_new = self._insert_reading(env, body, photo, now)
            if not reading_new:
                dup = self.conn.execute(
                    "SELECT message_id FROM readings WHERE kit_id = ? AND capture_id = ?",
                    (env.kit_id, body["capture_id"]),
                ).fetchone()
                if dup is None:  # not a uniqueness conflict: fail the batch as a plain INSERT would
                    raise sqlite3.IntegrityError(f"readings row for {env.id} refused")
                if dup[0] != env.id:
                    detail = f"capture {body['capture_id']} already stored as {dup[0]}"
                    return self._reject(now, topic, payload, "replayed_capture", detail, *ids)
        # Insert first (the common case); a conflict on the id or on (kit, epoch, seq) is classified after.
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO messages (id, kit_id, epoch, seq, kind, digest, topic, created_at, "
            "received_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (env.id, env.kit_id, env.epoch, env.seq, env.kind, digest, topic, env.created_at, now, payload),
        )
        if cur.rowcount == 0:
            if reading_new:
                self.conn.execute("DELETE FROM readings WHERE message_id = ?", (env.id,))
            row = self.conn.execute("SELECT digest FROM messages WHERE id = ?", (env.id,)).fetchone()
            if row is not None and row[0] == digest:
                base.status = "duplicate"
                return base
            if row is not None:
                return self._reject(
                    now, topic, payload, "replayed_id", "id already stored with other content", *ids
                )
            other = self.conn.execute(
                "SELECT id FROM messages WHERE kit_id = ? AND epoch = ? AND seq = ?",
                (env.kit_id, env.epoch, env.seq),
            ).fetchone()
            detail = f"seq {env.seq} already used by {other[0] if other else '?'}"
            return self._reject(now, topic, payload, "replayed_seq", detail, *ids)
        prev = self.max_seq.get((env.kit_id, env.epoch), 0)
        if env.seq > prev + 1:
            log.info(
                "kit %s: sequence gap, got %d after %d (photo chunks follow numbers; may still come)",
                env.kit_id,
                env.seq,
                prev,
            )
        if env.kind == "reading":
            if photo:
                self._maybe_assemble(env.kit_id, body["capture_id"], now)
        elif env.kind == "photo":
            self.conn.execute(
                "INSERT OR IGNORE INTO photo_chunks (kit_id, capture_id, idx, count, photo_sha256, data, "
                "message_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    env.kit_id,
                    body["capture_id"],
                    body["index"],
                    body["count"],
                    body["photo_sha256"],
                    data,
                    env.id,
                ),
            )
            self._maybe_assemble(env.kit_id, body["capture_id"], now)
        elif env.kind == "readiness":
            cur = self.conn.execute(
                "SELECT created_at FROM kit_readiness WHERE kit_id = ?", (env.kit_id,)
            ).fetchone()
            if cur is None or (cur[0] or 0) < env.created_at:
                self.conn.execute(
                    "INSERT OR REPLACE INTO kit_readiness (kit_id, kode_wilayah, tps, message_id, seq, "
                    "created_at, "
                    "received_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        env.kit_id,
                        env.kode_wilayah,
                        env.tps,
                        env.id,
                        env.seq,
                        env.created_at,
                        now,
                        json.dumps(body, ensure_ascii=False),
                    ),
                )
        self.max_seq[(env.kit_id, env.epoch)] = max(prev, env.seq)
        return base

    def _insert_reading(self, env, body: dict, photo: dict, now: float) -> bool:
        """Insert the readings row; False if (message id) or (kit, capture) is already there."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO readings (message_id, kit_id, kode_wilayah, tps, capture_id, halaman, "
            "seq, taken_at, time_source, reading, photo_sha256, photo_bytes, photo_chunks, created_at, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                env.id,
                env.kit_id,
                env.kode_wilayah,
                env.tps,
                body["capture_id"],
                body.get("halaman"),
                env.seq,
                body["taken_at"],
                body["time_source"],
                json.dumps(body["reading"], ensure_ascii=False),
                photo.get("sha256"),
                photo.get("bytes"),
                photo.get("chunks"),
                env.created_at,
                now,
            ),
        )
        return cur.rowcount == 1

    def _maybe_assemble(self, kit_id: str, capture_id: str, now: float) -> None:
        if self.conn.execute(
            "SELECT 1 FROM photos WHERE kit_id = ? AND capture_id = ?", (kit_id, capture_id)
        ).fetchone():
            return
        meta = self.conn.execute(
            "SELECT photo_sha256, photo_bytes, photo_chunks FROM readings "
            "WHERE kit_id = ? AND capture_id = ?",
            (kit_id, capture_id),
        ).fetchone()
        if meta is None or meta[0] is None:
            return
        sha, size, count = meta
        n = self.conn.execute(
            "SELECT COUNT(*) FROM photo_chunks WHERE kit_id = ? AND capture_id = ? AND photo_sha256 = ?",
            (kit_id, capture_id, sha),
        ).fetchone()[0]
        if n < count:
            return
        jpeg = b"".join(
            r[0]
            for r in self.conn.execute(
                "SELECT data FROM photo_chunks WHERE kit_id = ? AND capture_id = ? AND photo_sha256 = ? "
                "ORDER BY idx",
                (kit_id, capture_id, sha),
            )
        )
        if len(jpeg) != size or hashlib.sha256(jpeg).hexdigest() != sha:
            log.error("kit %s capture %s: assembled photo does not match its SHA-256", kit_id, capture_id)
            return
        self.conn.execute(
            "INSERT INTO photos (kit_id, capture_id, sha256, bytes, jpeg, completed_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (kit_id, capture_id, sha, size, jpeg, now),
        )
        self.conn.execute(
            "DELETE FROM photo_chunks WHERE kit_id = ? AND capture_id = ?", (kit_id, capture_id)
        )

    # --- queries --------------------------------------------------------------------------------------
    def gaps(self, kit_id: str) -> list[tuple[int, int]]:
        """Missing sequence ranges (inclusive) below the highest seq seen from this kit, per epoch."""
        out, epoch, expect = [], None, 1
        for e, s in self.conn.execute(
            "SELECT epoch, seq FROM messages WHERE kit_id = ? AND seq IS NOT NULL ORDER BY epoch, seq",
            (kit_id,),
        ):
            if e != epoch:
                epoch, expect = e, 1
            if s > expect:
                out.append((expect, s - 1))
            expect = s + 1
        return out

    def counts(self) -> dict:
        q = self.conn.execute
        return {
            "messages": q("SELECT COUNT(*) FROM messages").fetchone()[0],
            "readings": q("SELECT COUNT(*) FROM readings").fetchone()[0],
            "photos": q("SELECT COUNT(*) FROM photos").fetchone()[0],
            "rejects": q("SELECT COUNT(*) FROM rejects").fetchone()[0],
        }


def open_store(path: Path | str) -> sqlite3.Connection:
    """A read connection to a collector DB (for reports, fleet readiness)."""
    return connect(path)
