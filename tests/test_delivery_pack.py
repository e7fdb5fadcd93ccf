"""Packs: a draining backlog travels several signed envelopes per MQTT message (real mosquitto, real SQLite).

Each envelope keeps its own id, seq and Ed25519 signature: one tampered envelope in a pack is rejected
alone, the others are stored and acked; an outage drains in order, exactly once; a live reading still goes
alone; single (unpacked) messages keep working.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from comms import payloads, topics
from comms.collector import Collector, CollectorStore
from comms.signing import generate_key, public_key_b64, registry_add
from tests.delivery_helpers import KW, TPS, make_courier, start_collector
from tests.delivery_helpers import signed_reading as _reading
from tests.delivery_helpers import wait_for as _wait

PREFIX = topics.DEFAULT_PREFIX


@pytest.fixture
def setup(tmp_path, mosquitto):
    key = generate_key()
    collector = start_collector(key, mosquitto, tmp_path, client_id="collector-pack")
    yield key, collector, mosquitto, tmp_path
    collector.stop()


class Spy:
    """A plain MQTT client that records what crosses the broker on some topics (payloads as sent)."""

    def __init__(self, broker, *filters: str):
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"spy-{time.time_ns()}")
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        for f in filters:
            self.client.subscribe(f, qos=1)
        self.client.loop_start()
        time.sleep(0.3)  # SUBACK

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self.messages.append((msg.topic, msg.payload))

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def acked_ids(self) -> list[str]:
        with self._lock:
            return [i for t, p in self.messages if t.endswith("/ack") for i in json.loads(p)["ids"]]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _courier(key, broker, tmp_path, **kw):
    return make_courier(key, broker, tmp_path, **{"heartbeat_s": 30, **kw})


def _submit(courier, i, photo=None):
    return courier.submit_reading(
        capture_id=f"c{i:04d}",
        halaman=1,
        reading={"paslon": {"01": i, "02": 300 - i}, "sah": 300, "status": "ok"},
        photo_jpeg=photo,
        taken_at=time.time(),
        time_source="rtc",
    )


def _rows(db, sql):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_pack_roundtrip_and_bad_framing():
    key = generate_key()
    envs = [_reading(key, i, f"c{i}") for i in range(1, 4)]
    packed = payloads.pack(envs)
    assert payloads.is_pack(packed) and not payloads.is_pack(envs[0])
    assert payloads.unpack(packed) == envs
    assert len(packed) == sum(map(len, envs)) + payloads.pack_overhead(3)
    for bad in (
        packed.replace(b'"count":3', b'"count":4', 1),  # count does not match
        packed.replace(b'"v":1}', b'"v":9}', 1),  # unknown pack version
        b'{"count":1,"kind":"pack"\n' + envs[0],  # header not JSON
    ):
        with pytest.raises(payloads.MalformedMessage) as exc:
            payloads.unpack(bad)
        assert exc.value.reason == "bad_pack"
    with pytest.raises(ValueError):
        payloads.pack([])


def test_tampered_envelope_in_a_pack_rejected_alone(setup):
    key, collector, broker, tmp_path = setup
    spy = Spy(broker, f"{PREFIX}/{KW}/{TPS}/ack")
    try:
        envs = [_reading(key, i, f"c{i}", value=i) for i in range(1, 6)]
        envs[2] = envs[2].replace(b'"01":3', b'"01":9')  # a changed number: the signature no longer fits
        spy.publish(topics.topic(PREFIX, KW, TPS, "reading"), payloads.pack(envs))
        assert _wait(lambda: len(spy.acked_ids()) >= 4, 20)
        time.sleep(0.3)
        acked = spy.acked_ids()
    finally:
        spy.close()
    good = [payloads.reading_id("kit-1", f"c{i}") for i in (1, 2, 4, 5)]
    assert acked == good  # one ack listing the four stored ids, in order; the tampered one is not acked
    db = tmp_path / "collector.db"
    assert [r[0] for r in _rows(db, "SELECT capture_id FROM readings ORDER BY rowid")] == [
        "c1",
        "c2",
        "c4",
        "c5",
    ]
    assert _rows(db, "SELECT reason, message_id FROM rejects") == [
        ("bad_signature", payloads.reading_id("kit-1", "c3"))
    ]
    # each stored message keeps its own signed bytes (verifiable alone, as if it had come unpacked)
    stored = dict(_rows(db, "SELECT id, payload FROM messages"))
    assert stored[good[0]] == envs[0]


def test_badly_framed_pack_rejected_whole_and_not_redelivered(setup):
    key, collector, broker, tmp_path = setup
    spy = Spy(broker)
    try:
        packed = payloads.pack([_reading(key, 1, "c1"), _reading(key, 2, "c2")])
        spy.publish(topics.topic(PREFIX, KW, TPS, "reading"), packed.replace(b'"count":2', b'"count":3', 1))
        spy.publish(topics.topic(PREFIX, KW, TPS, "reading"), _reading(key, 3, "c3"))  # a single still works
        db = tmp_path / "collector.db"
        assert _wait(lambda: len(_rows(db, "SELECT 1 FROM readings")) == 1, 20)
    finally:
        spy.close()
    assert _rows(db, "SELECT reason FROM rejects") == [("bad_pack",)]
    assert _rows(db, "SELECT capture_id FROM readings") == [("c3",)]
    assert collector.stats["rejected"] == 1


def test_outage_then_packed_drain_in_order_exactly_once(setup):
    key, collector, broker, tmp_path = setup
    spy = None
    courier = _courier(key, broker, tmp_path).start()
    try:
        _submit(courier, 0)
        assert _wait(lambda: courier.unacked_count() == 0, 30)
        broker.stop()
        assert _wait(lambda: not courier.status()["connected"], 10)
        for i in range(1, 301):
            _submit(courier, i, photo=bytes([i % 256]) * 3000 if i % 50 == 0 else None)
        assert courier.status()["queued"] >= 300
        time.sleep(0.5)
        broker.start()
        assert _wait(lambda: courier.unacked_count() == 0, 60), courier.status()
        counters = courier.delivery_counters()
        # live: one more reading after the drain goes alone, at once, as a plain envelope
        spy = Spy(broker, f"{PREFIX}/+/+/reading")
        _submit(courier, 301)
        assert _wait(lambda: courier.unacked_count() == 0, 30)
        assert _wait(lambda: len(spy.messages) == 1, 10)
        live = spy.messages[0][1]
    finally:
        courier.close()
        if spy is not None:
            spy.close()
    assert counters["mqtt_messages"] < counters["envelopes"] / 5  # the backlog went packed
    assert not payloads.is_pack(live) and json.loads(live)["id"] == payloads.reading_id("kit-1", "c0301")
    db = tmp_path / "collector.db"
    got = [r[0] for r in _rows(db, "SELECT capture_id FROM readings ORDER BY rowid")]
    assert got == [f"c{i:04d}" for i in range(302)]  # in order, exactly once
    store = CollectorStore(db)
    try:
        assert store.gaps("kit-1") == [] and store.counts()["photos"] == 6 and store.counts()["rejects"] == 0
    finally:
        store.close()


def test_single_messages_still_work(setup):
    """A kit that does not pack (older firmware, or pack_max_bytes=0) is served exactly as before."""
    key, collector, broker, tmp_path = setup
    spy = Spy(broker, f"{PREFIX}/+/+/reading")
    courier = _courier(key, broker, tmp_path, pack_max_bytes=0)
    for i in range(40):
        _submit(courier, i)
    courier.start()
    try:
        assert _wait(lambda: courier.unacked_count() == 0, 60), courier.status()
        counters = courier.delivery_counters()
    finally:
        courier.close()
        spy.close()
    assert counters["mqtt_messages"] == counters["envelopes"] >= 40
    assert not any(payloads.is_pack(p) for _t, p in spy.messages)
    got = [r[0] for r in _rows(tmp_path / "collector.db", "SELECT capture_id FROM readings ORDER BY rowid")]
    assert got == [f"c{i:04d}" for i in range(40)]


@pytest.mark.parametrize("verify_threads", [0, 2])
def test_packs_checked_inline_or_by_a_pool(tmp_path, mosquitto, verify_threads):
    """Same outcome whoever checks: the worker alone, or a pool splitting the batch (order kept)."""
    key = generate_key()
    registry_add(tmp_path / "kits.json", "kit-1", key.verify_key, kode_wilayah=KW, tps=TPS)
    collector = Collector(
        broker_url=mosquitto.url,
        db_path=tmp_path / "collector.db",
        registry=tmp_path / "kits.json",
        client_id=f"collector-vt{verify_threads}",
        verify_threads=verify_threads,
        batch_wait_s=0.2,  # one batch of several packs
    ).start()
    assert collector.connected.wait(10)
    spy = Spy(mosquitto)
    try:
        envs = [_reading(key, i, f"c{i:03d}", value=i) for i in range(1, 61)]
        envs[37] = envs[37].replace(b'"01":38', b'"01":83')
        for i in range(0, 60, 12):
            spy.client.publish(
                topics.topic(PREFIX, KW, TPS, "reading"), payloads.pack(envs[i : i + 12]), qos=1
            )
        db = tmp_path / "collector.db"
        assert _wait(lambda: len(_rows(db, "SELECT 1 FROM readings")) == 59, 20)
    finally:
        spy.close()
        collector.stop()
    got = [r[0] for r in _rows(db, "SELECT capture_id FROM readings ORDER BY rowid")]
    assert got == [f"c{i:03d}" for i in range(1, 61) if i != 38]
    assert _rows(db, "SELECT reason, message_id FROM rejects") == [
        ("bad_signature", payloads.reading_id("kit-1", "c038"))
    ]


def test_batches_the_database_refused_do_not_stall_the_collector(tmp_path, mosquitto_factory, caplog):
    """mosquitto hands a subscriber at most max_inflight_messages (64 in comms/mosquitto/mosquitto.conf)
    QoS 1 messages it has not PUBACKed. Batches the database refused (disk full) must not hold that window
    for ever: once the database works again the collector stores what comes, and the kits resend the rest
    (nothing of a refused batch was stored or acked end to end)."""
    broker = mosquitto_factory(extra_conf="max_inflight_messages 64")
    key = generate_key()
    collector = start_collector(key, broker, tmp_path, client_id="collector-full")
    db = tmp_path / "collector.db"
    assert _wait(lambda: db.exists() and _rows(db, "SELECT 1 FROM sqlite_master WHERE name = 'messages'"), 10)
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TRIGGER disk_full BEFORE INSERT ON messages "
        "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    conn.close()

    def refused() -> int:
        records = caplog.records
        return sum(r.args[0] for r in records if r.getMessage().endswith("not stored; the kits will resend"))

    spy = Spy(broker)
    topic = topics.topic(PREFIX, KW, TPS, "reading")
    try:
        with caplog.at_level("ERROR", logger="tpskit.comms.collector"):
            for i in range(1, 81):
                spy.client.publish(topic, _reading(key, i, f"c{i:03d}"), qos=1)
            assert _wait(lambda: refused() >= 64, 20)
        conn = sqlite3.connect(db)
        conn.execute("DROP TRIGGER disk_full")
        conn.close()
        spy.publish(topic, _reading(key, 81, "c081"))
        assert _wait(lambda: ("c081",) in _rows(db, "SELECT capture_id FROM readings"), 15)
    finally:
        spy.close()
        collector.stop()


def test_a_kit_file_copied_over_in_a_registry_folder_is_reloaded(tmp_path, mosquitto):
    """A re-provisioned kit (new key) whose <kit_id>.csv is copied over the old one in the registry folder
    is recognised without a restart: cp rewrites the file in place, so the folder's mtime does not change."""
    old, new = generate_key(), generate_key()
    kits = tmp_path / "kits"
    kits.mkdir()
    row = "kit_id,public_key,kode_wilayah,tps\nkit-1,{}," + f"{KW},{TPS}\n"
    (kits / "kit-1.csv").write_text(row.format(public_key_b64(old)))
    collector = Collector(
        broker_url=mosquitto.url, db_path=tmp_path / "collector.db", registry=kits, client_id="collector-dir"
    ).start()
    assert collector.connected.wait(10)
    spy = Spy(mosquitto)
    db = tmp_path / "collector.db"
    try:
        with open(kits / "kit-1.csv", "w", encoding="utf-8") as f:  # in place, as cp does
            f.write(row.format(public_key_b64(new)))
        time.sleep(1.2)  # the collector looks at the registry at most once a second
        spy.publish(topics.topic(PREFIX, KW, TPS, "reading"), _reading(new, 1, "c1"))
        assert _wait(lambda: _rows(db, "SELECT capture_id FROM readings") == [("c1",)], 10), _rows(
            db, "SELECT reason FROM rejects"
        )
    finally:
        spy.close()
        collector.stop()


def test_a_restarted_collector_without_a_client_id_leaves_no_session_behind(tmp_path, mosquitto):
    """Without --client-id every start has a new client id, so a persistent session is never resumed; left
    at the broker it stays in the share group (1 day) and mosquitto keeps handing it its share of the
    readings, which then wait for the kits' resends. Such a collector must not leave a session behind."""
    key = generate_key()
    registry_add(tmp_path / "kits.json", "kit-1", key.verify_key, kode_wilayah=KW, tps=TPS)

    def start() -> Collector:
        db, kits = tmp_path / "collector.db", tmp_path / "kits.json"
        c = Collector(broker_url=mosquitto.url, db_path=db, registry=kits).start()
        assert c.connected.wait(10)
        return c

    start().stop()  # a restart: systemd, an upgrade
    collector = start()
    time.sleep(0.3)  # SUBACK
    spy = Spy(mosquitto)
    db = tmp_path / "collector.db"
    try:
        for i in range(1, 11):
            spy.publish(topics.topic(PREFIX, KW, TPS, "reading"), _reading(key, i, f"c{i:02d}"))
        assert _wait(lambda: len(_rows(db, "SELECT 1 FROM readings")) == 10, 10), _rows(
            db, "SELECT capture_id FROM readings"
        )
    finally:
        spy.close()
        collector.stop()


def test_an_envelope_with_nan_is_rejected_alone_not_the_whole_batch(setup):
    """Canonical JSON has no NaN and UTF-8 no lone surrogate, but the parsers read both: an envelope of a
    registered kit with one and a bad signature (anyone can write one) made the signature check raise, and
    the whole batch (the readings of every kit in it) went unchecked. It is a bad_signature reject."""
    key, collector, broker, tmp_path = setup
    spy = Spy(broker)
    try:
        envs = [_reading(key, i, f"c{i}", value=i) for i in range(1, 5)]
        envs[1] = envs[1].replace(b'"created_at":2.0', b'"created_at":NaN')
        envs[2] = envs[2].replace(b'"suara"', b'"\\ud800"')  # a lone surrogate: no UTF-8 either
        spy.publish(topics.topic(PREFIX, KW, TPS, "reading"), payloads.pack(envs))
        db = tmp_path / "collector.db"
        assert _wait(lambda: len(_rows(db, "SELECT 1 FROM readings")) == 2, 10)
    finally:
        spy.close()
    assert _rows(db, "SELECT reason, message_id FROM rejects") == [
        ("bad_signature", payloads.reading_id("kit-1", f"c{i}")) for i in (2, 3)
    ]
