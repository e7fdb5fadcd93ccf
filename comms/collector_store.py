"""The collector's storage: stateless message checks (``precheck``) and the database (``CollectorStore``).

Two backends, one copy of the storage logic:

- SQLite (default; ``--db`` is a file path): WAL, synchronous=FULL, one writer.
- PostgreSQL (``--db postgresql://user@host:port/dbname``, libpq URL; psycopg 3): several collectors may
  write to one database at once. The password comes from libpq's usual places (``~/.pgpass``,
  ``PGPASSFILE``, ``passfile=`` in the URL, ``PGPASSWORD``), never from the command line.

What differs between them is a small ``Dialect`` (placeholders, ``BEGIN IMMEDIATE`` vs ``BEGIN``, column
types, whether several writers run at once). Both speak ``INSERT … ON CONFLICT DO NOTHING`` and
``ON CONFLICT (…) DO UPDATE … WHERE`` upserts, so every statement is written once. A batch is one
transaction; ``commit`` returns only when it is durable (PostgreSQL: ``synchronous_commit=on`` is forced per
session). A lost PostgreSQL connection fails the batch (nothing acked, the kits resend) and the next
``begin`` reconnects.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path, PurePath

from comms import payloads, topics
from comms.outbox import connect, connect_reading
from comms.signing import KitEntry

log = logging.getLogger("tpskit.comms.collector")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY, kit_id TEXT NOT NULL, epoch {bigint}, seq INTEGER, kind TEXT NOT NULL,
    digest TEXT NOT NULL,
    topic TEXT NOT NULL, created_at {real}, received_at {real} NOT NULL, payload {blob} NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS messages_kit_seq ON messages(kit_id, epoch, seq) WHERE seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS readings (
    message_id TEXT PRIMARY KEY, kit_id TEXT NOT NULL, kode_wilayah TEXT NOT NULL, tps INTEGER NOT NULL,
    capture_id TEXT NOT NULL, halaman INTEGER, seq INTEGER NOT NULL, taken_at {real}, time_source TEXT,
    reading TEXT NOT NULL, photo_sha256 TEXT, photo_bytes INTEGER, photo_chunks INTEGER,
    created_at {real}, received_at {real} NOT NULL, UNIQUE(kit_id, capture_id));
CREATE TABLE IF NOT EXISTS photo_chunks (
    kit_id TEXT NOT NULL, capture_id TEXT NOT NULL, idx INTEGER NOT NULL, count INTEGER NOT NULL,
    photo_sha256 TEXT NOT NULL, data {blob} NOT NULL, message_id TEXT NOT NULL,
    PRIMARY KEY (kit_id, capture_id, idx));
CREATE TABLE IF NOT EXISTS photos (
    kit_id TEXT NOT NULL, capture_id TEXT NOT NULL, sha256 TEXT NOT NULL, bytes INTEGER NOT NULL,
    jpeg {blob} NOT NULL, completed_at {real} NOT NULL, PRIMARY KEY (kit_id, capture_id));
CREATE TABLE IF NOT EXISTS kit_readiness (
    kit_id TEXT PRIMARY KEY, kode_wilayah TEXT NOT NULL, tps INTEGER NOT NULL, message_id TEXT NOT NULL,
    seq INTEGER, created_at {real}, received_at {real} NOT NULL, body TEXT NOT NULL, epoch {bigint});
CREATE TABLE IF NOT EXISTS kit_heartbeat (
    kit_id TEXT PRIMARY KEY, kode_wilayah TEXT NOT NULL, tps INTEGER NOT NULL, created_at {real},
    received_at {real} NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kit_status (
    kit_id TEXT PRIMARY KEY, kode_wilayah TEXT NOT NULL, tps INTEGER NOT NULL, state TEXT NOT NULL,
    reason TEXT, created_at {real}, received_at {real} NOT NULL, epoch {bigint}, session INTEGER);
CREATE TABLE IF NOT EXISTS rejects (
    id {serial}, received_at {real} NOT NULL, topic TEXT, reason TEXT NOT NULL,
    detail TEXT, kit_id TEXT, message_id TEXT, payload_head {blob});
"""

# Columns added since the tables were first created: (table, column, type); added to older databases at start.
ADDED_COLUMNS = (
    ("kit_readiness", "epoch", "{bigint}"),
    ("kit_status", "epoch", "{bigint}"),
    ("kit_status", "session", "INTEGER"),
)

# Which of a kit's readiness / status messages is the newest. The kit's clock may run behind after a power
# cut (no RTC), so within one epoch (one outbox database) the kit's own counters decide: the readiness seq,
# the status session (a session's online comes before its offline). The clock decides only across epochs
# (a replaced database) and for messages without them (older kits). The last will (offline/lost) is built
# when the kit connects, with the same created_at as that session's online: on a clock tie, offline wins.
READINESS_NEWER = (
    "CASE WHEN kit_readiness.epoch = excluded.epoch THEN kit_readiness.seq < excluded.seq "
    "ELSE COALESCE(kit_readiness.created_at, 0) < excluded.created_at END"
)
STATUS_NEWER = (
    "CASE WHEN kit_status.epoch = excluded.epoch AND kit_status.session IS NOT NULL "
    "AND excluded.session IS NOT NULL "
    "THEN (kit_status.session < excluded.session OR (kit_status.session = excluded.session "
    "AND kit_status.state = 'online' AND excluded.state = 'offline')) "
    "ELSE (kit_status.created_at IS NULL OR kit_status.created_at < excluded.created_at "
    "OR (excluded.state = 'offline' AND kit_status.created_at = excluded.created_at)) END"
)
HEARTBEAT_NEWER = "kit_heartbeat.created_at IS NULL OR kit_heartbeat.created_at < excluded.created_at"

POSTGRES_SCHEMES = ("postgresql:", "postgres:")


class StoreError(RuntimeError):
    """The database refused a batch in a way the store cannot classify (the batch is rolled back)."""


class StoreUnavailable(ConnectionError):
    """The collector database cannot be reached (PostgreSQL down, wrong URL or password)."""


@dataclass(frozen=True)
class Dialect:
    """What differs between SQLite and PostgreSQL; the storage logic is written once on top of it."""

    name: str
    begin: str
    types: dict
    placeholder: str
    concurrent_writers: bool  # several collectors write at once (READ COMMITTED): finish photos after commit
    schema_lock: str | None = None  # serialises CREATE … IF NOT EXISTS between collectors starting together

    def prepare(self, sql: str, params: tuple) -> tuple[str, tuple | None]:
        if self.placeholder == "?":
            return sql, params
        # PostgreSQL text cannot hold NUL; only a malformed (rejected) message can carry one into a column.
        return _pg_sql(sql), tuple(
            p.replace("\x00", "\ufffd") if isinstance(p, str) and "\x00" in p else p for p in params
        ) or None


SQLITE = Dialect(
    "sqlite",
    "BEGIN IMMEDIATE",
    dict(real="REAL", bigint="INTEGER", blob="BLOB", serial="INTEGER PRIMARY KEY AUTOINCREMENT"),
    "?",
    concurrent_writers=False,
)
POSTGRES = Dialect(
    "postgresql",
    "BEGIN",
    dict(
        real="DOUBLE PRECISION",
        bigint="BIGINT",
        blob="BYTEA",
        serial="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    ),
    "%s",
    concurrent_writers=True,
    schema_lock="SELECT pg_advisory_xact_lock(7100202411)",
)


@functools.lru_cache(maxsize=256)
def _pg_sql(sql: str) -> str:
    return sql.replace("?", "%s")  # no statement here has '?' or '%' inside a literal


def is_postgres(target: Path | str) -> bool:
    """True if ``target`` (``--db``) names a PostgreSQL database (``postgresql://…`` URL)."""
    return os.fspath(target).startswith(POSTGRES_SCHEMES)


def postgres_url(target: Path | str) -> str:
    """The libpq URL in ``target``; repairs ``postgresql:/host/db`` (a URL that went through ``Path()``)."""
    text = os.fspath(target)
    m = re.match(r"(postgres(?:ql)?):/(?!/)(.*)", text, re.S)
    if m and isinstance(target, PurePath):
        return f"{m.group(1)}://{m.group(2)}"
    return text


def survives_path(url: str) -> bool:
    """Whether ``Path(url)`` (what ``Collector`` keeps) still gives the same URL after ``postgres_url``."""
    return postgres_url(Path(url)) == url


def describe(target: Path | str) -> str:
    """The database for log lines and errors, without any password."""
    if not is_postgres(target):
        return os.fspath(target)
    try:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(postgres_url(target))
    except Exception:  # noqa: BLE001 - unparsable URL: say so without echoing it
        return "postgresql://(URL tidak terbaca / unreadable URL)"
    user = f"{info['user']}@" if info.get("user") else ""
    host, port = info.get("host", "localhost"), info.get("port", "5432")
    return f"postgresql://{user}{host}:{port}/{info.get('dbname', '')}"


def _connect_postgres(url: str, *, read_only: bool = False, connect_timeout_s: int = 10):
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError as exc:
        raise StoreUnavailable(
            "PostgreSQL storage needs psycopg 3: pip install 'tpskit[postgres]' (or psycopg[binary])"
        ) from exc
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise StoreUnavailable(f"--db is not a valid PostgreSQL URL: {exc}") from None
    params.setdefault("connect_timeout", connect_timeout_s)
    params.setdefault("application_name", "tpskit-collector")
    try:
        conn = psycopg.connect(autocommit=True, **params)
        # durability does not depend on the server's default: COMMIT returns once the WAL is flushed
        conn.execute("SET synchronous_commit TO on")
        if read_only:
            conn.execute("SET default_transaction_read_only TO on")
    except psycopg.Error as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreUnavailable(
            f"PostgreSQL {describe(url)} unreachable: {detail} (check the server, the URL and the password "
            "in ~/.pgpass / PGPASSFILE / passfile=)"
        ) from None
    return conn


def _denied(dialect: Dialect) -> tuple[type[BaseException], ...]:
    if dialect is SQLITE:
        return ()
    import psycopg

    return (psycopg.errors.InsufficientPrivilege,)


def _undefined(dialect: Dialect) -> tuple[type[BaseException], ...]:
    if dialect is SQLITE:
        return ()
    import psycopg

    return (psycopg.errors.UndefinedTable,)


def _connection_errors(dialect: Dialect) -> tuple[type[BaseException], ...]:
    if dialect is SQLITE:
        return ()
    import psycopg

    return (psycopg.OperationalError, psycopg.InterfaceError)


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


# every envelope of a pack has the pack's topic: parsed once (a bad topic raises, and is not cached)
_topic_parts = functools.lru_cache(maxsize=4096)(topics.parse_topic)


# A JSON escape of a UTF-16 surrogate; paired ones (an emoji written escaped) are text, a lone one is not.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _storable_text(value) -> bool:
    """Whether every string of an envelope (or one value) is UTF-8 text (what the database columns hold)."""
    if isinstance(value, payloads.Envelope):
        value = [value.id, value.body]
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def precheck(prefix: str, topic: str, payload: bytes, registry: dict[str, KitEntry]) -> Checked:
    """Topic, schema, registered kit, TPS and Ed25519 signature; no database. Thread-safe.

    Signature checks dominate the collector's CPU (libsodium, ~60-90 µs per message on the 2-core
    bench box). The envelope is parsed once (pydantic from the bytes, no raw dict); the topic of a pack
    is parsed once for all its envelopes.
    """
    try:
        parts = _topic_parts(prefix, topic)
    except ValueError as exc:
        return Checked(topic, payload, reject=("bad_topic", str(exc), None, None))
    if parts.kind == topics.ACK:
        return Checked(topic, payload, ignored=True)
    try:
        env = payloads.parse_wire(payload)
    except payloads.MalformedMessage as exc:
        return Checked(topic, payload, reject=(exc.reason, exc.detail, None, None))
    # a lone surrogate (\ud800) is no UTF-8 text: no database column takes it, the insert would raise and
    # fail the whole batch (every kit's readings in it); its id is not recorded with a reject either
    text_ok = not _SURROGATE_ESCAPE.search(payload) or _storable_text(env)
    ids = (env.kit_id, env.id if text_ok or _storable_text(env.id) else None)
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
    if not text_ok:
        detail = "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff): not UTF-8 text"
        return Checked(topic, payload, env, ("schema", detail, *ids))
    if not math.isfinite(env.created_at) or (
        env.kind == "reading" and not math.isfinite(float(env.body["taken_at"]))
    ):
        # SQLite stores NaN as NULL, PostgreSQL above every number: "newest" would differ per backend, and an
        # Infinity would stay the newest for ever
        return Checked(topic, payload, env, ("schema", "a time is NaN or infinite", *ids))
    if not env.id.startswith(env.kit_id + ":"):
        return Checked(topic, payload, env, ("schema", "id must start with '<kit_id>:'", *ids))
    return Checked(topic, payload, env)


INSERT_READING = (
    "INSERT INTO readings (message_id, kit_id, kode_wilayah, tps, capture_id, halaman, "
    "seq, taken_at, time_source, reading, photo_sha256, photo_bytes, photo_chunks, created_at, "
    "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
INSERT_MESSAGE = (
    "INSERT INTO messages (id, kit_id, epoch, seq, kind, digest, topic, created_at, "
    "received_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)


_READING_JSON = json.JSONEncoder(ensure_ascii=False).encode  # = json.dumps(…, ensure_ascii=False)


def _reading_row(env, body: dict, photo: dict, now: float) -> tuple:
    return (
        env.id,
        env.kit_id,
        env.kode_wilayah,
        env.tps,
        body["capture_id"],
        body.get("halaman"),
        env.seq,
        float(body["taken_at"]),  # validated as a float, but the raw JSON may hold an int (2**64)
        body["time_source"],
        _READING_JSON(body["reading"]),
        photo.get("sha256"),
        photo.get("bytes"),
        photo.get("chunks"),
        env.created_at,
        now,
    )


def _message_row(env, topic: str, payload: bytes, now: float, digest: str | None = None) -> tuple:
    digest = digest or hashlib.sha256(payload).hexdigest()
    return (env.id, env.kit_id, env.epoch, env.seq, env.kind, digest, topic, env.created_at, now, payload)


def _plain_reading(c: Checked) -> bool:
    """A checked reading that ``CollectorStore.store_many`` may insert together with its neighbours."""
    return c.reject is None and not c.ignored and c.env.kind == "reading"


class CollectorStore:
    """The collector's database; ``process`` validates and stores one message (call within a batch).

    ``path`` is a SQLite file or a PostgreSQL URL (``postgresql://user@host:port/dbname``; a ``Path`` made
    from such a URL is understood too). ``reconnect_timeout_s``: how long ``begin`` keeps retrying a lost
    PostgreSQL connection before it raises ``StoreUnavailable`` (None = until it is back; nothing is acked
    meanwhile).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        prefix: str = topics.DEFAULT_PREFIX,
        reconnect_timeout_s: float | None = None,
        reconnect_max_s: float = 5.0,
    ):
        self.dialect = POSTGRES if is_postgres(path) else SQLITE
        self.url = postgres_url(path) if self.dialect is POSTGRES else None
        self.path = None if self.url else Path(path)
        self.prefix = prefix.strip("/")
        self.reconnect_timeout_s, self.reconnect_max_s = reconnect_timeout_s, reconnect_max_s
        self._lost = _connection_errors(self.dialect)
        self._unfinished: set[tuple[str, str]] = set()  # photos another collector may be completing
        self.conn = None
        self._connect()
        self.max_seq: dict[tuple[str, int], int] = {
            (k, e): s
            for k, e, s in self._x(
                "SELECT kit_id, epoch, MAX(seq) FROM messages WHERE seq IS NOT NULL GROUP BY kit_id, epoch"
            )
        }
        if self.dialect.concurrent_writers:  # photos left unfinished by a crash or a lost connection
            self._finish_photos(set(self._x("SELECT DISTINCT kit_id, capture_id FROM photo_chunks")))

    def __repr__(self) -> str:
        return f"CollectorStore({describe(self.url or self.path)!r})"

    # --- connection -----------------------------------------------------------------------------------
    def _connect(self) -> None:
        self.conn = _connect_postgres(self.url) if self.url else connect(self.path)
        schema = SCHEMA.format(**self.dialect.types)
        self._x(self.dialect.begin)
        try:
            if self.dialect.schema_lock:
                self._x(self.dialect.schema_lock)
            for stmt in filter(None, (s.strip() for s in schema.split(";"))):
                self._x(stmt)
            for table, column, sqltype in ADDED_COLUMNS:
                if column not in self._columns(table):
                    self._x(f"ALTER TABLE {table} ADD COLUMN {column} {sqltype.format(**self.dialect.types)}")
        except _denied(self.dialect) as exc:  # a role with DML rights only: fine once the tables exist
            self._x("ROLLBACK")
            self._check_tables(exc)
            return
        self._x("COMMIT")
        if self.url:
            log.info("collector database: %s", describe(self.url))

    def _check_tables(self, exc: Exception) -> None:
        missing = []
        for table in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA):
            try:
                self._x(f"SELECT 1 FROM {table} LIMIT 0")
            except _denied(self.dialect) + _undefined(self.dialect):
                missing.append(table)
        missing += [
            f"{table}.{column}" for table, column, _ in ADDED_COLUMNS
            if table not in missing and column not in self._columns(table)
        ]
        if missing:
            self._drop()
            raise StoreUnavailable(
                f"collector database {describe(self.url)}: this role may not create the tables "
                f"({', '.join(missing)}) and they do not exist ({str(exc).splitlines()[0]}); start the "
                "collector once with the database owner's role, or grant it CREATE"
            )

    def _columns(self, table: str) -> set[str]:
        return {d[0] for d in self._x(f"SELECT * FROM {table} LIMIT 0").description}

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - already broken
                pass

    def _x(self, sql: str, params: tuple = ()):
        if self.conn is None:
            self._connect()
        return self.conn.execute(*self.dialect.prepare(sql, params))

    # --- batches --------------------------------------------------------------------------------------
    def begin(self) -> None:
        """Start a batch; on PostgreSQL reconnect first if the connection was lost (retrying with backoff)."""
        self._unfinished.clear()
        started, delay = time.monotonic(), 0.5
        while True:
            try:
                self._x(self.dialect.begin)
                return
            except (StoreUnavailable, *self._lost) as exc:
                self._drop()
                waited = time.monotonic() - started
                if self.reconnect_timeout_s is not None and waited >= self.reconnect_timeout_s:
                    raise StoreUnavailable(
                        f"collector database {describe(self.url)} unreachable for {waited:.0f} s: {exc}"
                    ) from None
                log.error(
                    "collector database unreachable (%s); retrying in %.1f s; nothing is acked meanwhile",
                    exc,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, self.reconnect_max_s)

    def commit(self) -> None:
        """Make the batch durable; raises if it was not (then nothing may be acked)."""
        cur = self._x("COMMIT")
        status = getattr(cur, "statusmessage", "COMMIT")  # PostgreSQL answers ROLLBACK to an aborted batch
        if status != "COMMIT":
            raise StoreError(f"the database answered {status!r} to COMMIT: the batch was not stored")
        if self._unfinished:
            self._finish_photos(self._unfinished)

    def rollback(self) -> None:
        """Undo the batch; after a lost connection only forget it (the next ``begin`` reconnects)."""
        self._unfinished.clear()
        try:
            self._x("ROLLBACK")
        except (StoreUnavailable, *self._lost) as exc:
            log.error("collector database connection lost (%s); reconnecting at the next batch", exc)
            self._drop()

    def close(self) -> None:
        self._drop()

    def _finish_photos(self, keys: set[tuple[str, str]]) -> None:
        """Several writers: a photo whose last chunks were committed by two collectors at once is seen
        complete by neither transaction, so the captures touched by a batch are checked again after it."""
        keys, self._unfinished = sorted(keys), set()
        if not keys:
            return
        try:
            self._x(self.dialect.begin)
            for kit_id, capture_id in keys:
                self._maybe_assemble(kit_id, capture_id, time.time())
            self._x("COMMIT")
        except Exception as exc:  # noqa: BLE001 - the batch itself is committed; retried at the next start
            log.warning("photo assembly after commit not done (%s); retried when the collector restarts", exc)
            self.rollback()

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
        self._x(
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
            body = {"body": json.dumps(env.body)}
            return self._latest(base, "kit_heartbeat", env, now, body, HEARTBEAT_NEWER)
        if env.kind == "status":
            cols = {
                "state": env.body["state"],
                "reason": env.body.get("reason"),
                "epoch": env.epoch,
                "session": env.body.get("session"),
            }
            return self._latest(base, "kit_status", env, now, cols, STATUS_NEWER)
        return self._store_queued(base, env, topic, payload, now)

    def _upsert_newer(self, table: str, cols: dict, newer: str) -> bool:
        """Insert or replace the row of one kit, only if ``newer`` (SQL over the stored row and
        ``excluded``) holds; one statement, so two collectors cannot interleave a read and a write."""
        names = list(cols)
        sets = ", ".join(f"{n} = excluded.{n}" for n in names if n != "kit_id")
        cur = self._x(
            f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
            f"ON CONFLICT (kit_id) DO UPDATE SET {sets} WHERE {newer}",
            tuple(cols.values()),
        )
        return cur.rowcount == 1

    def _latest(self, base: Outcome, table: str, env, now: float, cols: dict, newer: str) -> Outcome:
        row = dict(
            kit_id=env.kit_id,
            kode_wilayah=env.kode_wilayah,
            tps=env.tps,
            created_at=env.created_at,
            received_at=now,
            **cols,
        )
        if not self._upsert_newer(table, row, newer):
            base.status, base.reason = "stale", "older than the stored one"
            return base
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
                dup = self._x(
                    "SELECT message_id FROM readings WHERE kit_id = ? AND capture_id = ?",
                    (env.kit_id, body["capture_id"]),
                ).fetchone()
                if dup is None:  # the id is stored for another capture: classified with the messages row
                    dup = self._x(
                        "SELECT message_id FROM readings WHERE message_id = ?", (env.id,)
                    ).fetchone()
                    if dup is None:
                        raise StoreError(f"readings row for {env.id} refused")
                elif dup[0] != env.id:
                    detail = f"capture {body['capture_id']} already stored as {dup[0]}"
                    return self._reject(now, topic, payload, "replayed_capture", detail, *ids)
        # Insert first (the common case); a conflict on the id or on (kit, epoch, seq) is classified after.
        cur = self._x(INSERT_MESSAGE, _message_row(env, topic, payload, now, digest))
        if cur.rowcount == 0:
            if reading_new:
                self._x("DELETE FROM readings WHERE message_id = ?", (env.id,))
            row = self._x("SELECT digest FROM messages WHERE id = ?", (env.id,)).fetchone()
            if row is not None and row[0] == digest:
                base.status = "duplicate"
                return base
            if row is not None:
                return self._reject(
                    now, topic, payload, "replayed_id", "id already stored with other content", *ids
                )
            other = self._x(
                "SELECT id FROM messages WHERE kit_id = ? AND epoch = ? AND seq = ?",
                (env.kit_id, env.epoch, env.seq),
            ).fetchone()
            detail = f"seq {env.seq} already used by {other[0] if other else '?'}"
            return self._reject(now, topic, payload, "replayed_seq", detail, *ids)
        if env.kind == "reading" and not reading_new:  # id stored for another capture, seq not
            raise StoreError(f"message {env.id} stored without its readings row")
        if env.kind == "reading":
            if photo:
                self._maybe_assemble(env.kit_id, body["capture_id"], now)
        elif env.kind == "photo":
            self._x(
                "INSERT INTO photo_chunks (kit_id, capture_id, idx, count, photo_sha256, data, "
                "message_id) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
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
            row = dict(
                kit_id=env.kit_id,
                kode_wilayah=env.kode_wilayah,
                tps=env.tps,
                message_id=env.id,
                seq=env.seq,
                epoch=env.epoch,
                created_at=env.created_at,
                received_at=now,
                body=json.dumps(body, ensure_ascii=False),
            )
            self._upsert_newer("kit_readiness", row, READINESS_NEWER)
        self._note_seq(env)
        return base

    def _note_seq(self, env) -> None:
        """Track the highest seq per (kit, epoch) of a stored queued message; log a gap below it."""
        key = (env.kit_id, env.epoch)
        prev = self.max_seq.get(key, 0)
        if env.seq > prev + 1:
            log.info(
                "kit %s: sequence gap, got %d after %d (photo chunks follow numbers; may still come)",
                env.kit_id,
                env.seq,
                prev,
            )
        self.max_seq[key] = max(prev, env.seq)

    def _insert_reading(self, env, body: dict, photo: dict, now: float) -> bool:
        """Insert the readings row; False if (message id) or (kit, capture) is already there."""
        return self._x(INSERT_READING, _reading_row(env, body, photo, now)).rowcount == 1

    def _many(self, sql: str, rows: list[tuple]) -> int:
        """``executemany`` on the current transaction; the number of rows changed (-1 if unknown)."""
        sql = self.dialect.prepare(sql, ())[0]
        if self.dialect.placeholder != "?":
            rows = [self.dialect.prepare(sql, r)[1] for r in rows]
        cur = self.conn.cursor()
        try:
            cur.executemany(sql, rows)
            return cur.rowcount
        finally:
            cur.close()

    def store_many(self, checked: list[Checked], *, now: float | None = None) -> list[Outcome]:
        """``store`` for each message of a batch, in order (call within begin() … commit()).

        A run of two or more consecutive checked readings (the common case: a pack) is inserted with one
        ``executemany`` per table inside a savepoint; if any row of the run conflicts (duplicate, replay,
        two readings of one capture) the savepoint is rolled back and the run goes through ``store`` one by
        one, so every outcome and reject is exactly that of ``store``.
        """
        now = now if now is not None else time.time()
        out: list[Outcome] = []
        i, n = 0, len(checked)
        while i < n:
            j = i
            while j < n and _plain_reading(checked[j]):
                j += 1
            if j - i >= 2 and self._store_readings(checked[i:j], now, out):
                i = j
                continue
            j = max(j, i + 1)
            out.extend(self.store(c, now=now) for c in checked[i:j])
            i = j
        return out

    def _store_readings(self, run: list[Checked], now: float, out: list[Outcome]) -> bool:
        """Insert a run of new readings at once; False (nothing kept) if any row was not new."""
        readings, messages = [], []
        for c in run:
            env, body = c.env, c.env.body
            readings.append(_reading_row(env, body, body.get("photo") or {}, now))
            messages.append(_message_row(env, c.topic, c.payload, now))
        self._x("SAVEPOINT tpskit_run")
        if self._many(INSERT_READING, readings) != len(run) or self._many(INSERT_MESSAGE, messages) != len(
            run
        ):
            self._x("ROLLBACK TO SAVEPOINT tpskit_run")
            self._x("RELEASE SAVEPOINT tpskit_run")
            return False
        self._x("RELEASE SAVEPOINT tpskit_run")
        for c in run:
            env = c.env
            if env.body.get("photo"):
                self._maybe_assemble(env.kit_id, env.body["capture_id"], now)
            self._note_seq(env)
            out.append(Outcome("stored", "", env.id, env.kit_id, env.kode_wilayah, env.tps, "reading"))
        return True

    def _maybe_assemble(self, kit_id: str, capture_id: str, now: float) -> None:
        if self._x(
            "SELECT 1 FROM photos WHERE kit_id = ? AND capture_id = ?", (kit_id, capture_id)
        ).fetchone():
            return
        meta = self._x(
            "SELECT photo_sha256, photo_bytes, photo_chunks FROM readings "
            "WHERE kit_id = ? AND capture_id = ?",
            (kit_id, capture_id),
        ).fetchone()
        if meta is None or meta[0] is None:
            if self.dialect.concurrent_writers:
                self._unfinished.add((kit_id, capture_id))
            return
        sha, size, count = meta
        n = self._x(
            "SELECT COUNT(*) FROM photo_chunks WHERE kit_id = ? AND capture_id = ? AND photo_sha256 = ?",
            (kit_id, capture_id, sha),
        ).fetchone()[0]
        if n < count:
            if self.dialect.concurrent_writers:
                self._unfinished.add((kit_id, capture_id))
            return
        jpeg = b"".join(
            bytes(r[0])
            for r in self._x(
                "SELECT data FROM photo_chunks WHERE kit_id = ? AND capture_id = ? AND photo_sha256 = ? "
                "ORDER BY idx",
                (kit_id, capture_id, sha),
            )
        )
        if len(jpeg) != size or hashlib.sha256(jpeg).hexdigest() != sha:
            log.error("kit %s capture %s: assembled photo does not match its SHA-256", kit_id, capture_id)
            return
        self._x(
            "INSERT INTO photos (kit_id, capture_id, sha256, bytes, jpeg, completed_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (kit_id, capture_id, sha, size, jpeg, now),
        )
        self._x("DELETE FROM photo_chunks WHERE kit_id = ? AND capture_id = ?", (kit_id, capture_id))

    # --- queries --------------------------------------------------------------------------------------
    # every stored (queued) message has a seq: the covering (kit_id, epoch, seq) index, not the payloads
    KIT_IDS = "SELECT DISTINCT kit_id FROM messages WHERE seq IS NOT NULL ORDER BY kit_id"

    def kit_ids(self) -> list[str]:
        """Kits with at least one stored queued message."""
        return [r[0] for r in self._x(self.KIT_IDS)]

    def gaps(self, kit_id: str) -> list[tuple[int, int]]:
        """Missing sequence ranges (inclusive) below the highest seq seen from this kit, per epoch."""
        out, epoch, expect = [], None, 1
        for e, s in self._x(
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
        def one(sql: str) -> int:
            return self._x(sql).fetchone()[0]

        return {
            "messages": one("SELECT COUNT(*) FROM messages"),
            "readings": one("SELECT COUNT(*) FROM readings"),
            "photos": one("SELECT COUNT(*) FROM photos"),
            "rejects": one("SELECT COUNT(*) FROM rejects"),
        }


def open_store(path: Path | str):
    """A read connection to a collector DB (for reports, fleet readiness): ``sqlite3.Connection`` for a
    file, a read-only psycopg connection (autocommit) for a ``postgresql://`` URL. Both have
    ``.execute(sql)``; placeholders differ (``?`` / ``%s``)."""
    if is_postgres(path):
        return _connect_postgres(postgres_url(path), read_only=True)
    return connect(path)


def read_rows(path: Path | str, sql: str) -> list[tuple]:
    """All rows of one parameterless query on a collector DB, read-only (SQLite file or PostgreSQL URL).

    Raises ``FileNotFoundError`` (no such SQLite file), ``StoreUnavailable`` (PostgreSQL unreachable),
    ``PermissionError`` (a PostgreSQL role without SELECT on the tables, a WAL file in a folder this user
    cannot write) or ``ValueError`` (not a tpskit collector database)."""
    if not is_postgres(path):
        import sqlite3

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"database collector {path} tidak ada / collector database {path} does not exist: give the "
                "collector's database (tpskit-collector.service: /var/lib/tpskit-collector/collector.db) "
                "or its postgresql:// URL"
            )
        if path.is_dir():
            raise ValueError(f"{path} is a folder, not a tpskit collector database: give the database file "
                             "(tpskit-collector.service: /var/lib/tpskit-collector/collector.db)")
        con = connect_reading(path)
        errors: tuple = (sqlite3.DatabaseError,)
        denied: tuple = ()
    else:
        import psycopg

        con = open_store(path)
        errors = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)
        denied = (psycopg.errors.InsufficientPrivilege,)
    try:
        return [tuple(r) for r in con.execute(sql).fetchall()]
    except errors as exc:
        if not is_postgres(path) and not os.access(path.parent, os.W_OK) and "unable to open" in str(exc):
            raise PermissionError(_folder_read_only(path)) from None
        raise ValueError(f"{describe(path)} is not a tpskit collector database ({exc})") from None
    except denied as exc:
        raise PermissionError(_read_denied(path, exc)) from None
    finally:
        con.close()


def _folder_read_only(path: Path) -> str:
    """What to do when a WAL database cannot be read because its folder is read-only for this user."""
    return (f"{path} tidak bisa dibaca di sini / cannot be read here: its folder {path.parent} is read-only "
            f"for this user and SQLite must create {path.name}-shm beside it; run the command with sudo (or "
            f"as the collector's user), or copy {path.name} (and {path.name}-wal, if there is one) to a "
            "folder you can write")


def _read_denied(url: str, exc: Exception) -> str:
    """What to do when the PostgreSQL role of ``url`` may not read the collector's tables."""
    from psycopg.conninfo import conninfo_to_dict

    user = conninfo_to_dict(postgres_url(url)).get("user") or "ROLE"
    return (f"{describe(url)}: role {user} may not read the collector's tables ({str(exc).splitlines()[0]}); "
            f"ask the database owner to run: GRANT SELECT ON ALL TABLES IN SCHEMA public TO {user}")
