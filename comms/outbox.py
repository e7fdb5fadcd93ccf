"""The store-and-forward queue: SQLite tables in the kit's DB file (shared with firmware.store).

Every message is committed (WAL, synchronous=FULL) before the link may hand it to the network.
States: ``queued`` → ``sent`` (broker PUBACK) → ``acked`` (the collector stored it). Message ids are unique:
adding an id that exists is a no-op, so re-submitting after a crash is harmless. Each message gets the next
per-kit sequence number inside the same transaction, from a counter that never goes back (not even when
acked rows are purged). Delivery order is (priority, seq): priority 0 = numbers and readiness, 1 = photo
chunks, so a slow link carries the numbers of every page before any photo.

The size is bounded: when a new batch does not fit, acked rows are purged first; if the unacked rows alone
would exceed ``max_bytes`` the batch is refused with ``OutboxFull`` and nothing already queued is touched.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import NamedTuple

import sqlite_utils

TABLE = "outbox"
PAYLOADS = "outbox_payloads"  # the bytes live apart: state updates then never rewrite an 85 KB photo chunk
COUNTERS = "outbox_counters"
PRIORITY_NUMBERS = 0
PRIORITY_PHOTO = 1


class OutboxFull(Exception):
    """The outbox has no room for this message; nothing was queued and nothing was dropped."""

    def __init__(self, needed: int, used: int, max_bytes: int):
        super().__init__(
            f"outbox penuh / outbox full: {needed} bytes needed, {used} of {max_bytes} bytes hold unsent "
            "messages; connect the kit to a network or export a bundle (tpskit export DIR) so they can "
            "be sent"
        )
        self.needed, self.used, self.max_bytes = needed, used, max_bytes


class Row(NamedTuple):
    """One unacked message as the link reads it (immutable; a tuple, cheap to build)."""

    id: str
    seq: int
    kind: str
    topic: str
    payload: bytes
    retain: bool
    priority: int
    state: str = "queued"


def connect(path: Path | str, *, timeout_s: float = 30.0, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection in autocommit mode with WAL, synchronous=FULL (default) and a busy timeout."""
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError("synchronous must be FULL or NORMAL")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def connect_reading(path: Path | str, *, timeout_s: float = 10.0) -> sqlite3.Connection:
    """A connection that only reads (`tpskit status`, selftest, provision, fleet): opened read-write with
    ``query_only``, so that closing it, the last connection while the service is stopped, removes the -wal
    and -shm files it made. A read-only open leaves them behind, owned by whoever ran the command (root
    under sudo), and the service's own user can then no longer write its database. Falls back to a
    read-only open when the file or its folder is not writable. Never creates a database."""
    path = Path(path)
    if not path.is_file():
        raise sqlite3.OperationalError(f"unable to open database file {path}: it does not exist")
    if os.access(path, os.W_OK) and os.access(path.parent, os.W_OK):
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=timeout_s)
        conn.execute("PRAGMA query_only=ON")
        return conn
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_s)


@contextmanager
def reading(path: Path | str, *, timeout_s: float = 10.0,
            scratch_dirs: Iterable[Path | None] = (None,)) -> Iterator[sqlite3.Connection]:
    """``with reading(db) as conn:`` a ``connect_reading`` connection, closed on exit; on a card the kernel
    remounted read-only (no -shm can be made beside the database) one on a ``WalSnapshot`` copy instead."""
    path = Path(path)
    conn = None
    try:
        conn = connect_reading(path, timeout_s=timeout_s)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")  # a WAL database opens its -shm here
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        if not isinstance(exc, sqlite3.OperationalError) or os.access(path.parent, os.W_OK):
            raise
        conn = None
    if conn is not None:
        with closing(conn):
            yield conn
        return
    with ExitStack() as stack:
        try:
            copy = stack.enter_context(WalSnapshot(path, scratch_dirs=list(scratch_dirs)))
        except OSError as exc:  # the whole card read-only: /tmp too
            raise sqlite3.OperationalError(
                f"{path} is on a read-only folder (a failing SD card the kernel remounted read-only?) and no "
                f"writable folder takes the copy it is read from ({exc.strerror or exc}); its data is still "
                "there: keep the card for a technician, 'sudo tpskit export /media/usb' copies it to a stick"
            ) from None
        yield stack.enter_context(closing(connect_reading(copy, timeout_s=timeout_s)))


class WalSnapshot:
    """A private copy of an SQLite database and its ``-wal`` file, to read one that cannot be written.

    SQLite reads a WAL database only through its ``-shm`` index, which it must be able to create or find; the
    main file and the ``-wal`` copied to a writable folder (the ``-shm`` left behind: SQLite rebuilds it from
    the WAL) hold everything committed, also what is only in the WAL. ``immutable=1`` would ignore the WAL.
    The copy is taken again when the files change while being copied. ``with WalSnapshot(db,
    scratch_dirs=[None, usb]) as copy:`` the copy goes into the first folder that takes it (None: the system
    temp folder, itself read-only when the whole card is) and is deleted on exit.
    """

    SUFFIXES = ("", "-wal")
    ATTEMPTS = 3

    def __init__(self, db_path: Path | str, *, scratch_dirs: list[Path | None]):
        self.db_path = Path(db_path)
        self.scratch_dirs = list(scratch_dirs)
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> Path:
        error: OSError | None = None
        for folder in self.scratch_dirs:
            try:
                self._tmp = tempfile.TemporaryDirectory(dir=folder, prefix=".tpskit-snapshot-")
                return self._copy(Path(self._tmp.name))
            except OSError as exc:  # read-only or full: try the next folder
                error = exc
                self._cleanup()
        raise error or OSError("no folder for the database snapshot")

    def __exit__(self, *exc) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _copy(self, folder: Path) -> Path:
        sources = [self.db_path.with_name(self.db_path.name + s) for s in self.SUFFIXES]
        target = folder / self.db_path.name
        for _ in range(self.ATTEMPTS):
            before = [_signature(p) for p in sources]
            for src in sources:
                dst = target.with_name(target.name + src.name[len(self.db_path.name):])
                dst.unlink(missing_ok=True)
                if src.exists():
                    shutil.copyfile(src, dst)
            if [_signature(p) for p in sources] == before:
                return target
        raise OSError(f"{self.db_path} kept changing while it was copied")


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


class _Batch:
    """Operations inside one outbox transaction (see ``Outbox.transaction``)."""

    def __init__(self, outbox: Outbox):
        self._ob = outbox
        self._conn = outbox._conn
        self.added_bytes = 0
        self.added: list[str] = []

    def exists(self, msg_id: str) -> bool:
        return self._conn.execute(f"SELECT 1 FROM {TABLE} WHERE id = ?", (msg_id,)).fetchone() is not None

    def next_seq(self) -> int:
        self._conn.execute(f"UPDATE {COUNTERS} SET value = value + 1 WHERE name = 'seq'")
        return self._conn.execute(f"SELECT value FROM {COUNTERS} WHERE name = 'seq'").fetchone()[0]

    def add(
        self,
        *,
        msg_id: str,
        seq: int,
        kind: str,
        topic: str,
        payload: bytes,
        priority: int = 0,
        retain: bool = False,
        capture_id: str | None = None,
        now: float | None = None,
    ) -> bool:
        """Queue one message; False if the id already exists (nothing changes)."""
        cur = self._conn.execute(
            f"INSERT OR IGNORE INTO {TABLE} (id, seq, kind, topic, retain, priority, capture_id, "
            "state, bytes, created_at, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, 0)",
            (
                msg_id,
                seq,
                kind,
                topic,
                int(retain),
                priority,
                capture_id,
                len(payload),
                now if now is not None else time.time(),
            ),
        )
        if cur.rowcount:
            self._conn.execute(f"INSERT INTO {PAYLOADS} (id, payload) VALUES (?, ?)", (msg_id, payload))
            self.added_bytes += len(payload)
            self.added.append(msg_id)
            return True
        return False


class Outbox:
    """The kit's outbox. Thread-safe (one connection, one lock); open one per thread for concurrency."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int = 2_000_000_000,
        retention_s: float = 30 * 86400,
        timeout_s: float = 30.0,
        synchronous: str = "FULL",
    ):
        """``synchronous="NORMAL"`` is for the link thread only: its sent/acked updates may be lost on power
        loss (the rows are then resent and the collector answers duplicates with acks); new messages are
        always queued through a FULL connection, whose commit fsyncs the whole WAL."""
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.retention_s = float(retention_s)
        self._lock = threading.RLock()
        self._conn = connect(self.path, timeout_s=timeout_s, synchronous=synchronous)
        self._create()

    def _create(self) -> None:
        db = sqlite_utils.Database(self._conn)
        # CREATE ... IF NOT EXISTS is idempotent, so two processes opening the file at once are fine.
        with self._lock:
            db[TABLE].create(
                {
                    "id": str,
                    "seq": int,
                    "kind": str,
                    "topic": str,
                    "retain": int,
                    "priority": int,
                    "capture_id": str,
                    "state": str,
                    "bytes": int,
                    "created_at": float,
                    "sent_at": float,
                    "acked_at": float,
                    "attempts": int,
                },
                pk="id",
                not_null={"seq", "kind", "topic", "state", "bytes", "created_at"},
                if_not_exists=True,
            )
            db[PAYLOADS].create(
                {"id": str, "payload": bytes}, pk="id", not_null={"payload"}, if_not_exists=True
            )
            if "payload" in self._columns():
                self._move_payloads()
            self._conn.execute(
                f"CREATE TRIGGER IF NOT EXISTS {PAYLOADS}_gc AFTER DELETE ON {TABLE} "
                f"BEGIN DELETE FROM {PAYLOADS} WHERE id = OLD.id; END"
            )
            db[COUNTERS].create({"name": str, "value": int}, pk="name", if_not_exists=True)
            self._conn.execute(f"INSERT OR IGNORE INTO {COUNTERS} (name, value) VALUES ('seq', 0)")
            # The epoch names this outbox's sequence: a kit whose database is replaced (new SD card,
            # re-provisioned with the same key) starts a new epoch, so its new seq 1 is not a replay.
            self._conn.execute(
                f"INSERT OR IGNORE INTO {COUNTERS} (name, value) VALUES ('epoch', ?)",
                (time.time_ns() // 1_000_000,),
            )
            # Connections (sessions) of this kit in this epoch: orders its status messages, not its clock.
            self._conn.execute(f"INSERT OR IGNORE INTO {COUNTERS} (name, value) VALUES ('session', 0)")
            self._conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_seq ON {TABLE}(seq)")
            self._conn.execute(
                f"CREATE INDEX IF NOT EXISTS {TABLE}_pending ON {TABLE}(priority, seq) WHERE state != 'acked'"
            )
            self._conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_capture ON {TABLE}(capture_id)")
            self._conn.execute(
                f"CREATE INDEX IF NOT EXISTS {TABLE}_acked ON {TABLE}(acked_at) WHERE state = 'acked'"
            )

    def _columns(self) -> set[str]:
        return {r[1] for r in self._conn.execute(f"PRAGMA table_info({TABLE})")}

    def _move_payloads(self) -> None:
        """An outbox from before PAYLOADS kept the bytes in TABLE.payload (NOT NULL): move them, once, so
        that its unacked rows are still delivered and new rows can be queued."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            if "payload" in self._columns():  # another process may have moved them meanwhile
                self._conn.execute(
                    f"INSERT OR IGNORE INTO {PAYLOADS} (id, payload) SELECT id, payload FROM {TABLE}"
                )
                self._conn.execute(f"ALTER TABLE {TABLE} DROP COLUMN payload")
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    @property
    def epoch(self) -> int:
        """Creation time (ms) of this outbox's sequence counter; sent with every sequenced message."""
        with self._lock:
            return self._conn.execute(f"SELECT value FROM {COUNTERS} WHERE name = 'epoch'").fetchone()[0]

    # --- writing -------------------------------------------------------------------------------------

    def next_session(self) -> int:
        """Count one more connection of the kit and return its number (committed with this connection's
        synchronous setting: use a FULL one, a number lost in a power cut would be given out twice)."""
        with self.transaction():
            self._conn.execute(f"UPDATE {COUNTERS} SET value = value + 1 WHERE name = 'session'")
            return self._conn.execute(f"SELECT value FROM {COUNTERS} WHERE name = 'session'").fetchone()[0]

    @contextmanager
    def transaction(self) -> Iterator[_Batch]:
        """BEGIN IMMEDIATE … COMMIT around a batch; all or nothing. Raises OutboxFull (rolled back)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                batch = _Batch(self)
                yield batch
                if batch.added_bytes:
                    self._make_room(batch.added_bytes)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _make_room(self, added: int) -> None:
        total, unacked = self._conn.execute(
            f"SELECT COALESCE(SUM(bytes), 0), COALESCE(SUM(CASE WHEN state != 'acked' THEN bytes END), 0) "
            f"FROM {TABLE}"
        ).fetchone()
        if total <= self.max_bytes:
            return
        if unacked > self.max_bytes:
            raise OutboxFull(added, unacked - added, self.max_bytes)
        # Purge acked rows, oldest first, until the total fits again (they have been delivered).
        excess = total - self.max_bytes
        freed = 0
        rows = self._conn.execute(
            f"SELECT id, bytes FROM {TABLE} WHERE state = 'acked' ORDER BY acked_at, seq"
        )
        doomed = []
        for msg_id, size in rows:
            doomed.append((msg_id,))
            freed += size
            if freed >= excess:
                break
        self._conn.executemany(f"DELETE FROM {TABLE} WHERE id = ?", doomed)

    def enqueue(
        self,
        *,
        msg_id: str,
        kind: str,
        topic: str,
        payload: bytes,
        priority: int = 0,
        retain: bool = False,
        capture_id: str | None = None,
    ) -> int | None:
        """Queue one pre-built message (its seq is assigned here); None if the id exists."""
        with self.transaction() as b:
            if b.exists(msg_id):
                return None
            seq = b.next_seq()
            b.add(
                msg_id=msg_id,
                seq=seq,
                kind=kind,
                topic=topic,
                payload=payload,
                priority=priority,
                retain=retain,
                capture_id=capture_id,
            )
            return seq

    _SENT_SQL = (
        f"UPDATE {TABLE} SET state = 'sent', sent_at = ?, attempts = attempts + 1 "
        "WHERE state = 'queued' AND id IN ({})"
    )
    _ACKED_SQL = (
        f"UPDATE {TABLE} SET state = 'acked', acked_at = ?, sent_at = COALESCE(sent_at, ?) "
        "WHERE state != 'acked' AND id IN ({})"
    )
    _IN_CHUNK = 500  # ids per statement (below every SQLite build's variable limit)

    def _update(self, sql: str, at: float, ids: list[str], *, twice: bool = False) -> int:
        changed = 0
        for i in range(0, len(ids), self._IN_CHUNK):
            part = ids[i : i + self._IN_CHUNK]
            args = [at, at, *part] if twice else [at, *part]
            changed += self._conn.execute(sql.format(",".join("?" * len(part))), args).rowcount
        return changed

    def record(self, *, sent: Iterable[str] = (), acked: Iterable[str] = (), at: float | None = None) -> int:
        """Record delivery states in one transaction: *sent* (broker PUBACK; only queued rows change)
        and *acked* (the collector stored them). Returns the number of rows changed."""
        sent, acked = list(sent), list(acked)
        if not sent and not acked:
            return 0
        at = at if at is not None else time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                changed = self._update(self._SENT_SQL, at, sent) if sent else 0
                if acked:
                    changed += self._update(self._ACKED_SQL, at, acked, twice=True)
                self._conn.execute("COMMIT")
                return changed
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def mark_sent(self, ids: Iterable[str], *, at: float | None = None) -> int:
        """The broker has these (PUBACK). Only queued rows change."""
        return self.record(sent=ids, at=at)

    def mark_acked(self, ids: Iterable[str], *, at: float | None = None) -> int:
        """The collector stored these (end-to-end ack)."""
        return self.record(acked=ids, at=at)

    def purge(self, *, now: float | None = None) -> int:
        """Delete acked rows older than the retention period."""
        now = now if now is not None else time.time()
        with self._lock:
            cur = self._conn.execute(
                f"DELETE FROM {TABLE} WHERE state = 'acked' AND acked_at < ?", (now - self.retention_s,)
            )
            return cur.rowcount

    # --- reading -------------------------------------------------------------------------------------

    def pending(self, *, priority: int, after_seq: int = 0, limit: int = 100) -> list[Row]:
        """Unacked rows of one priority with seq > after_seq, in seq order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT o.id, o.seq, o.kind, o.topic, p.payload, o.retain, o.priority, o.state "
                f"FROM {TABLE} o JOIN {PAYLOADS} p ON p.id = o.id "
                "WHERE o.state != 'acked' AND o.priority = ? AND o.seq > ? ORDER BY o.seq LIMIT ?",
                (priority, after_seq, limit),
            ).fetchall()
        return [Row(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], r[7]) for r in rows]

    def unacked(self, *, page: int = 500) -> Iterator[Row]:
        """Every unacked row in delivery order (priority, seq), read *page* rows at a time (a page of photo
        chunks is page × ~85 KB in memory)."""
        for prio in (PRIORITY_NUMBERS, PRIORITY_PHOTO):
            after = 0
            while True:
                rows = self.pending(priority=prio, after_seq=after, limit=page)
                if not rows:
                    break
                yield from rows
                after = rows[-1].seq

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction: every read of this outbox inside sees it as of the first read (WAL), also
        while other connections ack or queue messages. Other threads using this Outbox wait."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield
            finally:
                self._conn.execute("ROLLBACK")

    def unacked_count(self) -> int:
        """Messages not yet acked by the collector (cheap: counts the pending index only)."""
        with self._lock:
            return self._conn.execute(f"SELECT COUNT(*) FROM {TABLE} WHERE state != 'acked'").fetchone()[0]

    def has_unacked(self) -> bool:
        """True while any message waits for the collector's ack (one index probe: cheap to poll)."""
        with self._lock:
            row = self._conn.execute(f"SELECT 1 FROM {TABLE} WHERE state != 'acked' LIMIT 1").fetchone()
        return row is not None

    def has_stale_sent(self, *, older_than: float) -> bool:
        with self._lock:
            return (
                self._conn.execute(
                    f"SELECT 1 FROM {TABLE} WHERE state = 'sent' AND sent_at < ? LIMIT 1", (older_than,)
                ).fetchone()
                is not None
            )

    def has_capture(self, capture_id: str) -> bool:
        with self._lock:
            return (
                self._conn.execute(
                    f"SELECT 1 FROM {TABLE} WHERE capture_id = ? LIMIT 1", (capture_id,)
                ).fetchone()
                is not None
            )

    def state_of(self, msg_id: str) -> str | None:
        with self._lock:
            row = self._conn.execute(f"SELECT state FROM {TABLE} WHERE id = ?", (msg_id,)).fetchone()
        return row[0] if row else None

    def stats(self, *, now: float | None = None) -> dict:
        """Counts per state, unacked bytes, total bytes, age of the oldest unsent message, last seq."""
        now = now if now is not None else time.time()
        with self._lock:
            counts = dict(
                self._conn.execute(f"SELECT state, COUNT(*) FROM {TABLE} GROUP BY state").fetchall()
            )
            unacked_bytes, total_bytes = self._conn.execute(
                "SELECT COALESCE(SUM(CASE WHEN state != 'acked' THEN bytes END), 0), "
                "COALESCE(SUM(bytes), 0) "
                f"FROM {TABLE}"
            ).fetchone()
            oldest = self._conn.execute(
                f"SELECT MIN(created_at) FROM {TABLE} WHERE state = 'queued'"
            ).fetchone()[0]
            seq = self._conn.execute(f"SELECT value FROM {COUNTERS} WHERE name = 'seq'").fetchone()[0]
        return {
            "queued": counts.get("queued", 0),
            "sent": counts.get("sent", 0),
            "acked": counts.get("acked", 0),
            "unacked_bytes": unacked_bytes,
            "bytes": total_bytes,
            "max_bytes": self.max_bytes,
            "oldest_unsent_age_s": (now - oldest) if oldest is not None else None,
            "last_seq": seq,
        }

    def integrity_check(self) -> str:
        with self._lock:
            return self._conn.execute("PRAGMA integrity_check").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
