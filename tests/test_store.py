"""CaptureStore on real SQLite files."""

from __future__ import annotations

import sqlite3

import pytest

from firmware.store import CaptureStore, DiskFull, StoreError

JPEG = b"\xff\xd8" + b"x" * 1000 + b"\xff\xd9"


def save(store, status="ok", page=1, **kw):
    return store.save(jpeg=JPEG, status=status, reading={"page": page, "status": status, "reasons": []},
                      taken_at=1_700_000_000.0, time_source="unsynced", source="test", **kw)


def test_committed_row_points_at_complete_photo(tmp_path):
    store = CaptureStore(tmp_path, volatile_ok=True)
    rec = save(store, annotated_jpeg=b"\xff\xd8ann\xff\xd9")
    assert rec.photo_path.read_bytes() == JPEG
    assert rec.annotated_path.read_bytes().startswith(b"\xff\xd8")
    assert rec.photo_path.parent == tmp_path / "photos"
    assert rec.halaman == 1 and rec.time_source == "unsynced"
    conn = sqlite3.connect(tmp_path / "tpskit.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT COUNT(*) FROM captures").fetchone()[0] == 1
    assert store.db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_sequence_is_monotonic_across_restarts(tmp_path):
    store = CaptureStore(tmp_path, volatile_ok=True)
    seqs = [save(store).seq for _ in range(3)]
    store.close()
    store = CaptureStore(tmp_path, volatile_ok=True)
    seqs.append(save(store, status="review", page=2).seq)
    assert seqs == [1, 2, 3, 4]
    assert [r.seq for r in store.last(2)] == [4, 3]
    assert store.integrity_ok()


def test_unsubmitted_and_mark(tmp_path):
    store = CaptureStore(tmp_path, volatile_ok=True)
    a = save(store)
    save(store, status="retake", page=None)
    c = save(store, status="review", page=3)
    assert [r.id for r in store.unsubmitted()] == [a.id, c.id]  # retakes are never sent
    store.mark_submitted(a.id)
    store.mark_submitted(c.id, error="OutboxFull")
    assert [r.id for r in store.unsubmitted()] == [c.id]
    assert store.counts() == {"ok": 1, "review": 1, "retake": 1, "total": 3, "unsubmitted": 1}


def test_full_disk_refuses_and_keeps_earlier(tmp_path):
    store = CaptureStore(tmp_path, volatile_ok=True)
    first = save(store)
    store.min_free_mb = 10**9
    with pytest.raises(DiskFull):
        save(store)
    store.min_free_mb = 1
    assert store.counts()["total"] == 1
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == [f"{first.id}.jpg"]


def test_write_failure_leaves_no_row_or_file(tmp_path, monkeypatch):
    import errno
    import os

    store = CaptureStore(tmp_path, volatile_ok=True)
    save(store)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DiskFull):
        save(store)
    monkeypatch.undo()
    assert store.counts()["total"] == 1
    assert len(list((tmp_path / "photos").iterdir())) == 1


def test_a_card_gone_read_only_is_a_read_only_error_not_the_cleanups_oserror(tmp_path, monkeypatch):
    """The kernel remounted the SD card read-only: the photo is not written, and removing what was not
    written fails too; the caller gets ReadOnly (the KPPS is told to call the technician), not the OSError
    of the clean-up."""
    import errno
    import os
    from pathlib import Path

    from firmware.store import ReadOnly

    store = CaptureStore(tmp_path, volatile_ok=True)
    save(store)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "fsync", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(ReadOnly, match="Read-only file system"):
        save(store, annotated_jpeg=JPEG)
    monkeypatch.undo()
    assert store.counts()["total"] == 1


def test_refuses_volatile_dir():
    with pytest.raises(StoreError, match="lost at reboot"):
        CaptureStore("/run/tpskit-test-never")


def test_bad_status_refused(tmp_path):
    store = CaptureStore(tmp_path, volatile_ok=True)
    with pytest.raises(ValueError):
        save(store, status="maybe")


def test_power_cut_between_photo_and_commit_leaves_no_orphan(tmp_path):
    """SIGKILL after the photo is fsynced but before its row is committed: the kit starts again with the
    committed captures intact and no photo without a row (it would never be sent nor counted)."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    store = CaptureStore(tmp_path, volatile_ok=True)
    kept = save(store, annotated_jpeg=b"\xff\xd8ann\xff\xd9")
    store.close()
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from firmware import store as store_mod
store = store_mod.CaptureStore({str(tmp_path)!r}, volatile_ok=True)
store_mod.boot_id = lambda: os.kill(os.getpid(), signal.SIGKILL)  # dies inside the transaction
store.save(jpeg=b"\\xff\\xd8" + b"y" * 500 + b"\\xff\\xd9", status="ok", reading={{"page": 2}},
           taken_at=1.7e9, time_source="ntp", annotated_jpeg=b"\\xff\\xd8a\\xff\\xd9")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert len(list((tmp_path / "photos").iterdir())) == 4  # the killed save's photos are on disk

    killed = sorted(p.name for p in (tmp_path / "photos").glob("*.jpg") if not p.name.startswith(kept.id))
    store = CaptureStore(tmp_path, volatile_ok=True)  # the kit starts again
    assert store.counts()["total"] == 1 and store.integrity_ok()
    assert sorted(p.name for p in (tmp_path / "photos").glob("*.jpg")) == [
        f"{kept.id}.annotated.jpg", f"{kept.id}.jpg"]
    assert store.get(kept.id).photo_path.read_bytes() == JPEG
    # set aside, never deleted: a photo of a page may be the only copy of it
    assert sorted(p.name for p in (tmp_path / "photos" / "uncommitted").iterdir()) == killed
    photo = tmp_path / "photos" / "uncommitted" / killed[1]
    assert photo.read_bytes() == b"\xff\xd8" + b"y" * 500 + b"\xff\xd9"


def test_a_database_recreated_empty_never_deletes_photos(tmp_path):
    """If tpskit.db is lost and recreated empty (or restored from an older copy), every photo looks
    uncommitted: they are moved aside, each byte kept, not removed."""
    store = CaptureStore(tmp_path, volatile_ok=True)
    rec = save(store)
    store.close()
    for f in tmp_path.glob("tpskit.db*"):
        f.unlink()
    store = CaptureStore(tmp_path, volatile_ok=True)
    assert store.counts()["total"] == 0
    assert (tmp_path / "photos" / "uncommitted" / f"{rec.id}.jpg").read_bytes() == JPEG


def test_power_cut_while_a_photo_is_written_leaves_no_temp_file_after_restart(tmp_path):
    """SIGKILL after the photo's temp file is written, before its rename: the kit starts again without the
    half-written temp file (it is never a capture: no row, no final name), so a kit that loses power often
    does not fill its card with them, and provision's "photos held" count is not inflated by them."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from firmware import store as store_mod
store = store_mod.CaptureStore({str(tmp_path)!r}, volatile_ok=True)
os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # dies before the rename
store.save(jpeg=b"\\xff\\xd8" + b"y" * 500 + b"\\xff\\xd9", status="ok", reading={{"page": 2}},
           taken_at=1.7e9, time_source="ntp")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert [p.name for p in (tmp_path / "photos").iterdir() if p.name.startswith(".")]  # the temp file

    store = CaptureStore(tmp_path, volatile_ok=True)  # the kit starts again
    assert store.counts()["total"] == 0
    assert [p.name for p in (tmp_path / "photos").rglob("*")] == []


def test_the_write_probe_finds_a_database_or_folder_that_refuses_writes_and_leaves_nothing(tmp_path,
                                                                                            monkeypatch):
    """The kit's probe while its storage is down: both the photo folder and the database must take a write;
    a database that refuses one (a read-only card, root-owned -wal) is ReadOnly, as the capture was."""
    import errno
    import os

    from firmware.store import ReadOnly

    store = CaptureStore(tmp_path, min_free_mb=1, volatile_ok=True)
    store.probe_writable()  # a writable card: nothing to say, nothing left behind
    assert list(store.photos_dir.iterdir()) == [] and store.counts()["total"] == 0
    store.db.conn.execute("PRAGMA query_only = 1")  # refuses writes as a read-only database does
    with pytest.raises(ReadOnly, match="cannot be written"):
        store.probe_writable()
    store.db.conn.execute("PRAGMA query_only = 0")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "fsync", read_only)
    with pytest.raises(ReadOnly, match="Read-only file system"):
        store.probe_writable()
    monkeypatch.undo()
    store.probe_writable()
    assert list(store.photos_dir.iterdir()) == []
