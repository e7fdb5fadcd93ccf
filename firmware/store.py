"""The captures table: every photo, its reading and status, committed before anything is sent.

One SQLite file ``<state_dir>/tpskit.db`` (WAL, synchronous=FULL) shared with comms.outbox, each
with its own connection. JPEGs live under ``<state_dir>/photos/``; each file is written, fsynced
and renamed into place (and its directory fsynced) before its row is committed, so a committed
row always points at a complete photo; a photo whose row a power cut kept from being committed is
set aside in ``photos/uncommitted/`` when the store opens again (never deleted: it may be the only
copy). A per-kit sequence number orders captures even when the wall clock is wrong (no RTC), and the
clock's sync state is stored next to the timestamp.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from comms.durable import fsync_dir, write_atomic
from firmware.clock import boot_id
from firmware.config import is_volatile

log = logging.getLogger(__name__)

STATUSES = ("ok", "review", "retake")


class StoreError(RuntimeError):
    """The capture could not be stored (disk full, unwritable); earlier captures are untouched."""


class DiskFull(StoreError):
    """Not enough free space on the state filesystem."""


class ReadOnly(StoreError):
    """The state filesystem refuses writes (an SD card the kernel remounted read-only, wrong ownership):
    pressing again does not help, a technician must."""


READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


@dataclass(frozen=True)
class CaptureRecord:
    """One committed capture."""

    id: str
    seq: int
    status: str
    halaman: int | None
    taken_at: float
    time_source: str
    photo_path: Path
    annotated_path: Path | None
    reading: dict[str, Any]
    submitted_at: float | None = None

    @classmethod
    def from_row(cls, row: dict, state_dir: Path) -> CaptureRecord:
        return cls(id=row["id"], seq=row["seq"], status=row["status"], halaman=row["halaman"],
                   taken_at=row["taken_at"], time_source=row["time_source"],
                   photo_path=state_dir / row["photo"],
                   annotated_path=state_dir / row["annotated"] if row["annotated"] else None,
                   reading=json.loads(row["reading"] or "{}"), submitted_at=row["submitted_at"])


def write_durable(path: Path, data: bytes) -> None:
    """Write *data* to *path* atomically (``comms.durable.write_atomic``); a full disk is DiskFull."""
    try:
        write_atomic(path, data)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"disk full while writing {path.name}") from None
        if exc.errno in READ_ONLY_ERRNOS:
            raise ReadOnly(f"cannot write {path}: {exc.strerror}") from None
        raise StoreError(f"cannot write {path}: {exc.strerror}") from None


def open_db(path: Path) -> sqlite_utils.Database:
    """A sqlite-utils Database on *path* with WAL and synchronous=FULL."""
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return sqlite_utils.Database(conn)


def capture_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Captures by status, plus 'total' and 'unsubmitted' (not yet handed to the outbox; a retake never is),
    in the kit database open on *conn* (any connection, a read-only one too)."""
    counts = {s: 0 for s in STATUSES}
    for status, n in conn.execute(f"SELECT status, COUNT(*) FROM {CaptureStore.TABLE} GROUP BY status"):
        counts[status] = n
    counts["total"] = sum(counts[s] for s in STATUSES)
    counts["unsubmitted"] = conn.execute(
        f"SELECT COUNT(*) FROM {CaptureStore.TABLE} WHERE submitted_at IS NULL AND status != 'retake'"
    ).fetchone()[0]
    return counts


class CaptureStore:
    """Captures of this kit in ``<state_dir>/tpskit.db`` plus their JPEGs in ``<state_dir>/photos``."""

    TABLE = "captures"

    def __init__(self, state_dir: Path | str, *, min_free_mb: int = 50, volatile_ok: bool = False) -> None:
        self.state_dir = Path(state_dir)
        if is_volatile(self.state_dir) and not volatile_ok:
            raise StoreError(f"state directory {self.state_dir} is lost at reboot (under /run or /tmp); "
                             "use a persistent one such as /var/lib/tpskit")
        self.min_free_mb = min_free_mb
        self.photos_dir = self.state_dir / "photos"
        try:
            self.photos_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.photos_dir}: {exc.strerror}") from None
        self.db_path = self.state_dir / "tpskit.db"
        try:
            self.db = open_db(self.db_path)
            self._create()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"database {self.db_path} cannot be opened: {exc}") from None
        self._clean_temp_files()
        self._set_aside_orphans()

    def _create(self) -> None:
        table = self.db[self.TABLE]
        if not table.exists():
            with self.db.conn:
                table.create({
                    "id": str, "seq": int, "created_at": float, "taken_at": float, "taken_mono": float,
                    "boot_id": str, "time_source": str, "source": str, "status": str, "halaman": int,
                    "reasons": str, "reading": str, "photo": str, "photo_sha256": str, "annotated": str,
                    "latency_ms": float, "submitted_at": float, "submit_error": str,
                }, pk="id", not_null={"seq", "status", "photo", "taken_at", "created_at"})
                table.create_index(["seq"], unique=True)
                table.create_index(["submitted_at"])

    def _clean_temp_files(self) -> None:
        """Remove photo temp files left by a crash before their row was committed."""
        for tmp in self.photos_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def _set_aside_orphans(self) -> None:
        """Move photos whose row was never committed (power cut or SIGKILL between fsync and commit) to
        ``photos/uncommitted/``.

        The KPPS never got a verdict for them (it comes after the commit), so the page is photographed
        again; among the captures they would never be counted or sent. They are kept, not deleted: a
        database recreated empty or restored from an older copy would make every photo look like one.
        """
        known: set[str] = set()
        try:
            for photo, annotated in self.db.conn.execute(f"SELECT photo, annotated FROM {self.TABLE}"):
                known.update(Path(p).name for p in (photo, annotated) if p)
        except sqlite3.DatabaseError as exc:  # a damaged table: keep every file, selftest reports it
            log.warning("photos not checked against the database: %s", exc)
            return
        orphans = [p for p in self.photos_dir.glob("*.jpg") if p.name not in known]
        if not orphans:
            return
        aside = self.photos_dir / "uncommitted"
        log.warning("%d photo(s) without a committed capture (power cut during a capture?) moved to %s",
                    len(orphans), aside)
        try:
            aside.mkdir(exist_ok=True)
            for p in orphans:
                os.replace(p, aside / p.name)
            fsync_dir(self.photos_dir)
            fsync_dir(aside)
        except OSError as exc:  # left where they are: never counted, never lost
            log.warning("photos without a capture not moved: %s", exc)

    # -- writing ---------------------------------------------------------------------------------

    def probe_writable(self) -> None:
        """Raise ReadOnly (StoreError) unless the photo folder and the database take a write now; nothing of
        it stays. The kit's probe while its storage is down (a card the kernel remounted read-only)."""
        probe = self.photos_dir / ".write-probe.tmp"  # a crash leaves it to _clean_temp_files
        write_durable(probe, b"tpskit")
        try:
            probe.unlink()
        except OSError as exc:
            raise ReadOnly(f"cannot remove {probe}: {exc.strerror}") from None
        try:  # a write transaction that changes nothing: the schema version, set to what it is
            version = int(self.db.conn.execute("PRAGMA user_version").fetchone()[0])
            self.db.conn.execute(f"PRAGMA user_version = {version}")
        except sqlite3.Error as exc:
            raise ReadOnly(f"database {self.db_path} cannot be written: {exc}") from None

    def free_mb(self) -> float:
        return shutil.disk_usage(self.state_dir).free / 1e6

    def check_space(self, need_bytes: int = 0) -> None:
        """Raise DiskFull unless min_free_mb plus *need_bytes* are free."""
        free = self.free_mb()
        if free - need_bytes / 1e6 < self.min_free_mb:
            raise DiskFull(f"only {free:.0f} MB free on {self.state_dir} (need {self.min_free_mb} MB)")

    def save(self, *, jpeg: bytes, status: str, reading: dict[str, Any], taken_at: float,
             time_source: str, source: str = "", annotated_jpeg: bytes | None = None,
             taken_mono: float | None = None, latency_ms: float | None = None) -> CaptureRecord:
        """Write the photo(s) durably, then commit the row. Returns the committed record."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} not in {STATUSES}")
        self.check_space(len(jpeg) + len(annotated_jpeg or b""))
        capture_id = uuid.uuid4().hex
        photo = self.photos_dir / f"{capture_id}.jpg"
        annotated = self.photos_dir / f"{capture_id}.annotated.jpg" if annotated_jpeg else None
        try:
            write_durable(photo, jpeg)
            if annotated is not None:
                write_durable(annotated, annotated_jpeg)
            halaman = reading.get("page")
            with self.db.conn:  # one transaction: seq is read and used atomically
                cur = self.db.conn.execute(f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {self.TABLE}")
                seq = int(cur.fetchone()[0])
                self.db[self.TABLE].insert({
                    "id": capture_id, "seq": seq, "created_at": time.time(), "taken_at": taken_at,
                    "taken_mono": taken_mono if taken_mono is not None else time.monotonic(),
                    "boot_id": boot_id(), "time_source": time_source, "source": source, "status": status,
                    "halaman": halaman if isinstance(halaman, int) else None,
                    "reasons": json.dumps(reading.get("reasons", []), ensure_ascii=False),
                    "reading": json.dumps(reading, ensure_ascii=False), "photo": str(photo.relative_to(
                        self.state_dir)), "photo_sha256": hashlib.sha256(jpeg).hexdigest(),
                    "annotated": str(annotated.relative_to(self.state_dir)) if annotated else None,
                    "latency_ms": latency_ms, "submitted_at": None, "submit_error": None,
                })
        except sqlite3.OperationalError as exc:
            self._discard(photo, annotated)
            if "full" in str(exc).lower():
                raise DiskFull(f"disk full while committing the capture: {exc}") from None
            if "readonly" in str(exc).lower():  # "attempt to write a readonly database"
                raise ReadOnly(f"capture not stored: {exc}") from None
            raise StoreError(f"capture not stored: {exc}") from None
        except StoreError:
            self._discard(photo, annotated)
            raise
        return self.get(capture_id)

    def _discard(self, *paths: Path | None) -> None:
        """Remove the photo files of a capture that was not stored; never raises (a filesystem that went
        read-only refuses the unlink too, and the StoreError being raised is what the KPPS must hear)."""
        for p in paths:
            if p is None:
                continue
            try:
                p.unlink(missing_ok=True)
            except OSError as exc:  # left behind: set aside as uncommitted when the store opens again
                log.warning("cannot remove %s of a capture not stored: %s", p, exc)

    def mark_submitted(self, capture_id: str, *, error: str | None = None) -> None:
        """Record that the capture is in the outbox (or why handing it over failed)."""
        with self.db.conn:
            if error is None:
                self.db[self.TABLE].update(capture_id, {"submitted_at": time.time(), "submit_error": None})
            else:
                self.db[self.TABLE].update(capture_id, {"submit_error": error})

    # -- reading ---------------------------------------------------------------------------------

    def get(self, capture_id: str) -> CaptureRecord:
        return CaptureRecord.from_row(self.db[self.TABLE].get(capture_id), self.state_dir)

    def unsubmitted(self) -> list[CaptureRecord]:
        """Committed ok/review captures not yet handed to the outbox, oldest first."""
        rows = self.db[self.TABLE].rows_where("submitted_at IS NULL AND status != 'retake'", order_by="seq")
        return [CaptureRecord.from_row(r, self.state_dir) for r in rows]

    def newest_pages(self, *, since: float) -> list[dict[str, Any]]:
        """The reading of the newest ok/review capture of each halaman taken from ``since`` on (kit clock):
        the other pages of the TPS being photographed now."""
        rows = self.db.conn.execute(
            f"SELECT halaman, reading FROM {self.TABLE} WHERE status != 'retake' AND halaman IS NOT NULL "
            "AND taken_at >= ? ORDER BY seq", (since,)).fetchall()
        return list({h: json.loads(r or "{}") for h, r in rows}.values())

    def last(self, n: int = 5) -> list[CaptureRecord]:
        rows = self.db[self.TABLE].rows_where(order_by="seq DESC", limit=n)
        return [CaptureRecord.from_row(r, self.state_dir) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of captures by status, plus 'total' and 'unsubmitted'."""
        return capture_counts(self.db.conn)

    def integrity_ok(self) -> bool:
        return self.db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def close(self) -> None:
        self.db.conn.close()
