"""Outbox: idempotent ids, per-kit order, states, bounded bytes, purge, survives reopen."""

from __future__ import annotations

import pytest

from comms.outbox import PRIORITY_NUMBERS, PRIORITY_PHOTO, Outbox, OutboxFull


def _add(ob: Outbox, msg_id: str, size: int = 100, priority: int = PRIORITY_NUMBERS) -> int | None:
    return ob.enqueue(msg_id=msg_id, kind="reading", topic="t/x", payload=b"x" * size, priority=priority)


def test_enqueue_is_idempotent_and_ordered(tmp_path):
    ob = Outbox(tmp_path / "tpskit.db")
    assert _add(ob, "k:a") == 1
    assert _add(ob, "k:b") == 2
    assert _add(ob, "k:a") is None  # same id: no-op
    assert [r.id for r in ob.unacked()] == ["k:a", "k:b"]
    assert ob.stats()["queued"] == 2


def test_numbers_before_photos(tmp_path):
    ob = Outbox(tmp_path / "tpskit.db")
    _add(ob, "k:p1", priority=PRIORITY_PHOTO)
    _add(ob, "k:r2")
    _add(ob, "k:p2", priority=PRIORITY_PHOTO)
    _add(ob, "k:r3")
    assert [r.id for r in ob.unacked()] == ["k:r2", "k:r3", "k:p1", "k:p2"]


def test_states_and_purge(tmp_path):
    ob = Outbox(tmp_path / "tpskit.db", retention_s=10)
    for i in range(3):
        _add(ob, f"k:{i}")
    assert ob.mark_sent(["k:0", "k:1"], at=100.0) == 2
    assert ob.mark_acked(["k:0"], at=100.0) == 1
    assert ob.mark_sent(["k:0"]) == 0  # acked never goes back
    assert [ob.state_of(f"k:{i}") for i in range(3)] == ["acked", "sent", "queued"]
    assert ob.has_stale_sent(older_than=200.0)
    assert ob.purge(now=105.0) == 0  # within retention
    assert ob.purge(now=111.0) == 1
    assert ob.state_of("k:0") is None
    assert _add(ob, "k:3") == 4  # the sequence never goes back after a purge


def test_full_refuses_without_losing_anything(tmp_path):
    ob = Outbox(tmp_path / "tpskit.db", max_bytes=1000)
    for i in range(9):
        _add(ob, f"k:{i}", size=100)
    with pytest.raises(OutboxFull) as exc:
        _add(ob, "k:big", size=200)
    assert "outbox full" in str(exc.value)
    assert ob.state_of("k:big") is None
    assert ob.stats()["queued"] == 9 and ob.stats()["last_seq"] == 9  # rolled back, seq too
    # acked rows make room (they are delivered), unacked never do
    ob.mark_acked(["k:0", "k:1"])
    _add(ob, "k:big", size=200)
    assert ob.state_of("k:big") == "queued"
    assert all(ob.state_of(f"k:{i}") == "queued" for i in range(2, 9))


def test_survives_reopen_and_integrity(tmp_path):
    path = tmp_path / "tpskit.db"
    with Outbox(path) as ob:
        _add(ob, "k:a")
    with Outbox(path) as ob:
        assert ob.state_of("k:a") == "queued"
        assert ob.integrity_check() == "ok"
        mode = ob._conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_record_many_states_in_one_transaction(tmp_path):
    ob = Outbox(tmp_path / "tpskit.db")
    ids = [f"k:{i}" for i in range(1200)]  # more than one IN-list chunk
    for i in ids:
        _add(ob, i, size=10)
    assert ob.unacked_count() == 1200 and ob.has_unacked()
    assert ob.record(sent=ids[:700], acked=ids[600:1100], at=5.0) == 700 + 500
    assert ob.unacked_count() == 1200 - 500
    assert [ob.state_of(i) for i in ("k:0", "k:650", "k:1150")] == ["sent", "acked", "queued"]
    assert ob.record(acked=ids[600:1100]) == 0  # already acked: nothing changes
    assert ob.record() == 0
    ob.record(acked=ids)
    assert ob.unacked_count() == 0 and not ob.has_unacked()
    ob.close()


def test_outbox_of_the_previous_release_keeps_its_rows(tmp_path):
    """An outbox written before the payloads moved to their own table: its unacked rows are still
    delivered (with their bytes) and new messages can be queued."""
    import sqlite3

    path = tmp_path / "tpskit.db"
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE outbox (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, kind TEXT NOT NULL, "
        "topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER, priority INTEGER, capture_id TEXT, "
        "state TEXT NOT NULL, bytes INTEGER NOT NULL, created_at FLOAT NOT NULL, sent_at FLOAT, "
        "acked_at FLOAT, attempts INTEGER)"
    )
    con.execute(
        "INSERT INTO outbox VALUES ('k:old', 1, 'reading', 't/x', X'7B7D', 0, 0, NULL, 'sent', 2, 1.0, 2.0, "
        "NULL, 1)"
    )
    con.execute("CREATE TABLE outbox_counters (name TEXT PRIMARY KEY, value INTEGER)")
    con.execute("INSERT INTO outbox_counters VALUES ('seq', 1), ('epoch', 5)")
    con.commit()
    con.close()
    with Outbox(path) as ob:
        assert [(r.id, r.payload) for r in ob.unacked()] == [("k:old", b"{}")]
        assert _add(ob, "k:new") == 2
        assert [r.id for r in ob.unacked()] == ["k:old", "k:new"]
        assert ob.epoch == 5
    with Outbox(path) as ob:  # reopening does nothing more
        assert [r.id for r in ob.unacked()] == ["k:old", "k:new"]


def test_session_numbers_go_up_across_reopen_and_use_no_seq(tmp_path):
    """The kit's connection count orders its status messages at the collector; it never goes back (the
    database is reopened after every restart) and takes nothing from the message sequence."""
    with Outbox(tmp_path / "o.db") as ob:
        assert [ob.next_session() for _ in range(3)] == [1, 2, 3]
        epoch = ob.epoch
    with Outbox(tmp_path / "o.db") as ob:
        assert ob.next_session() == 4 and ob.epoch == epoch
        assert ob.enqueue(msg_id="a", kind="reading", topic="t", payload=b"x") is not None
        assert [r.seq for r in ob.unacked()] == [1]
