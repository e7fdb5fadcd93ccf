"""End to end over a real mosquitto: outage, SIGKILLed kit, readiness, heartbeats, TLS-less loopback."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comms.collector import CollectorStore
from comms.outbox import OutboxFull
from comms.signing import (
    generate_key,
    load_or_create_private_key,
    public_key_b64,
    public_key_pem,
    registry_add,
)
from tests.delivery_helpers import KW, TPS, shipped_message_size_limit, start_collector
from tests.delivery_helpers import make_courier as _courier
from tests.delivery_helpers import wait_for as _wait

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def setup(tmp_path, mosquitto):
    key = generate_key()
    collector = start_collector(key, mosquitto, tmp_path, client_id="collector-test")
    yield key, collector, mosquitto, tmp_path
    collector.stop()


def _submit(courier, i, photo=None):
    return courier.submit_reading(
        capture_id=f"c{i:04d}",
        halaman=1,
        reading={"paslon": {"01": i}},
        photo_jpeg=photo,
        taken_at=time.time(),
        time_source="rtc",
    )


def _readings(tmp_path):
    with sqlite3.connect(tmp_path / "collector.db") as db:
        return [r[0] for r in db.execute("SELECT capture_id FROM readings ORDER BY rowid")]


def test_outage_then_everything_in_order_exactly_once(setup):
    key, collector, broker, tmp_path = setup
    courier = _courier(key, broker, tmp_path).start()
    try:
        for i in range(10):
            _submit(courier, i)
        assert _wait(lambda: courier.status()["acked"] == 10, 30)
        broker.stop()
        assert _wait(lambda: not courier.status()["connected"], 10)
        for i in range(10, 40):
            _submit(courier, i, photo=os.urandom(5000) if i % 10 == 0 else None)
        assert courier.status()["queued"] >= 30
        time.sleep(1.0)
        broker.start()
        assert _wait(lambda: courier.status()["queued"] == 0 and courier.status()["sent"] == 0, 60), (
            courier.status()
        )
        st = courier.status()
        assert st["connected"] and st["oldest_unsent_age_s"] is None
    finally:
        courier.close()
    got = _readings(tmp_path)
    assert got == [f"c{i:04d}" for i in range(40)]  # in order, exactly once
    store = CollectorStore(tmp_path / "collector.db")
    assert store.counts()["photos"] == 3
    assert store.gaps("kit-1") == []
    # heartbeat and retained status reached the collector
    assert store.conn.execute("SELECT COUNT(*) FROM kit_heartbeat").fetchone()[0] == 1
    assert _wait(lambda: store.conn.execute("SELECT state FROM kit_status").fetchone()[0] == "offline", 10)


def test_readiness_retained_and_recorded(setup):
    key, collector, broker, tmp_path = setup
    with _courier(key, broker, tmp_path) as courier:
        mid = courier.publish_retained("readiness", {"verdict": "SIAP", "checks": {"camera": "ok"}})
        assert _wait(lambda: courier.status()["acked"] == 1, 30)
    store = CollectorStore(tmp_path / "collector.db")
    row = store.conn.execute("SELECT message_id, body FROM kit_readiness WHERE kit_id='kit-1'").fetchone()
    assert row[0] == mid and "SIAP" in row[1]


def _retained(broker, topic: str, timeout: float = 5.0) -> list:
    """The retained messages a fresh subscriber to *topic* gets (its own client, subscribed now)."""
    from comms.courier import make_mqtt_client, parse_broker_url

    host, port, tls = parse_broker_url(broker.url)
    got = []
    client = make_mqtt_client(client_id=f"fresh-{time.time_ns()}", protocol="mqtt5", tls=tls)
    client.on_message = lambda _c, _u, msg: got.append(msg)
    client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
    client.connect(host, port)
    client.loop_start()
    try:
        _wait(lambda: got, timeout)
        time.sleep(0.2)  # a second retained copy would have come by now
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def test_heartbeat_is_retained_for_a_fresh_subscriber(setup):
    """The courier publishes its heartbeat retained: a subscriber that comes after it (tpskit fleet readiness
    --broker) gets the kit's latest state and faults, while the collector still gets every heartbeat live
    through its shared subscription."""
    key, collector, broker, tmp_path = setup
    info = {"state": "ready", "faults": {}}
    with _courier(key, broker, tmp_path, heartbeat_s=300) as courier:
        courier.heartbeat_info(lambda: dict(info))
        assert _wait(lambda: courier.status()["connected"], 10)
        store = CollectorStore(tmp_path / "collector.db")
        beat = "SELECT body FROM kit_heartbeat WHERE kit_id = 'kit-1'"
        assert _wait(lambda: store.conn.execute(beat).fetchone() is not None, 10)
        info.update(state="fault", faults={"storage": "Read-only file system"})
        courier.heartbeat()  # sent at once, not after heartbeat_s
        assert _wait(lambda: json.loads(store.conn.execute(beat).fetchone()[0])["state"] == "fault", 10)
        store.close()
    got = _retained(broker, f"tpskit/v1/{KW}/{TPS}/heartbeat")
    assert len(got) == 1 and got[0].retain
    env = json.loads(got[0].payload)
    assert env["kind"] == "heartbeat" and env["kit_id"] == "kit-1"
    assert env["body"]["state"] == "fault" and env["body"]["faults"] == {"storage": "Read-only file system"}


def test_submit_is_idempotent_and_full_refuses(setup):
    key, collector, broker, tmp_path = setup
    courier = _courier(key, broker, tmp_path, max_bytes=1_000_000)  # not started: nothing is sent
    try:
        assert _submit(courier, 1) == _submit(courier, 1)
        assert courier.status()["queued"] == 1
        big = os.urandom(400_000)
        _submit(courier, 2, photo=big)
        with pytest.raises(OutboxFull):
            _submit(courier, 3, photo=big)
        st = courier.status()
        assert not courier.has_capture("c0003") and courier.has_capture("c0002")
        assert st["bytes"] <= 1_000_000 and st["queued"] > 2
        # once delivered, the space is usable again and nothing was lost
        courier.start()
        assert _wait(lambda: courier.status()["queued"] == 0 and courier.status()["sent"] == 0, 60)
        _submit(courier, 3, photo=big)
        assert _wait(lambda: courier.status()["queued"] == 0 and courier.status()["sent"] == 0, 60)
    finally:
        courier.close()
    assert _readings(tmp_path) == ["c0001", "c0002", "c0003"]
    assert CollectorStore(tmp_path / "collector.db").counts()["photos"] == 2


def _fakekit(tmp_path, key_path, broker, *args: str) -> list[str]:
    """The command line of ``comms.fakekit`` (a kit process that can be SIGKILLed) for this test's kit."""
    db = str(tmp_path / "tpskit.db")
    kit = ["--db", db, "--key", str(key_path), "--broker", broker.url]
    return [sys.executable, "-m", "comms.fakekit", *kit, *args]


def test_kit_sigkilled_at_random_points(setup):
    key, collector, broker, tmp_path = setup
    key_path = tmp_path / "kit.key"
    key_path.write_text("")
    key_path.unlink()
    # the fake kit uses its own key file: register it
    kit_key = load_or_create_private_key(key_path)
    registry_add(tmp_path / "kits.json", "kit-1", kit_key.verify_key, kode_wilayah=KW, tps=TPS)
    time.sleep(1.2)  # the collector reloads the registry when it changes
    n = 120
    cmd = _fakekit(
        tmp_path,
        key_path,
        broker,
        "--count",
        str(n),
        "--interval",
        "0.01",
        "--photo-every",
        "10",
        "--ack-timeout",
        "1.5",
        "--timeout",
        "60",
    )
    rng = random.Random(5)
    for _ in range(3):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.4, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _wait(lambda: len(_readings(tmp_path)) >= n, 10)
    got = _readings(tmp_path)
    assert sorted(got) == [f"c{i:06d}" for i in range(n)] and len(set(got)) == n
    for db in ("tpskit.db", "collector.db"):
        with sqlite3.connect(tmp_path / db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = CollectorStore(tmp_path / "collector.db")
    assert store.counts()["photos"] == n // 10
    rejects = store.conn.execute("SELECT reason, detail, message_id FROM rejects").fetchall()
    assert rejects == []


def test_last_will_marks_a_killed_kit_offline(setup):
    key, collector, broker, tmp_path = setup
    key_path = tmp_path / "kit.key"
    kit_key = load_or_create_private_key(key_path)
    registry_add(tmp_path / "kits.json", "kit-1", kit_key.verify_key, kode_wilayah=KW, tps=TPS)
    time.sleep(1.2)  # registry reload
    cmd = _fakekit(
        tmp_path,
        key_path,
        broker,
        "--count",
        "1",
        "--linger",
        "60",
        "--timeout",
        "30",
    )
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline()  # all acked, still connected
        store = CollectorStore(tmp_path / "collector.db")

        def state():
            row = store.conn.execute("SELECT state, reason FROM kit_status WHERE kit_id='kit-1'").fetchone()
            return tuple(row) if row else None

        assert _wait(lambda: state() == ("online", None), 10)
        proc.send_signal(signal.SIGKILL)
        assert _wait(lambda: state() == ("offline", "lost"), 10), state()
    finally:
        proc.kill()
        proc.wait()


def test_signed_acks_only_count_from_the_collector_key(tmp_path, mosquitto):
    key, col_key = generate_key(), generate_key()
    collector = start_collector(key, mosquitto, tmp_path, client_id="collector-signed", ack_key=col_key)
    trusting = _courier(key, mosquitto, tmp_path, collector_keys=[public_key_pem(col_key)])
    wary = _courier(
        key,
        mosquitto,
        tmp_path,
        db_path=tmp_path / "other.db",
        client_id="kit-1-other",
        collector_keys=[public_key_b64(generate_key())],
    )
    try:
        assert collector.connected.wait(10)
        _submit(trusting, 1)
        wary.submit_reading(
            capture_id="w1", halaman=1, reading={}, photo_jpeg=None, taken_at=1.0, time_source="rtc"
        )
        trusting.start()
        wary.start()
        assert _wait(lambda: trusting.status()["acked"] == 1, 30)
        assert _wait(lambda: "ack" in (wary.status()["last_error"] or ""), 30)
        assert wary.status()["acked"] == 0  # stored at the collector, but the ack is not trusted
    finally:
        trusting.close()
        wary.close()
        collector.stop()


def test_link_thread_outlives_an_outbox_it_cannot_open(setup, monkeypatch):
    """The link thread opens its own outbox connection; a database it cannot open yet (locked beyond the busy
    timeout, disk trouble) is retried with backoff: the thread (and with it the watchdog pings) lives on,
    the error is reported, and delivery goes on once the outbox opens."""
    import comms.courier as courier_mod

    key, collector, broker, tmp_path = setup
    real = courier_mod.Outbox
    failures = {"left": 2}

    def flaky(*args, **kw):
        if kw.get("synchronous") == "NORMAL" and failures["left"] > 0:  # the link thread's connection only
            failures["left"] -= 1
            raise sqlite3.OperationalError("database is locked")
        return real(*args, **kw)

    monkeypatch.setattr(courier_mod, "Outbox", flaky)
    courier = _courier(key, broker, tmp_path)
    try:
        _submit(courier, 0)
        courier.start()
        assert _wait(lambda: failures["left"] < 2, 10)
        assert courier.is_alive()
        assert _wait(lambda: "cannot open the outbox" in (courier.status()["last_error"] or "")
                     or failures["left"] == 0, 10)
        assert _wait(lambda: courier.status()["acked"] == 1, 30), courier.status()
        assert courier.is_alive() and failures["left"] == 0
        assert courier.status()["last_error"] is None
    finally:
        courier.close()
    assert _readings(tmp_path) == ["c0000"]


def test_a_forged_ack_with_nan_is_ignored_not_a_crash(tmp_path, mosquitto):
    """A kit that checks ack signatures ignores a forged ack; one carrying NaN made the check raise and
    ended the MQTT session (reconnect), each time one came."""
    import paho.mqtt.client as mqtt

    key = generate_key()
    courier = _courier(key, mosquitto, tmp_path, collector_keys=[public_key_b64(generate_key())]).start()
    forger = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    try:
        assert _wait(lambda: courier.status()["connected"], 10)
        connected_at = courier.status()["connected_at"]
        forger.connect(mosquitto.host, mosquitto.port)
        forger.loop_start()
        sig = b'","sig":"' + b"A" * 88
        forged = b'{"at":NaN,"collector":"x","ids":["kit-1:c1:reading"],"kind":"ack' + sig + b'","v":1}'
        forger.publish(f"tpskit/v1/{KW}/{TPS}/ack", forged, qos=1).wait_for_publish(5)
        assert _wait(lambda: "ignored ack" in (courier.status()["last_error"] or ""), 10), courier.status()
        time.sleep(0.5)
        assert courier.status()["connected"] and courier.status()["connected_at"] == connected_at
    finally:
        forger.loop_stop()
        forger.disconnect()
        courier.close()


class _ClockBehind:
    """The kit's ``time`` module after a power cut without an RTC: its clock runs an hour behind."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def time() -> float:
        return time.time() - 3600


def test_newer_status_and_readiness_win_even_when_the_kit_clock_runs_behind(setup, monkeypatch):
    """After a power cut a kit without an RTC may boot with its clock behind. Its new "online" status and
    its new readiness are newer than what the collector holds (the kit's own sequence says so), so they must
    be shown, not stored as stale by the clock."""
    import comms.courier as courier_mod

    key, collector, broker, tmp_path = setup
    store = CollectorStore(tmp_path / "collector.db")

    def shown():
        st = store.conn.execute("SELECT state FROM kit_status WHERE kit_id='kit-1'").fetchone()
        rd = store.conn.execute("SELECT body FROM kit_readiness WHERE kit_id='kit-1'").fetchone()
        return (st[0] if st else None), (json.loads(rd[0])["verdict"] if rd else None)

    with _courier(key, broker, tmp_path) as courier:
        courier.publish_retained("readiness", {"verdict": "BELUM SIAP"})
        assert _wait(lambda: courier.status()["acked"] == 1, 30)
        assert _wait(lambda: shown() == ("online", "BELUM SIAP"), 10), shown()
    assert _wait(lambda: shown() == ("offline", "BELUM SIAP"), 10), shown()
    monkeypatch.setattr(courier_mod, "time", _ClockBehind())
    with _courier(key, broker, tmp_path) as courier:
        courier.publish_retained("readiness", {"verdict": "SIAP"})
        assert _wait(lambda: courier.status()["acked"] == 2, 30)
        assert _wait(lambda: shown() == ("online", "SIAP"), 10), shown()
    store.close()


def test_no_puback_is_kept_for_heartbeats_and_status(tmp_path, mosquitto, monkeypatch):
    """A real broker PUBACKs heartbeats and the online status after publish() returned: the session must
    not keep any of them (they would pile up for the whole session, and after 65,535 publishes one could be
    matched to a row that reuses its message id)."""
    import comms.courier as courier_mod

    sessions, pubacks = [], []

    class Recorded(courier_mod._Session):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            sessions.append(self)

        def on_publish(self, client, userdata, mid, reason_code, properties):
            pubacks.append(mid)
            super().on_publish(client, userdata, mid, reason_code, properties)

    monkeypatch.setattr(courier_mod, "_Session", Recorded)
    with _courier(generate_key(), mosquitto, tmp_path, heartbeat_s=0.1) as courier:
        assert _wait(lambda: courier.status()["connected"], 10)
        assert _wait(lambda: len(pubacks) >= 10, 10)  # the online status and heartbeats, PUBACKed
        early = dict(sessions[0].early)
    assert len(sessions) == 1 and early == {}


def test_the_largest_chunks_pass_a_broker_with_the_shipped_size_limit(tmp_path, mosquitto_factory):
    """With the message_size_limit of comms/mosquitto/mosquitto.conf, a photo in chunks of the largest size
    the courier allows arrives whole (a larger chunk is refused by that broker and sent again for ever)."""
    from comms import payloads

    broker = mosquitto_factory(extra_conf=f"message_size_limit {shipped_message_size_limit()}")
    key = generate_key()
    collector = start_collector(key, broker, tmp_path, client_id="collector-size")
    courier = _courier(key, broker, tmp_path, chunk_bytes=payloads.MAX_CHUNK_BYTES).start()
    try:
        _submit(courier, 0, photo=os.urandom(2 * payloads.MAX_CHUNK_BYTES + 1000))
        assert _wait(lambda: courier.status()["acked"] == 4, 30), courier.status()
    finally:
        courier.close()
        collector.stop()
    assert CollectorStore(tmp_path / "collector.db").counts()["photos"] == 1
