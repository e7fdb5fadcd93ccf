"""Courier internals without a broker: mid→row mapping, PUBACK failures, backoff, URLs, config."""

from __future__ import annotations

import json
import random
import time
from types import SimpleNamespace

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from comms import payloads
from comms.courier import Backoff, Courier, _Session, parse_broker_url
from comms.outbox import PRIORITY_PHOTO
from comms.signing import generate_key

KW, TPS = "31.71.01.1001", 7


class FakeClient:
    """publish() that reports the PUBACK before it returns (as paho may with its network thread)."""

    def __init__(self, session, *, early: bool, reason: int = 0):
        self.session, self.early, self.reason = session, early, reason
        self.mid = 0
        self.published: list[tuple[int, str]] = []
        self.envelopes: list[list[str]] = []  # message ids in each MQTT message (a pack holds several)

    def publish(self, topic, payload, qos=0, retain=False):
        self.mid += 1
        self.published.append((self.mid, topic))
        parts = payloads.unpack(payload) if payloads.is_pack(payload) else [payload]
        self.envelopes.append([json.loads(p)["id"] for p in parts])
        if self.early:
            self.puback(self.mid)
        return SimpleNamespace(mid=self.mid, rc=0)

    def puback(self, mid):
        rc = ReasonCode(PacketTypes.PUBACK, identifier=self.reason)
        self.session.on_publish(self, None, mid, rc, None)


def _kit_courier(db, **options) -> Courier:
    """kit-1's courier over the outbox ``db``, with a new key and a broker nobody listens on."""
    return Courier(db_path=db, kit_id="kit-1", kode_wilayah=KW, tps=TPS, signing_key=generate_key(),
                   broker_url="mqtt://127.0.0.1:1", **options)


@pytest.fixture(params=[16_384, 0], ids=["packed", "single"])
def courier(tmp_path, request):
    c = _kit_courier(tmp_path / "tpskit.db", pack_max_bytes=request.param, max_inflight=8)
    for i in range(5):
        c.submit_reading(
            capture_id=f"c{i}", halaman=1, reading={"n": i}, photo_jpeg=None, taken_at=1.0, time_source="rtc"
        )
    yield c
    c.close()


@pytest.mark.parametrize("early", [True, False])
def test_every_puback_maps_to_its_row(courier, early):
    s = _Session(courier, courier._outbox)
    s.e2e_ok = True
    client = FakeClient(s, early=early)
    assert s._pump(client)
    if not early:
        assert sorted(i for ids in s.inflight.values() for i in ids) == [
            f"kit-1:c{i}:reading" for i in range(5)
        ]
        assert len(s.inflight) == (1 if courier.pack_max_bytes else 5)  # one pack, or one message per row
        for mid, _topic in client.published:
            client.puback(mid)
    assert not s.inflight and not s.early
    s._flush(force=True)
    assert courier.status()["sent"] == 5 and courier.status()["queued"] == 0


def test_probe_first_then_window(courier):
    s = _Session(courier, courier._outbox)
    client = FakeClient(s, early=True)
    s._pump(client)
    s._pump(client)
    assert client.envelopes == [["kit-1:c0:reading"]]  # only the probe (alone) until the collector answers
    s.on_message(
        None, None, SimpleNamespace(topic="ack", payload=b'{"v":1,"kind":"ack","ids":["kit-1:c0:reading"]}')
    )
    s._pump(client)
    assert [i for ids in client.envelopes for i in ids] == [f"kit-1:c{i}:reading" for i in (0, 1, 2, 3, 4)]
    assert len(client.published) == (2 if courier.pack_max_bytes else 5)
    s._flush(force=True)
    assert courier.status()["acked"] == 1


def test_refused_puback_keeps_the_row_queued(courier):
    s = _Session(courier, courier._outbox)
    s.e2e_ok = True
    s._pump(FakeClient(s, early=True, reason=0x87))  # not authorized (ACL)
    s._flush(force=True)
    st = courier.status()
    assert st["queued"] == 5 and "ACL" in st["last_error"]


def test_backoff_grows_with_jitter_and_resets():
    b = Backoff(base_s=1, max_s=10, rng=random.Random(1))
    delays = [b.next() for _ in range(8)]
    for n, d in enumerate(delays):
        cap = min(10, 2**n)
        assert cap * 0.5 <= d <= cap
    b.reset()
    assert b.next() <= 1


def test_urls_and_bad_input(tmp_path):
    assert parse_broker_url("mqtts://broker.example:8883") == ("broker.example", 8883, True)
    assert parse_broker_url("mqtt://127.0.0.1") == ("127.0.0.1", 1883, False)
    with pytest.raises(ValueError, match="mqtt://"):
        parse_broker_url("http://x")
    c = Courier(
        db_path=tmp_path / "tpskit.db", kit_id="kit-1", kode_wilayah=KW, tps=TPS, signing_key=generate_key()
    )
    with pytest.raises(ValueError, match="cannot be queued"):
        c.submit_reading(
            capture_id="", halaman=1, reading={}, photo_jpeg=None, taken_at=1.0, time_source="rtc"
        )
    with pytest.raises(ValueError):
        c.publish_retained("reading", {})
    assert c.status()["queued"] == 0
    c.close()
    for bad in (dict(pack_max_bytes=-1), dict(pack_max_bytes=2_000_000), dict(pack_max_count=0)):
        with pytest.raises(ValueError, match="pack_max"):
            _kit_courier(tmp_path / "tpskit.db", **bad)


def test_from_config(tmp_path):
    from firmware.config import parse

    cfg = parse(
        {
            "kit": {"kit_id": "kit-9", "kode_wilayah": KW, "tps": 3},
            "paths": {"state_dir": str(tmp_path), "volatile_ok": True},
            "mqtt": {"url": "mqtt://127.0.0.1:1883", "ack_timeout_s": 5, "max_inflight": 16},
            "outbox": {"chunk_bytes": 8000},
        }
    )
    c = Courier.from_config(cfg, signing_key=generate_key())
    assert (c.kit_id, c.tps, c.ack_timeout_s, c.max_inflight, c.chunk_bytes) == ("kit-9", 3, 5.0, 16, 8000)
    assert c.db_path == tmp_path / "tpskit.db"
    c.close()


def test_silent_probe_does_not_block_the_queue(courier):
    """A first message the collector never acks (refused) must not hold back the others for ever."""
    s = _Session(courier, courier._outbox)
    client = FakeClient(s, early=True)
    for _ in range(_Session.PROBE_TRIES):
        s._pump(client)
        s.probe_at -= 3600  # pretend the probe has waited long enough
        s._housekeeping(client)
    s._pump(client)
    ids = [i for ids in client.envelopes for i in ids if i.endswith(":reading")]
    assert len(ids) >= _Session.PROBE_TRIES + 4  # probes, then the whole window


def test_non_json_values_are_refused_clearly(courier):
    with pytest.raises(ValueError, match="plain JSON"):
        courier.submit_reading(
            capture_id="nan",
            halaman=1,
            reading={"x": float("nan")},
            photo_jpeg=None,
            taken_at=1.0,
            time_source="rtc",
        )
    with pytest.raises(ValueError, match="plain JSON"):
        courier.submit_reading(
            capture_id="obj",
            halaman=1,
            reading={"x": object()},
            photo_jpeg=None,
            taken_at=1.0,
            time_source="rtc",
        )
    assert courier.status()["queued"] == 5
    courier.heartbeat_info(lambda: {"battery": object()})
    s = _Session(courier, courier._outbox)
    import json

    body = json.loads(s._heartbeat_payload())["body"]
    assert "not plain JSON" in body["info_error"] and body["queue"]["queued"] == 5


def test_a_lone_row_goes_alone_and_a_backlog_goes_packed(courier):
    s = _Session(courier, courier._outbox)
    s.e2e_ok = True
    client = FakeClient(s, early=True)
    s._pump(client)
    n = 1 if courier.pack_max_bytes else 5
    assert len(client.published) == n and sum(map(len, client.envelopes)) == 5
    courier.submit_reading(
        capture_id="live", halaman=1, reading={"n": 9}, photo_jpeg=None, taken_at=1.0, time_source="rtc"
    )
    s._pump(client)
    assert client.envelopes[-1] == ["kit-1:live:reading"] and len(client.published) == n + 1
    assert courier.delivery_counters() == {"mqtt_messages": n + 1, "envelopes": 6}


def test_pack_bound_in_bytes(tmp_path):
    c = _kit_courier(tmp_path / "tpskit.db", pack_max_bytes=2_000)
    try:
        for i in range(10):
            c.submit_reading(
                capture_id=f"c{i}",
                halaman=1,
                reading={"n": i},
                photo_jpeg=None,
                taken_at=1.0,
                time_source="rtc",
            )
        s = _Session(c, c._outbox)
        s.e2e_ok = True
        sizes: list[int] = []
        client = FakeClient(s, early=True)
        real_publish = client.publish

        def publish(topic, payload, qos=0, retain=False):
            sizes.append(len(payload))
            return real_publish(topic, payload, qos, retain)

        client.publish = publish
        s._pump(client)
        assert [i for ids in client.envelopes for i in ids] == [f"kit-1:c{i}:reading" for i in range(10)]
        assert len(sizes) > 1 and max(sizes) <= 2_000
    finally:
        c.close()


def test_sent_is_recorded_only_when_the_ack_is_late(courier):
    s = _Session(courier, courier._outbox)
    s.e2e_ok = True
    s._pump(FakeClient(s, early=True))  # every row PUBACKed
    ack = {"v": 1, "kind": "ack", "ids": ["kit-1:c0:reading", "kit-1:c1:reading"]}
    s.on_message(None, None, SimpleNamespace(topic="ack", payload=json.dumps(ack).encode()))
    s._flush()  # acks are due (nothing in flight is not required: forced by idle below)
    s._flush(idle=True)
    assert courier._outbox.state_of("kit-1:c0:reading") == "acked"
    assert courier._outbox.state_of("kit-1:c2:reading") == "queued"  # PUBACKed, ack may still come
    s.pending_sent = [(t - _Session.SENT_AFTER_S, ids) for t, ids in s.pending_sent]
    s._flush()
    st = courier.status()
    assert (st["queued"], st["sent"], st["acked"]) == (0, 3, 2)


def test_pack_overhead_is_what_pack_adds():
    """The courier bounds packs with pack_overhead: it must be exactly the header and newlines of pack()."""
    for n in (1, 9, 10, 100, payloads.PACK_MAX_COUNT):
        envelopes = [b'{"x":1}'] * n
        assert len(payloads.pack(envelopes)) - sum(map(len, envelopes)) == payloads.pack_overhead(n)


def test_a_message_the_collector_would_refuse_as_too_large_is_not_queued(courier):
    """The collector refuses any message over MAX_MESSAGE_BYTES (too_large) and never acks it: queued, it
    would be resent for ever and hold its outbox space. Refused at submit, nothing queued."""
    from comms.collector_store import precheck

    huge = {"catatan": "x" * payloads.MAX_MESSAGE_BYTES}
    payload = payloads.build(
        generate_key(),
        kind="reading",
        msg_id="kit-1:big:reading",
        kit_id="kit-1",
        kode_wilayah=KW,
        tps=TPS,
        seq=9,
        created_at=1.0,
        body=payloads.reading_body(
            capture_id="big",
            halaman=1,
            reading=huge,
            taken_at=1.0,
            time_source="rtc",
            photo=None,
            chunk_bytes=1000,
        ),
    )
    assert precheck("tpskit/v1", f"tpskit/v1/{KW}/{TPS}/reading", payload, {}).reject[0] == "too_large"
    with pytest.raises(ValueError, match="too large"):
        courier.submit_reading(
            capture_id="big", halaman=1, reading=huge, photo_jpeg=None, taken_at=1.0, time_source="rtc"
        )
    with pytest.raises(ValueError, match="too large"):
        courier.publish_retained("readiness", huge)
    assert courier.status()["queued"] == 5 and not courier.has_capture("big")
    with pytest.raises(ValueError, match="chunk_bytes"):
        _kit_courier(courier.db_path, chunk_bytes=payloads.MAX_MESSAGE_BYTES)


def test_refused_rows_are_sent_again_later_in_the_same_session(tmp_path):
    """A PUBACK with a failure code (the broker's ACL refused, then the operator fixed it) leaves the rows
    queued. They were sent again only after a reconnect or a long press: a connected kit kept its last
    pages queued for good. Like rows without an ack, they go again after the ack timeout."""
    c = _kit_courier(tmp_path / "tpskit.db", ack_timeout_s=0.3, heartbeat_s=0)
    try:
        for i in range(3):
            c.submit_reading(
                capture_id=f"c{i}", halaman=1, reading={}, photo_jpeg=None, taken_at=1.0, time_source="rtc"
            )
        s = _Session(c, c._outbox)
        s.e2e_ok = True
        client = FakeClient(s, early=True, reason=0x87)  # not authorized (ACL)
        s._pump(client)
        client.reason = 0  # the ACL is fixed
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(client.published) < 2 * (1 if c.pack_max_bytes else 3):
            s._pump(client)
            s._housekeeping(client)
            time.sleep(0.05)
        s._flush(force=True)
        assert c.status()["sent"] == 3 and c.status()["queued"] == 0
    finally:
        c.close()


def test_pubacks_of_untracked_messages_are_not_kept_nor_matched_to_a_row(courier):
    """Heartbeats and status messages are not rows: their PUBACKs (after publish() returned, the usual
    case) must not be parked for ever, or once paho's message ids wrap (65,535) a row could be taken as
    PUBACKed by a heartbeat's old PUBACK."""
    s = _Session(courier, courier._outbox)
    s.e2e_ok = True
    client = FakeClient(s, early=False)
    s._publish_control(client, courier.topic("status"), s._status_payload("online"), retain=True)
    s._publish_control(client, courier.topic("heartbeat"), s._heartbeat_payload())
    for mid, _topic in client.published:
        client.puback(mid)
    assert s.early == {}
    client.mid = 0  # the ids wrapped: the next message (a row) gets the status message's id again
    assert s._pump(client)
    assert client.published[2][0] == 1 and s.inflight  # waits for its own PUBACK
    s._flush(force=True)
    assert courier.status()["sent"] == 0 and courier.status()["queued"] == 5


def test_chunks_and_packs_the_shipped_broker_would_refuse_are_refused_at_start(tmp_path):
    """The shipped broker refuses a message over its message_size_limit (262,144 bytes): a 256,000-byte chunk
    is ~341 KB on the wire and would be sent again for ever. Refused when the courier is built."""
    for bad in (dict(chunk_bytes=256_000), dict(pack_max_bytes=payloads.BROKER_MESSAGE_LIMIT + 1)):
        with pytest.raises(ValueError, match="message_size_limit"):
            _kit_courier(tmp_path / "tpskit.db", **bad)
    c = _kit_courier(tmp_path / "tpskit.db", chunk_bytes=payloads.MAX_CHUNK_BYTES,
                     pack_max_bytes=payloads.BROKER_MESSAGE_LIMIT)
    c.close()


def test_packs_of_the_largest_size_stay_within_the_broker_limit(tmp_path):
    c = _kit_courier(tmp_path / "tpskit.db", pack_max_bytes=payloads.BROKER_MESSAGE_LIMIT, max_inflight=8)
    try:
        for i in range(400):
            c.submit_reading(capture_id=f"c{i:04d}", halaman=1, reading={"catatan": "x" * 3000},
                             photo_jpeg=None, taken_at=1.0, time_source="rtc")
        s = _Session(c, c._outbox)
        s.e2e_ok = True
        sizes: list[int] = []
        client = FakeClient(s, early=True)
        publish = client.publish

        def measured(topic, payload, **kw):
            sizes.append(len(payload))
            return publish(topic, payload, **kw)

        client.publish = measured
        s._pump(client)
        assert len(sizes) >= 2 and max(sizes) <= payloads.BROKER_MESSAGE_LIMIT
        assert max(sizes) > payloads.BROKER_MESSAGE_LIMIT - 2_000  # packs do fill up to the bound
    finally:
        c.close()


def test_a_queued_message_over_the_broker_limit_is_named_when_sent(courier, caplog):
    """A row queued before the limits (e.g. a 256,000-byte chunk of an older config) is refused by the broker
    on every send: MQTT 5 drops the connection, MQTT 3.1.1 drops the message and PUBACKs it. The courier says
    so, with the size and the limit, instead of reconnecting or resending without a word."""
    big = b'{"id":"kit-1:old:photo:0","pad":"%s"}' % (b"x" * payloads.BROKER_MESSAGE_LIMIT)
    with courier._outbox.transaction() as b:
        b.add(msg_id="kit-1:old:photo:0", seq=b.next_seq(), kind="photo", topic=courier.topic("photo"),
              payload=big, priority=PRIORITY_PHOTO)
    s = _Session(courier, courier._outbox)
    s.e2e_ok = True
    with caplog.at_level("WARNING", logger="tpskit.comms.courier"):
        s._pump(FakeClient(s, early=False))
        s._pump(FakeClient(s, early=False))
    error = courier.status()["last_error"]
    assert "kit-1:old:photo:0" in error and str(len(big)) in error and "message_size_limit" in error
    assert error in caplog.text


def test_a_puback_refusal_other_than_the_acl_does_not_blame_the_acl(courier):
    s = _Session(courier, courier._outbox)
    s.e2e_ok = True
    s._pump(FakeClient(s, early=True, reason=0x97))  # quota exceeded
    assert "ACL" not in courier.status()["last_error"]
    assert "Quota exceeded" in courier.status()["last_error"]


@pytest.mark.parametrize("url", ["mqtt://127.0.0.1:99999", "mqtts://broker.example:88x3"])
def test_a_bad_port_says_what_a_port_must_be(url):
    with pytest.raises(ValueError, match="port must be a number 1-65535"):
        parse_broker_url(url)


def test_tls_files_missing_or_not_pem_are_named(tmp_path):
    from comms.courier import make_mqtt_client

    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=f"CA file {tmp_path / 'nope.pem'} not found"):
        make_mqtt_client(client_id="t", protocol="mqtt5", tls=True, ca_file=tmp_path / "nope.pem")
    with pytest.raises(ValueError, match=f"TLS files {not_pem} cannot be used .*PEM"):
        make_mqtt_client(client_id="t", protocol="mqtt5", tls=True, ca_file=not_pem)


def test_collector_with_a_missing_ca_file_creates_no_database(tmp_path, capsys):
    from comms.signing import registry_add
    from firmware import cli

    reg = tmp_path / "kits.json"
    registry_add(reg, "kit-1", generate_key(), kode_wilayah=KW, tps=TPS)
    argv = ["collector", "--kits", str(reg), "--db", str(tmp_path / "c.db"), "--broker", "mqtts://127.0.0.1:1",
            "--ca-file", str(tmp_path / "ca.pem")]
    assert cli.main(argv) == 2
    assert "CA file" in capsys.readouterr().err
    assert not (tmp_path / "c.db").exists()
