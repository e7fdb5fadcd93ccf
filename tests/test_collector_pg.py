"""Collector on PostgreSQL: lost connections, durable commits, several collectors on one database, the
password from a file, and end to end over a real mosquitto (kit → broker → collector → PostgreSQL → ack).

The store behaviours shared with SQLite (idempotency, replays, tampering, gaps) run on both backends in
tests/test_collector.py. The cluster is a throw-away one (tests/pg.py); tests skip without it.
"""

# ruff: noqa: F811 (pytest fixtures imported from tests.pg are redefined as test arguments)
from __future__ import annotations

import argparse
import os
import threading
import time

import pytest

from comms import payloads, topics
from comms.collector import Collector
from comms.collector_store import CollectorStore, StoreError, StoreUnavailable
from comms.signing import generate_key
from tests.broker import free_port
from tests.delivery_helpers import make_courier, start_collector
from tests.delivery_helpers import wait_for as _wait
from tests.pg import pg_cluster, pg_url  # noqa: F401 (fixtures)
from tests.test_collector import EPOCH, KW, PREFIX, T_READING, TPS, _process, _reading, _registry

T_PHOTO = topics.topic(PREFIX, KW, TPS, "photo")


def _dbname(url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return conninfo_to_dict(url)["dbname"]


def _terminate(cluster, url: str) -> int:
    """Kill the server side of every collector connection to this test's database (as a crash would)."""
    with cluster.admin() as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = 'tpskit-collector'",
            (_dbname(url),),
        ).fetchall()
    return len(rows)


@pytest.fixture
def kit():
    return generate_key()


def _photo_messages(kit, photo: bytes, capture="c1", seq0=2):
    bodies = payloads.photo_chunk_bodies(capture_id=capture, halaman=1, photo=photo, chunk_bytes=1000)
    return [
        payloads.build(
            kit,
            kind="photo",
            msg_id=payloads.photo_chunk_id("kit-1", capture, b["index"]),
            kit_id="kit-1",
            kode_wilayah=KW,
            tps=TPS,
            seq=seq0 + b["index"],
            created_at=2.0,
            body=b,
            epoch=EPOCH,
        )
        for b in bodies
    ]


def test_connection_lost_mid_batch_then_reconnects(pg_cluster, pg_url, kit):
    import psycopg

    store = CollectorStore(pg_url)
    try:
        assert _process(store, kit, _reading(kit, seq=1, capture="c1")).status == "stored"
        store.begin()
        assert store.process(T_READING, _reading(kit, seq=2, capture="c2"), _registry(kit)).status == "stored"
        assert _terminate(pg_cluster, pg_url) == 1
        with pytest.raises(psycopg.OperationalError):
            store.process(T_READING, _reading(kit, seq=3, capture="c3"), _registry(kit))
        store.rollback()  # what Collector does: no exception, nothing acked
        # the next batch reconnects; the kits' resends are stored once
        assert _process(store, kit, _reading(kit, seq=2, capture="c2")).status == "stored"
        assert _process(store, kit, _reading(kit, seq=3, capture="c3")).status == "stored"
        assert _process(store, kit, _reading(kit, seq=1, capture="c1")).status == "duplicate"
        # lost between batches: begin() reconnects by itself
        _terminate(pg_cluster, pg_url)
        assert _process(store, kit, _reading(kit, seq=4, capture="c4")).status == "stored"
        assert store.counts()["readings"] == 4 and store.gaps("kit-1") == []
    finally:
        store.close()


def test_commit_of_an_aborted_batch_raises(pg_url, kit):
    """PostgreSQL answers ROLLBACK to COMMIT after an error: the store must not let that be acked."""
    store = CollectorStore(pg_url)
    try:
        store.begin()
        store.process(T_READING, _reading(kit), _registry(kit))
        with pytest.raises(Exception):  # noqa: B017 - any error aborts the transaction
            store.conn.execute("SELECT 1 / 0")
        with pytest.raises(StoreError, match="not stored"):
            store.commit()
        assert store.counts()["readings"] == 0
    finally:
        store.close()


def test_unreachable_database_is_a_clear_error(pg_cluster, pg_url, kit):
    dead = f"postgresql://tpskit@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(StoreUnavailable, match="unreachable"):
        CollectorStore(dead)
    store = CollectorStore(pg_url, reconnect_timeout_s=0.5, reconnect_max_s=0.1)
    try:
        store.url = dead  # the server went away for good
        _terminate(pg_cluster, pg_url)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unreachable for"):
            store.begin()
        assert time.monotonic() - started < 10
    finally:
        store.close()


def test_password_only_from_a_file(pg_cluster, pg_url, monkeypatch, tmp_path):
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    no_file = pg_url.split("?")[0]
    with pytest.raises(StoreUnavailable, match="password"):
        CollectorStore(no_file)
    monkeypatch.setenv("PGPASSFILE", str(pg_cluster.passfile))  # libpq's usual variable
    CollectorStore(no_file).close()


def test_two_collectors_on_one_database(pg_url, kit):
    """Shared subscription: two collectors store at once; duplicates and split photos stay correct."""
    a, b = CollectorStore(pg_url), CollectorStore(pg_url)
    reg = _registry(kit)
    try:
        # the same message at both collectors at the same time: stored once, acked by both
        msg = _reading(kit, seq=1, capture="c1")
        a.begin()
        assert a.process(T_READING, msg, reg).status == "stored"
        got = {}

        def other():
            b.begin()
            got["b"] = b.process(T_READING, msg, reg)  # waits for a's transaction
            b.commit()

        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.3)
        assert t.is_alive()  # b waits on the row a inserted
        a.commit()
        t.join(10)
        assert got["b"].status == "duplicate" and got["b"].ack
        # a photo whose chunks are committed by both at once: neither transaction sees it complete
        photo = os.urandom(1500)
        first, last = _photo_messages(kit, photo, capture="c2", seq0=3)
        a.begin()
        b.begin()
        assert a.process(T_READING, _reading(kit, seq=2, capture="c2", photo=photo), reg).status == "stored"
        assert a.process(T_PHOTO, first, reg).status == "stored"
        assert b.process(T_PHOTO, last, reg).status == "stored"
        a.commit()
        assert a.counts()["photos"] == 0
        b.commit()  # b looks again after its commit and assembles it
        assert bytes(a.conn.execute("SELECT jpeg FROM photos").fetchone()[0]) == photo
        assert a.counts() == {"messages": 4, "readings": 2, "photos": 1, "rejects": 0}
        assert a.conn.execute("SELECT COUNT(*) FROM photo_chunks").fetchone()[0] == 0
    finally:
        a.close()
        b.close()


def test_collector_on_postgresql_end_to_end(pg_cluster, pg_url, mosquitto, tmp_path, caplog):
    """Kit → mosquitto → Collector → PostgreSQL → ack; a batch that fails is not acked, and the resend is
    stored once; readiness is readable by `tpskit fleet` and gaps by `tpskit collector --gaps`."""
    import psycopg

    from comms import cmd_collector
    from firmware import fleet

    key = generate_key()
    collector = start_collector(key, mosquitto, tmp_path, client_id="collector-pg", db_path=pg_url)
    courier = make_courier(key, mosquitto, tmp_path)

    def submit(i, photo=None):
        courier.submit_reading(
            capture_id=f"c{i:03d}",
            halaman=1,
            reading={"paslon": {"01": i}},
            photo_jpeg=photo,
            taken_at=time.time(),
            time_source="rtc",
        )

    def readings():
        with psycopg.connect(pg_url) as conn:
            return [r[0] for r in conn.execute("SELECT capture_id FROM readings ORDER BY capture_id")]

    try:
        assert collector.connected.wait(10)
        courier.start()
        for i in range(8):
            submit(i, photo=os.urandom(2500) if i % 4 == 0 else None)
        courier.publish_retained("readiness", {"verdict": "SIAP", "ready": True})
        assert _wait(lambda: courier.status()["queued"] == 0 and courier.status()["sent"] == 0), (
            courier.status()
        )
        # a batch fails half way (the collector's connection dies while it waits on a lock): no ack
        with pg_cluster.admin(_dbname(pg_url)) as admin:
            admin.execute("BEGIN")
            admin.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
            acked = courier.status()["acked"]
            submit(8)
            waiting = "SELECT pid FROM pg_stat_activity WHERE application_name = 'tpskit-collector' " \
                "AND wait_event_type = 'Lock'"  # fmt: skip
            assert _wait(lambda: admin.execute(waiting).fetchall() != [], 15)
            assert _terminate(pg_cluster, pg_url) >= 1
            admin.execute("ROLLBACK")
        assert _wait(lambda: "not stored; the kits will resend" in caplog.text, 10)
        assert "c008" not in readings() and courier.status()["acked"] == acked  # not stored, not acked
        submit(9)
        assert _wait(lambda: courier.status()["queued"] == 0 and courier.status()["sent"] == 0), (
            courier.status()
        )
    finally:
        courier.close()
        collector.stop()
    assert readings() == [f"c{i:03d}" for i in range(10)]  # every reading once, resend included
    store = CollectorStore(pg_url)
    try:
        assert store.counts()["photos"] == 2 and store.counts()["rejects"] == 0
        assert store.gaps("kit-1") == []
    finally:
        store.close()
    obs = fleet.from_collector_db(pg_url)
    assert [(o.kit_id, o.body.get("verdict")) for o in obs] == [("kit-1", "SIAP")]
    parser = argparse.ArgumentParser()
    cmd_collector.add_arguments(parser)
    args = parser.parse_args(["--kits", str(tmp_path / "kits.json"), "--db", pg_url, "--gaps"])
    assert cmd_collector.run(args) == 0


def test_cli_refuses_an_unreachable_database_before_subscribing(tmp_path, capsys):
    pytest.importorskip("psycopg")
    from comms import cmd_collector

    parser = argparse.ArgumentParser()
    cmd_collector.add_arguments(parser)
    from comms.signing import registry_add

    kits = tmp_path / "kits.json"  # a registry with a kit: an empty one is refused first, by itself
    registry_add(kits, "kit-1", generate_key(), kode_wilayah=KW, tps=TPS)
    dead = f"postgresql://tpskit@127.0.0.1:{free_port()}/collector"
    args = parser.parse_args(["--kits", str(kits), "--db", dead, "--broker", "mqtt://127.0.0.1:1"])
    assert cmd_collector.run(args) == 2
    assert "unreachable" in capsys.readouterr().err
    args = parser.parse_args(
        ["--kits", str(kits), "--db", "postgresql:///collector", "--broker", "mqtt://x:1"]
    )
    assert cmd_collector.run(args) == 2
    assert "postgresql://USER@HOST:PORT/DBNAME" in capsys.readouterr().err


def test_role_with_data_rights_only(pg_cluster, pg_url, kit):
    """Production may give the collectors INSERT/SELECT/UPDATE/DELETE only: fine once the tables exist,
    a clear error when they do not."""
    with pg_cluster.admin(_dbname(pg_url)) as admin:
        admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        admin.execute("DO $$ BEGIN CREATE ROLE limited LOGIN PASSWORD 'pw'; "
                      "EXCEPTION WHEN duplicate_object THEN NULL; END $$")  # fmt: skip
    with open(pg_cluster.passfile, "a", encoding="utf-8") as f:
        f.write(f"127.0.0.1:{pg_cluster.port}:*:limited:pw\n")
    limited = pg_url.replace(f"{pg_cluster.user}@", "limited@")
    with pytest.raises(StoreUnavailable, match="may not create the tables"):
        CollectorStore(limited)
    CollectorStore(pg_url).close()  # the owner creates them once
    with pg_cluster.admin(_dbname(pg_url)) as admin:
        admin.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO limited")
    store = CollectorStore(limited)
    try:
        assert _process(store, kit, _reading(kit)).status == "stored"
        assert _process(store, kit, b"[1]").status == "rejected"
        assert store.counts() == {"messages": 1, "readings": 1, "photos": 0, "rejects": 1}
    finally:
        store.close()


@pytest.mark.parametrize("command", ["results", "readiness"])
def test_fleet_with_a_role_that_may_not_read_the_tables_says_what_to_grant(pg_cluster, pg_url, capsys,
                                                                          command):
    """docs/broker-cluster.md: operators read the collector database with their own role
    (postgresql://operator@…). One without SELECT on the tables ended `tpskit fleet` in a traceback."""
    from firmware import cli

    CollectorStore(pg_url).close()
    with pg_cluster.admin(_dbname(pg_url)) as admin:
        admin.execute("DO $$ BEGIN CREATE ROLE operator LOGIN PASSWORD 'pw'; "
                      "EXCEPTION WHEN duplicate_object THEN NULL; END $$")  # fmt: skip
    with open(pg_cluster.passfile, "a", encoding="utf-8") as f:
        f.write(f"127.0.0.1:{pg_cluster.port}:*:operator:pw\n")
    operator = pg_url.replace(f"{pg_cluster.user}@", "operator@")
    assert cli.main(["fleet", command, "--collector-db", operator]) == 2
    err = capsys.readouterr().err
    assert "GRANT SELECT" in err and "operator" in err and "not a tpskit collector database" not in err


def test_collector_waits_for_its_database_and_keeps_the_url(pg_url, tmp_path):
    """A PostgreSQL URL is kept as given (no Path folding of '//'); while the database cannot be reached
    the worker retries instead of dying, and stop() ends it."""
    dead = f"postgresql://tpskit@127.0.0.1:{free_port()}/nothing"
    registry = tmp_path / "kits.json"
    registry.write_text("{}")
    col = Collector(broker_url=f"mqtt://127.0.0.1:{free_port()}", db_path=dead, registry=registry)
    assert col.db_path == dead
    worker = threading.Thread(target=col._work, daemon=True)
    worker.start()
    time.sleep(1.0)
    assert worker.is_alive()  # retrying, not crashed
    col._stop.set()
    worker.join(10)
    assert not worker.is_alive()
