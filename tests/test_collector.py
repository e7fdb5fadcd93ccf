"""Collector store (SQLite and PostgreSQL): valid messages stored once; tampered, unsigned, replayed,
malformed rejected."""

from __future__ import annotations

import json
import os

import pytest

from comms import payloads, topics
from comms.collector import Collector, CollectorStore, precheck
from comms.signing import KitEntry, canonical_json, generate_key
from tests.delivery_helpers import EPOCH, KW, TPS
from tests.delivery_helpers import signed_reading as _reading
from tests.pg import pg_cluster, pg_url  # noqa: F401 (fixtures)

PREFIX = topics.DEFAULT_PREFIX


@pytest.fixture
def kit():
    return generate_key()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """The same behaviours on both backends (PostgreSQL: a throw-away cluster, see tests/pg.py)."""
    if request.param == "postgresql":
        s = CollectorStore(request.getfixturevalue("pg_url"))
    else:
        s = CollectorStore(tmp_path / "collector.db")
    yield s
    s.close()


def _registry(key, **kw):
    return {"kit-1": KitEntry("kit-1", key.verify_key, kw.get("kode_wilayah", KW), kw.get("tps", TPS))}


T_READING = topics.topic(PREFIX, KW, TPS, "reading")


def _process(store, key, payload, topic=T_READING):
    store.begin()
    out = store.process(topic, payload, _registry(key))
    store.commit()
    return out


def _stored(store):
    c = store.counts()
    return c["messages"], c["readings"]


def test_valid_then_duplicate(store, kit):
    msg = _reading(kit)
    assert len(msg) < payloads.READING_MAX_BYTES
    out = _process(store, kit, msg)
    assert out.status == "stored" and out.ack
    again = _process(store, kit, msg)
    assert again.status == "duplicate" and again.ack  # re-acked, not re-stored
    assert _stored(store) == (1, 1)
    row = store.conn.execute("SELECT reading FROM readings").fetchone()
    assert json.loads(row[0]) == {"suara": {"01": 120}}


def _tampered(kit):
    raw = json.loads(_reading(kit))
    raw["body"]["reading"]["suara"]["01"] = 999
    return canonical_json(raw)


def _unsigned(kit):
    raw = json.loads(_reading(kit))
    del raw["sig"]
    return canonical_json(raw)


@pytest.mark.parametrize(
    "make, reason",
    [
        (_tampered, "bad_signature"),
        (_unsigned, "unsigned"),
        (lambda k: _reading(generate_key()), "bad_signature"),  # signed by another key
        (lambda k: _reading(k, kit_id="kit-9"), "unknown_kit"),
        (lambda k: b"\x00not json", "not_json"),
        (lambda k: b"[1, 2]", "not_object"),
        (lambda k: canonical_json({**json.loads(_reading(k)), "v": 2}), "schema"),
        (lambda k: canonical_json({**json.loads(_reading(k)), "tps": 8}), "topic_mismatch"),
        (lambda k: b"{" * 100_000, "not_json"),
        (lambda k: b"x" * (payloads.MAX_MESSAGE_BYTES + 1), "too_large"),
    ],
)
def test_rejects_store_nothing(store, kit, make, reason):
    out = _process(store, kit, make(kit))
    assert out.status == "rejected" and out.reason == reason and not out.ack
    assert _stored(store) == (0, 0)
    assert store.conn.execute("SELECT reason FROM rejects").fetchall() == [(reason,)]


def test_replays_rejected(store, kit):
    assert _process(store, kit, _reading(kit, seq=1, capture="c1")).status == "stored"
    # the same signed message on another TPS's topic
    other = topics.topic(PREFIX, KW, 8, "reading")
    assert _process(store, kit, _reading(kit), topic=other).reason == "topic_mismatch"
    # a different message reusing a sequence number
    assert _process(store, kit, _reading(kit, seq=1, capture="c2")).reason == "replayed_seq"
    # the same capture again under a new sequence number
    assert _process(store, kit, _reading(kit, seq=5, capture="c1", value=7)).reason == "replayed_id"
    # the kit registered for another TPS
    store.begin()
    out = store.process(T_READING, _reading(kit, seq=6, capture="c6"), _registry(kit, tps=9))
    store.commit()
    assert out.reason == "wrong_tps"
    assert _stored(store) == (1, 1)


def test_photo_chunks_assemble_in_any_order(store, kit):
    photo = os.urandom(3500)
    reading = _reading(kit, seq=1, photo=photo)
    chunks = payloads.photo_chunk_bodies(capture_id="c1", halaman=1, photo=photo, chunk_bytes=1000)
    msgs = [
        payloads.build(
            kit,
            kind="photo",
            msg_id=payloads.photo_chunk_id("kit-1", "c1", b["index"]),
            kit_id="kit-1",
            kode_wilayah=KW,
            tps=TPS,
            seq=2 + b["index"],
            created_at=2.0,
            body=b,
            epoch=EPOCH,
        )
        for b in chunks
    ]
    t_photo = topics.topic(PREFIX, KW, TPS, "photo")
    for m in reversed(msgs[1:]):
        assert _process(store, kit, m, topic=t_photo).status == "stored"
    assert store.gaps("kit-1") == [(1, 2)]
    assert _process(store, kit, reading).status == "stored"
    assert store.counts()["photos"] == 0
    assert _process(store, kit, msgs[0], topic=t_photo).status == "stored"
    assert store.conn.execute("SELECT jpeg FROM photos").fetchone()[0] == photo
    assert store.gaps("kit-1") == []
    # a chunk whose data does not match its checksum (signed, so only a kit bug could do this)
    bad = dict(chunks[0], data=payloads.base64.b64encode(b"zz").decode())
    m = payloads.build(
        kit,
        kind="photo",
        msg_id="kit-1:c9:photo:0",
        kit_id="kit-1",
        kode_wilayah=KW,
        tps=TPS,
        seq=50,
        created_at=2.0,
        body=bad,
        epoch=EPOCH,
    )
    assert _process(store, kit, m, topic=t_photo).reason == "bad_chunk"


def test_new_epoch_is_not_a_replay(store, kit):
    """A kit whose database was replaced (same key) restarts at seq 1 in a new epoch: accepted."""
    assert _process(store, kit, _reading(kit, seq=1, capture="c1")).status == "stored"
    body = payloads.reading_body(
        capture_id="c2", halaman=1, reading={}, taken_at=1.0, time_source="rtc", photo=None, chunk_bytes=1000
    )
    m = payloads.build(
        kit,
        kind="reading",
        msg_id=payloads.reading_id("kit-1", "c2"),
        kit_id="kit-1",
        kode_wilayah=KW,
        tps=TPS,
        seq=1,
        created_at=3.0,
        body=body,
        epoch=EPOCH + 1,
    )
    assert _process(store, kit, m).status == "stored"
    no_epoch = canonical_json({k: v for k, v in json.loads(m).items() if k != "epoch"})
    assert _process(store, kit, no_epoch).status == "rejected"


def test_replayed_capture_under_another_id_rejected_and_nothing_kept(store, kit):
    assert _process(store, kit, _reading(kit, seq=1, capture="c1")).status == "stored"
    body = payloads.reading_body(
        capture_id="c1",
        halaman=1,
        reading={"suara": {"01": 999}},
        taken_at=1.0,
        time_source="rtc",
        photo=None,
        chunk_bytes=1000,
    )
    replay = payloads.build(
        kit,
        kind="reading",
        msg_id="kit-1:other-id:reading",
        kit_id="kit-1",
        kode_wilayah=KW,
        tps=TPS,
        seq=2,
        created_at=2.0,
        body=body,
        epoch=EPOCH,
    )
    out = _process(store, kit, replay)
    assert out.status == "rejected" and out.reason == "replayed_capture"
    assert _stored(store) == (1, 1)
    row = store.conn.execute("SELECT message_id, reading FROM readings").fetchone()
    assert row[0] == "kit-1:c1:reading" and json.loads(row[1]) == {"suara": {"01": 120}}
    assert store.counts()["rejects"] == 1


def _signed(kit, kind, body, created_at, *, msg_id, seq=None):
    return payloads.build(
        kit,
        kind=kind,
        msg_id=msg_id,
        kit_id="kit-1",
        kode_wilayah=KW,
        tps=TPS,
        seq=seq,
        created_at=created_at,
        body=body,
        epoch=EPOCH if seq else None,
    )


def test_latest_heartbeat_status_and_readiness_keep_the_newest(store, kit):
    t_hb, t_st, t_rd = (topics.topic(PREFIX, KW, TPS, k) for k in ("heartbeat", "status", "readiness"))

    def hb(at):
        return _signed(kit, "heartbeat", {"battery": at}, at, msg_id=f"kit-1:hb:{at}")

    assert _process(store, kit, hb(5.0), t_hb).status == "latest"
    assert _process(store, kit, hb(4.0), t_hb).status == "stale"
    assert _process(store, kit, hb(5.0), t_hb).status == "stale"  # a tie keeps the stored one
    assert _process(store, kit, hb(6.0), t_hb).status == "latest"
    assert json.loads(store.conn.execute("SELECT body FROM kit_heartbeat").fetchone()[0]) == {"battery": 6.0}

    def status(state, at):
        return _signed(kit, "status", {"state": state}, at, msg_id=f"kit-1:status:{state}:{at}")

    assert _process(store, kit, status("online", 10.0), t_st).status == "latest"
    assert _process(store, kit, status("online", 10.0), t_st).status == "stale"
    assert _process(store, kit, status("offline", 10.0), t_st).status == "latest"  # the will wins a tie
    assert _process(store, kit, status("online", 9.0), t_st).status == "stale"
    assert store.conn.execute("SELECT state FROM kit_status").fetchall() == [("offline",)]

    # the older readiness (by the kit's own seq; seq 2's clock is later) is stored, not shown
    for seq, at in ((1, 20.0), (3, 25.0), (2, 30.0)):
        m = _signed(kit, "readiness", {"ready": at}, at, msg_id=f"kit-1:ready:{seq}", seq=seq)
        assert _process(store, kit, m, t_rd).status == "stored"
    assert store.conn.execute("SELECT message_id FROM kit_readiness").fetchall() == [("kit-1:ready:3",)]


def test_heartbeats_are_retained_yet_collectors_share_them():
    """Heartbeats are published retained (the broker keeps each kit's latest for tpskit fleet readiness
    --broker) but stay on the collectors' shared subscription: a live retained message reaches a shared
    subscription, and a plain one would give every collector every heartbeat. Readiness and status, sent
    rarely, stay plain so a (re)subscribing collector gets the broker's copy."""
    assert set(topics.RETAINED_KINDS) == {"readiness", "heartbeat", "status"}
    filters = dict(topics.collector_filters(PREFIX))
    assert filters == {f"$share/collectors/{PREFIX}/+/+/reading": True,
                       f"$share/collectors/{PREFIX}/+/+/photo": True,
                       f"$share/collectors/{PREFIX}/+/+/heartbeat": True,
                       f"{PREFIX}/+/+/readiness": False, f"{PREFIX}/+/+/status": False}
    assert dict(topics.collector_filters(PREFIX, group=None)) == {
        f"{PREFIX}/+/+/{k}": False for k in ("reading", "photo", "heartbeat", "readiness", "status")}


def test_status_and_readiness_follow_the_kits_sequence_not_its_clock(store, kit):
    """A kit without an RTC may run behind after a power cut: within one sequence (epoch) the kit's session
    number orders its status and its seq orders its readiness; the clock only across epochs (a replaced
    database) and for kits that send no session."""
    t_st, t_rd = (topics.topic(PREFIX, KW, TPS, k) for k in ("status", "readiness"))

    def status(state, session, at, *, reason=None, epoch=EPOCH):
        body = {"state": state, "reason": reason, "session": session}
        msg_id = f"kit-1:status:{epoch}:{session}:{state}:{at}"
        return payloads.build(kit, kind="status", msg_id=msg_id, kit_id="kit-1", kode_wilayah=KW, tps=TPS,
                              seq=None, created_at=at, body=body, epoch=epoch)

    def shown_status():
        return store.conn.execute("SELECT state, reason FROM kit_status").fetchone()

    assert _process(store, kit, status("online", 1, 500.0), t_st).status == "latest"
    assert _process(store, kit, status("offline", 1, 500.0, reason="lost"), t_st).status == "latest"
    # power cut, the kit boots with its clock behind: session 2 is newer
    assert _process(store, kit, status("online", 2, 100.0), t_st).status == "latest"
    # session 1's will, delivered late (or retained again), and an old online with a later clock: older
    assert _process(store, kit, status("offline", 1, 500.0, reason="lost"), t_st).status == "stale"
    assert _process(store, kit, status("online", 1, 900.0), t_st).status == "stale"
    assert _process(store, kit, status("online", 2, 100.0), t_st).status == "stale"
    assert tuple(shown_status()) == ("online", None)
    # in one session offline comes after online, even when NTP set the clock back meanwhile
    assert _process(store, kit, status("offline", 2, 90.0, reason="stopped"), t_st).status == "latest"
    assert tuple(shown_status()) == ("offline", "stopped")
    # a replaced database (new epoch) starts its sessions at 1: only the clock can order the two epochs
    assert _process(store, kit, status("online", 1, 1000.0, epoch=EPOCH + 1), t_st).status == "latest"
    assert tuple(shown_status()) == ("online", None)

    def readiness(seq, at, *, epoch=EPOCH):
        msg_id = f"kit-1:readiness:{epoch}:{seq}"
        return payloads.build(kit, kind="readiness", msg_id=msg_id, kit_id="kit-1", kode_wilayah=KW, tps=TPS,
                              seq=seq, created_at=at, body={"verdict": f"{epoch}:{seq}"}, epoch=epoch)

    def shown_readiness():
        return json.loads(store.conn.execute("SELECT body FROM kit_readiness").fetchone()[0])["verdict"]

    for seq, at, shown in ((5, 100.0, 5), (4, 900.0, 5), (6, 50.0, 6)):
        assert _process(store, kit, readiness(seq, at), t_rd).status == "stored"
        assert shown_readiness() == f"{EPOCH}:{shown}"
    assert _process(store, kit, readiness(1, 2000.0, epoch=EPOCH + 1), t_rd).status == "stored"
    assert shown_readiness() == f"{EPOCH + 1}:1"


def test_reading_id_reused_for_another_capture_is_rejected(store, kit):
    """A signed reading reusing a stored id for another capture: a clear rejection, the batch goes on."""
    assert _process(store, kit, _reading(kit, seq=1, capture="c1")).status == "stored"
    body = payloads.reading_body(
        capture_id="c2", halaman=1, reading={}, taken_at=1.0, time_source="rtc", photo=None, chunk_bytes=1000
    )
    m = _signed(kit, "reading", body, 2.0, msg_id=payloads.reading_id("kit-1", "c1"), seq=2)
    out = _process(store, kit, m)
    assert out.status == "rejected" and out.reason == "replayed_id"
    assert _stored(store) == (1, 1)


def test_store_many_same_outcomes_as_store(store, kit, tmp_path):
    """A pack's readings go in with one executemany; any conflict in the run (duplicate, replayed seq or
    capture, tampered neighbour) gives exactly the outcomes of store() one by one, nothing else kept."""
    from comms.collector_store import precheck

    reg = _registry(kit)
    a, b, c = (_reading(kit, seq=i, capture=f"c{i}") for i in (1, 2, 3))
    tampered = _reading(kit, seq=4, capture="c4").replace(b'"01":120', b'"01":121')
    replay_seq = _reading(kit, seq=2, capture="c9")
    replay_capture = _reading(kit, seq=5, capture="c1").replace(b"c1:reading", b"c1:other")

    def batch(*msgs):
        store.begin()
        out = store.store_many([precheck(PREFIX, T_READING, m, reg) for m in msgs])
        store.commit()
        return [(o.status, o.reason) for o in out]

    assert batch(a, b) == [("stored", ""), ("stored", "")]
    assert batch(b, c, c, tampered, replay_seq) == [
        ("duplicate", ""),
        ("stored", ""),
        ("duplicate", ""),
        ("rejected", "bad_signature"),
        ("rejected", "replayed_seq"),
    ]
    assert _stored(store) == (3, 3)
    assert [s for s, _ in batch(_reading(kit, seq=6, capture="c6"), replay_capture)] == ["stored", "rejected"]
    assert _stored(store) == (4, 4)
    assert store.max_seq[("kit-1", EPOCH)] == 6
    assert store.gaps("kit-1") == [(4, 5)]


def test_worker_survives_a_failed_ack(tmp_path, kit):
    """An error after the commit (here: the ack publish) is logged; the worker goes on with the next batch
    and the stored reading stays stored (the kit resends it and gets a duplicate's ack)."""
    import threading
    import time

    from comms.collector import Collector

    class Client:
        def __init__(self):
            self.pubacks, self.acks, self.fail = [], [], True

        def ack(self, mid, qos):
            self.pubacks.append(mid)

        def publish(self, topic, payload, qos=0):
            if self.fail:
                self.fail = False
                raise RuntimeError("broker gone")
            self.acks.append(payloads.parse_ack(payload))

    col = Collector(broker_url="mqtt://127.0.0.1:1", db_path=tmp_path / "c.db", registry=_registry(kit))
    col._client = client = Client()
    worker = threading.Thread(target=col._work, daemon=True)
    worker.start()
    try:
        col._q.put((T_READING, _reading(kit, seq=1, capture="c1"), 1, 1, col._conn_gen))
        deadline = time.monotonic() + 20
        while client.fail and time.monotonic() < deadline:
            time.sleep(0.01)
        col._q.put((T_READING, _reading(kit, seq=1, capture="c1"), 2, 1, col._conn_gen))
        while not client.acks and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.is_alive()
        assert client.acks == [["kit-1:c1:reading"]]
        assert client.pubacks == [1, 2]
        assert col.stats["stored"] == 1 and col.stats["duplicate"] == 1
    finally:
        col._stop.set()
        worker.join(5)


@pytest.mark.parametrize("bad", [dict(verify_threads=-1), dict(batch_max=0), dict(batch_wait_s=-1.0)])
def test_collector_options_out_of_range_refused(tmp_path, kit, bad):
    from comms.collector import Collector

    with pytest.raises(ValueError, match="out of range"):
        Collector(broker_url="mqtt://127.0.0.1:1", db_path=tmp_path / "c.db", registry=_registry(kit), **bad)


def test_numbers_too_large_for_the_database_are_a_schema_reject(store, kit):
    """A signed message (a stolen kit's key) with a number no database column holds made the insert raise and
    the whole batch, every kit's readings in it, fail each time it came. It is a schema reject alone."""

    def build(*, seq=5, epoch=EPOCH, kind="reading", body=None):
        body = body or {
            "capture_id": "big",
            "halaman": 1,
            "taken_at": 1.0,
            "time_source": "rtc",
            "reading": {},
            "photo": None,
        }
        return payloads.build(
            kit,
            kind=kind,
            msg_id=f"kit-1:big:{kind}",
            kit_id="kit-1",
            kode_wilayah=KW,
            tps=TPS,
            seq=seq,
            created_at=1.0,
            body=body,
            epoch=epoch,
        )

    photo = {"sha256": "0" * 64, "bytes": 2**63, "chunks": 1, "chunk_bytes": 1}
    chunk = {
        "capture_id": "big",
        "halaman": 1,
        "index": 2**31,
        "count": 2**31 + 1,
        "photo_sha256": "0" * 64,
        "chunk_sha256": "0" * 64,
        "data": "",
    }
    bad = [
        build(seq=2**31),
        build(epoch=2**63),
        build(
            body={"capture_id": "big", "taken_at": 1.0, "time_source": "rtc", "reading": {}, "photo": photo}
        ),
        build(kind="photo", body=chunk),
    ]
    store.begin()
    out = store.store_many(
        [precheck(PREFIX, topics.topic(PREFIX, KW, TPS, "reading"), _reading(kit), _registry(kit))]
        + [
            precheck(PREFIX, topics.topic(PREFIX, KW, TPS, json.loads(m)["kind"]), m, _registry(kit))
            for m in bad
        ]
    )
    # a time is a float: one written as a whole number too large for an integer column is stored as such
    late = {"capture_id": "late", "taken_at": 2**64, "time_source": "rtc", "reading": {}, "photo": None}
    out += store.store_many([precheck(PREFIX, T_READING, build(seq=6, body=late), _registry(kit))])
    store.commit()
    assert [(o.status, o.reason) for o in out] == [("stored", "")] + [("rejected", "schema")] * 4 + [
        ("stored", "")
    ]
    assert _stored(store) == (2, 2)
    assert store._x("SELECT taken_at FROM readings WHERE capture_id = 'late'").fetchone()[0] == 2.0**64


def test_a_broken_registry_is_reported_once_per_change_and_the_last_good_one_kept(tmp_path, kit, caplog):
    """The collector looks at its registry every second: a broken one logged an error every second, for as
    long as it stayed broken. Once per change is enough; the last good registry stays in use."""
    from comms.signing import registry_add

    reg = tmp_path / "kits.json"
    registry_add(reg, "kit-1", kit.verify_key, kode_wilayah=KW, tps=TPS)
    col = Collector(broker_url="mqtt://127.0.0.1:1", db_path=tmp_path / "c.db", registry=reg)
    reg.write_text('{"version": 1, "kits": {"kit-2": ')  # an editor saving half a file
    with caplog.at_level("ERROR", logger="tpskit.comms.collector"):
        for _ in range(3):
            col._reload_registry()
    assert len([r for r in caplog.records if "not reloaded" in r.getMessage()]) == 1
    assert set(col._registry) == {"kit-1"}
    registry_add(tmp_path / "fixed.json", "kit-2", kit.verify_key)
    (tmp_path / "fixed.json").replace(reg)
    col._reload_registry()
    assert set(col._registry) == {"kit-2"}


def test_a_database_from_before_epoch_and_session_gets_the_columns(store, kit):
    """Collector databases created before status/readiness were ordered by the kit's counters lack the
    epoch and session columns: they are added at start, and the rows already there keep the clock rule."""
    for table, column in (("kit_readiness", "epoch"), ("kit_status", "epoch"), ("kit_status", "session")):
        store._x(f"ALTER TABLE {table} DROP COLUMN {column}")
    store._x(
        "INSERT INTO kit_status (kit_id, kode_wilayah, tps, state, reason, created_at, received_at) "
        "VALUES ('kit-1', ?, ?, 'offline', 'lost', 500.0, 1.0)",
        (KW, TPS),
    )
    again = CollectorStore(store.url or store.path)
    try:
        online = payloads.build(kit, kind="status", msg_id="kit-1:status:1", kit_id="kit-1", kode_wilayah=KW,
                                tps=TPS, seq=None, created_at=100.0, body={"state": "online", "session": 2},
                                epoch=EPOCH)
        t_st = topics.topic(PREFIX, KW, TPS, "status")
        assert _process(again, kit, online, t_st).status == "stale"  # stored row without a session: clock
        online = payloads.build(kit, kind="status", msg_id="kit-1:status:2", kit_id="kit-1", kode_wilayah=KW,
                                tps=TPS, seq=None, created_at=600.0, body={"state": "online", "session": 2},
                                epoch=EPOCH)
        assert _process(again, kit, online, t_st).status == "latest"
        assert again.conn.execute("SELECT epoch, session FROM kit_status").fetchall() == [(EPOCH, 2)]
    finally:
        again.close()


def test_text_no_database_holds_is_a_schema_reject(store, kit):
    """A signed message (a stolen or broken kit) whose JSON has a lone UTF-16 surrogate escape (``\\ud800``:
    valid JSON, valid signature, but no UTF-8 text) made the insert raise and the whole batch, every kit's
    readings in it, fail each time it came. It is a schema reject alone; the rest of the batch is stored."""
    import base64

    def crafted(kind, body, *, msg_id, seq):
        doc = {"v": 1, "kind": kind, "id": msg_id, "kit_id": "kit-1", "kode_wilayah": KW, "tps": TPS,
               "seq": seq, "epoch": EPOCH, "created_at": 1.0, "body": body}
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")  # \ud800 stays escaped
        sig = base64.b64encode(kit.sign(raw).signature)
        return raw[:-1] + b',"sig":"' + sig + b'"}'

    reading = {"capture_id": "s1", "halaman": 1, "taken_at": 1.0, "time_source": "rtc",
               "reading": {"nama": "\ud800"}, "photo": None}
    bad = [
        ("reading", crafted("reading", reading, msg_id="kit-1:s1:reading", seq=7)),
        ("reading", crafted("reading", {**reading, "capture_id": "s2", "reading": {}},
                            msg_id="kit-1:s2\udfff:reading", seq=8)),
        ("readiness", crafted("readiness", {"ready": True, "x": "\ud800"}, msg_id="kit-1:readiness:0:9",
                              seq=9)),
    ]
    reg = _registry(kit)
    store.begin()
    out = store.store_many(
        [precheck(PREFIX, topics.topic(PREFIX, KW, TPS, kind), m, reg) for kind, m in bad]
        + [precheck(PREFIX, T_READING, _reading(kit), reg)]
    )
    store.commit()
    assert [(o.status, o.reason) for o in out] == [("rejected", "schema")] * 3 + [("stored", "")]
    assert _stored(store) == (1, 1)
    assert store.counts()["rejects"] == 3


def test_times_that_are_not_finite_are_a_schema_reject(store, kit):
    """NaN / Infinity / 1e400 (JSON the kits never write, but valid under a stolen key) as a time: SQLite
    stores NaN as NULL, PostgreSQL as a value above every other, so the two backends picked different
    "newest" readiness and status rows, and an Infinity kept a kit's old row (and its "ready") for ever."""
    import base64

    def crafted(kind, body, *, msg_id, seq, created_at=b"1.5", taken_at=b"2.5"):
        doc = {"v": 1, "kind": kind, "id": msg_id, "kit_id": "kit-1", "kode_wilayah": KW, "tps": TPS,
               "seq": seq, "epoch": EPOCH, "created_at": 12345.5, "body": body}
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        raw = raw.replace(b"12345.5", created_at).replace(b"23456.5", taken_at)
        sig = base64.b64encode(kit.sign(raw).signature)
        return raw[:-1] + b',"sig":"' + sig + b'"}'

    reading = {"capture_id": "t1", "halaman": 1, "taken_at": 23456.5, "time_source": "rtc", "reading": {},
               "photo": None}
    bad = [
        ("readiness", crafted("readiness", {"ready": True}, msg_id="kit-1:readiness:0:7", seq=7,
                              created_at=b"Infinity")),
        ("status", crafted("status", {"state": "online", "session": 1}, msg_id="kit-1:status",
                           seq=None, created_at=b"NaN")),
        ("heartbeat", crafted("heartbeat", {}, msg_id="kit-1:hb", seq=None, created_at=b"1e400")),
        ("reading", crafted("reading", reading, msg_id="kit-1:t1:reading", seq=8, taken_at=b"-1e400")),
    ]
    reg = _registry(kit)
    store.begin()
    out = store.store_many([precheck(PREFIX, topics.topic(PREFIX, KW, TPS, k), m, reg) for k, m in bad])
    store.commit()
    assert [(o.status, o.reason) for o in out] == [("rejected", "schema")] * 4
    assert _stored(store) == (0, 0)


def test_kit_ids_reads_the_index_not_the_messages(tmp_path, kit):
    """``tpskit collector --gaps`` lists the kits first: a scan of the messages table (every photo chunk's
    payload, terabytes at national scale) instead of the (kit_id, epoch, seq) index."""
    s = CollectorStore(tmp_path / "collector.db")
    try:
        _process(s, kit, _reading(kit))
        assert s.kit_ids() == ["kit-1"]
        plan = " ".join(str(r) for r in s._x("EXPLAIN QUERY PLAN " + s.KIT_IDS))
        assert "COVERING INDEX messages_kit_seq" in plan, plan
    finally:
        s.close()


def test_registry_saved_by_a_spreadsheet_with_a_utf8_bom_loads(tmp_path, kit):
    """Excel's "CSV UTF-8" (and Notepad) start the file with a byte-order mark: the header became
    '\\ufeffkit_id' and the collector refused the whole registry ("an entry has no kit_id")."""
    from comms.signing import load_registry, public_key_b64, registry_add

    csv_path = tmp_path / "kits.csv"
    csv_path.write_text(f"kit_id,public_key,kode_wilayah,tps\nkit-1,{public_key_b64(kit)},{KW},{TPS}\n",
                        encoding="utf-8-sig")
    assert load_registry(csv_path)["kit-1"].tps == TPS
    json_path = tmp_path / "kits.json"
    registry_add(json_path, "kit-1", kit, kode_wilayah=KW, tps=TPS)
    json_path.write_text(json_path.read_text(encoding="utf-8"), encoding="utf-8-sig")
    assert load_registry(json_path)["kit-1"].kode_wilayah == KW
    registry_add(json_path, "kit-2", generate_key(), kode_wilayah=KW, tps=TPS + 1)
    assert set(load_registry(json_path)) == {"kit-1", "kit-2"}


def test_gaps_needs_no_registry(tmp_path, kit, capsys):
    """docs/broker-cluster.md: `tpskit collector --gaps --db URL` reads the whole database; the registry plays
    no part in it, so it must not be required (argparse refused the command without --kits)."""
    from firmware import cli

    s = CollectorStore(tmp_path / "collector.db")
    try:
        _process(s, kit, _reading(kit))
    finally:
        s.close()
    assert cli.main(["collector", "--gaps", "--db", str(tmp_path / "collector.db")]) == 0
    assert json.loads(capsys.readouterr().out) == {"kit-1": []}
    assert cli.main(["collector", "--db", str(tmp_path / "collector.db"), "--broker", "mqtt://h:1"]) == 2
    assert "--kits" in capsys.readouterr().err
    # a mistyped path: said, and no empty database is created (as root it would lock the collector out)
    assert cli.main(["collector", "--gaps", "--db", str(tmp_path / "colector.db")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "colector.db").exists()


@pytest.mark.parametrize("content", ["kit database", "empty file"])
def test_gaps_on_a_database_that_is_no_collectors_is_refused_and_left_alone(tmp_path, capsys, content):
    """`--gaps` is a report: given the kit's tpskit.db (or an empty file) by mistake it wrote the collector's
    tables into it and printed {} as if the collector had received nothing."""
    import sqlite3

    from firmware import cli

    db = tmp_path / "tpskit.db"
    db.touch()
    if content == "kit database":
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE outbox (id TEXT PRIMARY KEY, seq INTEGER)")
    before = db.read_bytes()
    assert cli.main(["collector", "--gaps", "--db", str(db)]) == 2
    captured = capsys.readouterr()
    assert "not a tpskit collector database" in captured.err and captured.out == ""
    assert db.read_bytes() == before
    assert cli.main(["collector", "--gaps", "--db", "postgresql:///collector"]) == 2  # the URL's shape first
    assert "postgresql://USER@HOST:PORT/DBNAME" in capsys.readouterr().err


def test_a_reload_that_finds_no_kits_keeps_the_last_registry(tmp_path, kit, caplog):
    """A registry folder emptied or swapped for a wrong one while the collector runs (files moved away, a
    folder of TOML files) must not drop every kit: every message would be rejected as unknown_kit."""
    from comms.signing import registry_add

    folder = tmp_path / "kits"
    folder.mkdir()
    registry_add(folder / "kit-1.json", "kit-1", kit.verify_key, kode_wilayah=KW, tps=TPS)
    col = Collector(broker_url="mqtt://127.0.0.1:1", db_path=tmp_path / "c.db", registry=folder)
    (folder / "kit-1.json").rename(tmp_path / "kit-1.json")
    (folder / "kit-1.toml").write_text('[kit]\nkit_id = "kit-1"\n')
    with caplog.at_level("WARNING", logger="tpskit.comms.collector"):
        col._reload_registry()
    assert set(col._registry) == {"kit-1"}
    assert any(r.levelname == "WARNING" and str(folder) in r.getMessage() for r in caplog.records)


def test_the_collector_command_refuses_a_registry_without_kits(tmp_path, capsys, monkeypatch):
    from firmware import cli

    def started(self):
        raise AssertionError("the collector started with no kits")

    monkeypatch.setattr(Collector, "start", started)

    folder = tmp_path / "kits"
    folder.mkdir()
    (folder / "kit-1.toml").write_text('[kit]\nkit_id = "kit-1"\n')
    for extra in (["--broker", "mqtt://127.0.0.1:1", "--db", str(tmp_path / "c.db")], ["--print-acl"]):
        assert cli.main(["collector", "--kits", str(folder), *extra]) == 2
        err = capsys.readouterr().err
        assert str(folder) in err and "provision --export" in err


def _collector_argv(tmp_path, kit) -> list[str]:
    """``tpskit collector`` with a registry of ``kit`` and a database in ``tmp_path``."""
    from comms.signing import registry_add

    reg = tmp_path / "kits.json"
    registry_add(reg, "kit-1", kit.verify_key, kode_wilayah=KW, tps=TPS)
    return ["collector", "--kits", str(reg), "--broker", "mqtt://127.0.0.1:1", "--db", str(tmp_path / "c.db")]


@pytest.mark.parametrize("bad", [["--kits", "missing.json"], ["--broker", "http://nowhere"],
                                 ["--password-file", "no-password"], ["--ack-key", "broken.key"],
                                 ["--ack-key", "ack.key.pub"]])
def test_bad_arguments_are_refused_before_the_database_is_created(tmp_path, kit, capsys, monkeypatch, bad):
    """A bad --kits (or another bad argument) left an empty collector database behind."""
    from firmware import cli

    monkeypatch.setattr(Collector, "start", lambda self: pytest.fail("the collector started"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.key").write_text("not a key")
    assert cli.main([*_collector_argv(tmp_path, kit), *bad]) == 2  # the last of an option counts
    err = capsys.readouterr().err
    assert "tpskit collector:" in err and "Traceback" not in err
    assert not (tmp_path / "c.db").exists()


def test_a_missing_ack_key_is_created_only_once_the_database_is_usable(tmp_path, kit, capsys, monkeypatch):
    from firmware import cli

    def stop_here(self, **kwargs):
        raise ValueError("stop before the collector runs")

    monkeypatch.setattr(Collector, "__init__", stop_here)
    (tmp_path / "not-a-dir").write_text("")
    argv = [*_collector_argv(tmp_path, kit), "--ack-key", str(tmp_path / "ack.key")]
    assert cli.main([*argv, "--db", str(tmp_path / "not-a-dir" / "c.db")]) == 2  # an unusable database
    assert not (tmp_path / "ack.key").exists()
    assert cli.main(argv) == 2 and "stop before the collector runs" in capsys.readouterr().err
    assert (tmp_path / "ack.key").exists()


def test_the_ack_keys_public_half_is_written_beside_it_for_technicians(tmp_path, kit, capsys, monkeypatch):
    """tpskit-collector.service signs its acks with ack.key; provision --collector-key takes ack.key.pub."""
    from comms.cmd_collector import ack_public_key_path
    from comms.signing import load_private_key, load_public_key, public_key_b64
    from firmware import cli

    def stop_here(self, **kwargs):
        raise ValueError("stop before the collector runs")

    monkeypatch.setattr(Collector, "__init__", stop_here)
    key_path = tmp_path / "ack.key"
    argv = [*_collector_argv(tmp_path, kit), "--ack-key", str(key_path)]
    assert cli.main(argv) == 2
    pub = ack_public_key_path(key_path)
    assert pub == tmp_path / "ack.key.pub" and str(pub) in capsys.readouterr().out
    key = load_private_key(key_path)
    assert load_public_key(pub.read_text()) == key.verify_key
    pub.write_text("stale\n")  # rewritten when it does not match the key
    assert cli.main(argv) == 2
    assert pub.read_text() == public_key_b64(key) + "\n"


def test_add_kit_to_a_registry_that_is_not_a_json_object_is_refused(tmp_path, kit, capsys):
    from comms.signing import public_key_b64
    from firmware import cli

    reg = tmp_path / "kits.json"
    reg.write_text("[1]")
    argv = ["collector", "--kits", str(reg), "--add-kit", "kit-1", "--public-key", public_key_b64(kit)]
    assert cli.main(argv) == 2
    assert '"kits"' in capsys.readouterr().err
    assert reg.read_text() == "[1]"


@pytest.mark.parametrize("db", ["notadb", "folder", "postgresq://u@h/db"])
def test_a_db_that_is_not_a_collector_database_is_refused_without_a_traceback(tmp_path, kit, capsys,
                                                                                monkeypatch, db):
    from comms.signing import registry_add
    from firmware import cli

    monkeypatch.chdir(tmp_path)
    reg = tmp_path / "kits.json"
    registry_add(reg, "kit-1", kit.verify_key, kode_wilayah=KW, tps=TPS)
    (tmp_path / "notadb").write_text("not a database\n")
    (tmp_path / "folder").mkdir()
    argv = ["collector", "--kits", str(reg), "--broker", "mqtt://127.0.0.1:1", "--db", db]
    assert cli.main(argv) == 2
    assert "--db" in capsys.readouterr().err
    assert (tmp_path / "notadb").read_text() == "not a database\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "kits.json", "notadb"]


@pytest.mark.parametrize("exists", [True, False])
def test_the_ack_keys_public_half_given_as_ack_key_is_refused(tmp_path, kit, capsys, monkeypatch, exists):
    """ack.key.pub is a base64 line of 32 bytes like the key itself: given as --ack-key it loaded as a seed,
    and the collector signed its acks with a key no kit knows (and wrote ack.key.pub.pub)."""
    from comms.signing import generate_key, public_key_b64
    from firmware import cli

    monkeypatch.setattr(Collector, "start", lambda self: pytest.fail("the collector started"))
    pub = tmp_path / "ack.key.pub"
    if exists:
        pub.write_text(public_key_b64(generate_key()) + "\n")
    assert cli.main([*_collector_argv(tmp_path, kit), "--ack-key", str(pub)]) == 2
    err = capsys.readouterr().err
    assert "is the public key" in err and str(tmp_path / "ack.key") in err
    assert not (tmp_path / "ack.key.pub.pub").exists() and not (tmp_path / "c.db").exists()
    assert pub.exists() == exists


def test_an_unreachable_broker_is_logged_once_not_silently_retried(tmp_path, kit, caplog):
    """The collector retried an unreachable broker without a word in its log: the operator saw a collector
    'running' that received nothing."""
    import logging
    import socket
    import time

    from comms.collector import Collector

    with socket.socket() as s:  # a loopback port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    col = Collector(broker_url=f"mqtt://127.0.0.1:{port}", db_path=tmp_path / "c.db", registry=_registry(kit),
                    reconnect_max_s=1)
    with caplog.at_level(logging.WARNING, logger="tpskit.comms.collector"):
        col.start()
        try:
            deadline = time.monotonic() + 10
            while "cannot reach the broker" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.5)  # several retries
        finally:
            col.stop()
    said = [r for r in caplog.records if "cannot reach the broker" in r.getMessage()]
    assert len(said) == 1 and f"127.0.0.1:{port}" in said[0].getMessage()
