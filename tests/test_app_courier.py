"""The Kit loop with the real Courier, a real mosquitto and the reference collector: a press ends in the
collector's database, and a capture stored while the broker is down is delivered after a restart."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from tests.kit_helpers import KitHarness, make_config, write_photo

pytestmark = pytest.mark.broker


def _setup(tmp_path, broker_url):
    from comms.collector import Collector
    from comms.courier import Courier
    from comms.signing import load_or_create_private_key, registry_add

    state = tmp_path / "state"
    photos = tmp_path / "in"
    photos.mkdir()
    cfg = make_config(state, photos, mqtt={"url": broker_url, "heartbeat_s": 10, "backoff_max_s": 1.0})
    key = load_or_create_private_key(cfg.signing_key_path)
    registry = tmp_path / "kits.json"
    registry_add(registry, cfg.kit.kit_id, key, kode_wilayah=cfg.kit.kode_wilayah, tps=cfg.kit.tps)
    collector_db = tmp_path / "collector.db"
    collector = Collector(broker_url=broker_url, db_path=collector_db, registry=registry)

    def courier():
        return Courier.from_config(cfg, signing_key=key, backoff_base_s=0.2, ack_timeout_s=2.0)

    return cfg, photos, collector, collector_db, courier


def _wait_readings(db, n, timeout=20):
    deadline = time.monotonic() + timeout
    rows = []
    while time.monotonic() < deadline:
        if db.exists():
            conn = sqlite3.connect(db)
            try:
                sql = "SELECT capture_id, halaman, reading FROM readings ORDER BY seq"
                rows = conn.execute(sql).fetchall()
            except sqlite3.OperationalError:
                rows = []
            conn.close()
            if len(rows) >= n:
                return rows
        time.sleep(0.1)
    return rows


def _stored_before_start(cfg, photos, *, status: str, page: int, time_source: str):
    """A capture committed by an earlier run of the kit (photo and row), not yet in the outbox."""
    from firmware.store import CaptureStore

    jpeg = write_photo(photos / "01.jpg", 220)
    store = CaptureStore(cfg.paths.state_dir, volatile_ok=True)
    try:
        return store.save(jpeg=jpeg, status=status, reading={"page": page, "status": status, "reasons": []},
                          taken_at=time.time(), time_source=time_source)
    finally:
        store.close()


def _wait_readiness(db, timeout=20.0):
    """(kit_id, body) of the readiness the collector stored, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            conn = sqlite3.connect(db)
            try:
                row = conn.execute("SELECT kit_id, body FROM kit_readiness").fetchone()
            except sqlite3.OperationalError:
                row = None
            finally:
                conn.close()
            if row is not None:
                return row[0], json.loads(row[1])
        time.sleep(0.1)
    return None


def test_press_reaches_the_collector(tmp_path, mosquitto):
    cfg, photos, collector, collector_db, courier = _setup(tmp_path, mosquitto.url)
    write_photo(photos / "01.jpg", 220)
    write_photo(photos / "02.jpg", 10)  # retake: stored, never sent
    collector.start()
    try:
        with KitHarness(cfg, courier=courier()) as h:
            h.press()
            v1 = h.verdict()
            h.press()
            assert h.verdict().pattern == "retake"
            rows = _wait_readings(collector_db, 1)
        assert [r[0] for r in rows] == [v1.record.id]
        assert rows[0][1] == 1
        time.sleep(0.5)
        assert len(_wait_readings(collector_db, 1, timeout=1)) == 1
    finally:
        collector.stop()


def test_stored_while_broker_down_is_delivered_after_restart(tmp_path, mosquitto):
    cfg, photos, collector, collector_db, courier = _setup(tmp_path, mosquitto.url)
    write_photo(photos / "01.jpg", 220)
    write_photo(photos / "02.jpg", 220)
    collector.start()
    try:
        mosquitto.stop()
        with KitHarness(cfg, courier=courier()) as h:
            h.press()
            first = h.verdict()
            assert first.pattern == "ok"  # stored and queued; the KPPS is not blocked by the network
        with KitHarness(cfg, courier=courier()) as h2:  # the kit restarts; the network comes back
            mosquitto.start()
            h2.press()
            second = h2.verdict()
            rows = _wait_readings(collector_db, 2, timeout=30)
        assert sorted(r[0] for r in rows) == sorted([first.record.id, second.record.id])
    finally:
        collector.stop()


def test_capture_committed_before_a_crash_is_sent_at_start(tmp_path, mosquitto):
    cfg, photos, collector, collector_db, courier = _setup(tmp_path, mosquitto.url)
    # the kit died after committing this capture, before handing it to the outbox
    rec = _stored_before_start(cfg, photos, status="review", page=3, time_source="unsynced")
    (photos / "01.jpg").unlink()
    collector.start()
    try:
        with KitHarness(cfg, courier=courier()) as h:
            rows = _wait_readings(collector_db, 1)
            assert h.kit.verdicts == 0  # no press needed
        assert [(r[0], r[1]) for r in rows] == [(rec.id, 3)]
        assert h.store.counts()["unsubmitted"] == 0
    finally:
        collector.stop()


def test_boot_publishes_readiness_to_the_collector(tmp_path, mosquitto):
    """At every start the kit queues its retained readiness; without a passing self-test it is not ready."""
    cfg, photos, collector, collector_db, courier = _setup(tmp_path, mosquitto.url)
    collector.start()
    try:
        with KitHarness(cfg, courier=courier()):
            row = _wait_readiness(collector_db)
        assert row is not None, "the boot readiness never reached the collector"
        kit_id, body = row
        assert kit_id == cfg.kit.kit_id
        assert body["trigger"] == "boot"
        assert body["ready"] is False  # no self-test has passed on this kit yet
        assert "selftest" in {f["name"] for f in body["failing"]}
    finally:
        collector.stop()


def test_a_kit_whose_camera_is_down_still_delivers_and_tells_the_operators(tmp_path, mosquitto):
    """The camera failed at start: what was stored before still reaches the collector, and the readiness
    there says the camera is why the kit is not ready (no reboot loop that would stop the sending)."""
    cfg, photos, collector, collector_db, courier = _setup(tmp_path, mosquitto.url)
    rec = _stored_before_start(cfg, photos, status="ok", page=1, time_source="ntp")
    collector.start()
    try:
        with KitHarness(cfg, camera=None, courier=courier(), fault_retry_s=60,
                        faults={"camera": "no Camera Module found"}) as h:
            assert h.kit.state == "fault"
            rows = _wait_readings(collector_db, 1)
            row = _wait_readiness(collector_db)
        assert [r[0] for r in rows] == [rec.id]
        assert row is not None
        body = row[1]
        assert body["ready"] is False and body["checks"]["camera"] == "fail"
        assert any(f["name"] == "camera" and "no Camera Module" in f["detail"] for f in body["failing"])
    finally:
        collector.stop()
