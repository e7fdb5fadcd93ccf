"""tpskit fleet readiness against a real broker and the reference collector, with several simulated kits
(ready, not ready, and one that never reports)."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest

from comms.collector import Collector, CollectorStore
from comms.courier import Courier
from comms.outbox import Outbox
from firmware import cli, fleet
from firmware.selftest import Check, Report
from tests.selftest_helpers import make_kit

KITS = [  # kode wilayah, TPS, ready?, reports?
    ("31.71.01.1001", 1, True, True),
    ("31.71.01.1001", 2, False, True),
    ("32.73.05.1002", 12, True, True),
    ("32.73.05.1002", 13, True, False),  # never switched on: silent
]


def _readiness_db(path, rows):
    """A collector database's kit_readiness table with *rows* (kit_id, kode_wilayah, tps, body, created_at,
    seq[, received_at]: the collector's clock, by default created_at)."""
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE kit_readiness (kit_id, kode_wilayah, tps, body, created_at, seq, received_at)")
    conn.executemany("INSERT INTO kit_readiness VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [(*r, r[4]) if len(r) == 6 else r for r in rows])
    conn.commit()
    conn.close()


def _wait_state(db, msg_id, want, timeout=15.0):
    box = Outbox(db)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if box.state_of(msg_id) == want:
                return True
            time.sleep(0.05)
        return False
    finally:
        box.close()


def _report_body(conf, ready: bool) -> dict:
    checks = [Check("camera", ready, "4608×2592 px" if ready else "tidak bisa memotret: kabel",
                    "" if ready else "periksa kabel pita kamera"), Check("broker", True, "ok")]
    return Report(conf.kit.kit_id, conf.kit.kode_wilayah, conf.kit.tps, "selftest", checks).readiness_body()


@pytest.fixture
def fleet_world(tmp_path, mosquitto):
    registry = tmp_path / "registry.json"
    confs = [make_kit(tmp_path / f"kit{i}", kode_wilayah=kw, tps=tps, broker_url=mosquitto.url,
                      registry=registry) for i, (kw, tps, _, _) in enumerate(KITS)]
    collector = Collector(broker_url=mosquitto.url, db_path=tmp_path / "collector.db",
                          registry=registry).start()
    try:
        assert collector.connected.wait(10)
        for conf, (_, _, ready, reports) in zip(confs, KITS, strict=True):
            if not reports:
                continue
            courier = Courier.from_config(conf, password="rahasia")
            try:
                courier.start()
                msg_id = courier.publish_retained("readiness", _report_body(conf, ready))
                assert _wait_state(conf.db_path, msg_id, "acked"), courier.status()
            finally:
                courier.close()
        # a kit that is not in the registry (e.g. provisioned but its row never sent to the regency)
        stray = make_kit(tmp_path / "stray", kode_wilayah="32.73.05.1002", tps=99, broker_url=mosquitto.url)
        courier = Courier.from_config(stray, password="rahasia")
        try:
            courier.start()
            msg_id = courier.publish_retained("readiness", _report_body(stray, True))
            assert _wait_state(stray.db_path, msg_id, "sent")
        finally:
            courier.close()
    finally:
        collector.stop()
    return {"registry": registry, "db": tmp_path / "collector.db", "broker": mosquitto.url, "confs": confs,
            "tmp": tmp_path}


def _by_kit(rows):
    return {r["kit_id"]: r for r in rows}


def test_fleet_from_broker_table_csv_json(fleet_world, capsys):
    w = fleet_world
    out_csv = w["tmp"] / "fleet.csv"
    rc = cli.main(["fleet", "readiness", "--registry", str(w["registry"]), "--broker", w["broker"],
                   "--wait", "5", "--csv", str(out_csv), "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    kits = _by_kit(data["kits"])
    ids = [c.kit.kit_id for c in w["confs"]]
    assert kits[ids[0]]["state"] == "ready"
    assert kits[ids[1]]["state"] == "not_ready"
    assert "camera" in kits[ids[1]]["reasons"][0] and "kabel pita" in kits[ids[1]]["reasons"][0]
    assert kits[ids[2]]["state"] == "ready"
    assert kits[ids[3]]["state"] == "silent"
    stray = kits["kit-3273051002-099"]
    assert stray["state"] == "not_ready" and not stray["registered"]
    assert "tidak terdaftar" in stray["reasons"][0]
    per_kab = {r["kabupaten"]: r for r in data["kabupaten"]}
    assert per_kab["31.71"]["total"] == 2 and per_kab["31.71"]["ready"] == 1
    assert per_kab["31.71"]["percent_ready"] == 50.0
    assert per_kab["32.73"] == {"kabupaten": "32.73", "total": 3, "ready": 1, "not_ready": 1, "silent": 1,
                                "percent_ready": 33.3}
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert {r["kit_id"]: r["state"] for r in rows}[ids[3]] == "silent"
    assert len(rows) == 5 and rows[0]["kabupaten"] == "31.71"
    # the human table
    assert cli.main(["fleet", "readiness", "--registry", str(w["registry"]), "--broker", w["broker"]]) == 0
    text = capsys.readouterr().out
    assert "DIAM" in text and "BELUM SIAP" in text and "31.71" in text and "50.0%" in text


def test_fleet_from_collector_db(fleet_world, capsys):
    w = fleet_world
    assert cli.main(["fleet", "readiness", "--registry", str(w["registry"]), "--collector-db", str(w["db"]),
                     "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    states = {k["kit_id"]: k["state"] for k in data["kits"]}
    ids = [c.kit.kit_id for c in w["confs"]]
    assert [states[i] for i in ids] == ["ready", "not_ready", "ready", "silent"]
    assert "kit-3273051002-099" not in states  # the collector refused the unregistered kit
    assert data["total"]["percent_ready"] == 50.0


def test_forged_readiness_is_not_ready(tmp_path):
    """A readiness signed by another key does not make a kit ready."""
    from comms import payloads, signing

    reg_path = tmp_path / "reg.json"
    real, other = signing.generate_key(), signing.generate_key()
    signing.registry_add(reg_path, "kit-a", real, kode_wilayah="31.71.01.1001", tps=1)
    registry = signing.load_registry(reg_path)
    wire = payloads.build(other, kind="readiness", msg_id="kit-a:readiness:1", kit_id="kit-a",
                          kode_wilayah="31.71.01.1001", tps=1, seq=1, epoch=1, created_at=time.time(),
                          body={"ready": True})
    obs = fleet._readiness(*payloads.parse(wire), registry, payloads)
    states = fleet.assess(registry, [obs])
    assert states[0].state == "not_ready" and "tanda tangan" in states[0].reasons[0]
    old = fleet.Observation("kit-a", "31.71.01.1001", 1,
                            {"ready": True, "checked_at": time.time() - 5 * 86400})
    assert fleet.assess(registry, [old], max_age_s=86400)[0].state == "not_ready"


def test_unreachable_broker_is_a_clear_error(tmp_path, capsys):
    from tests.broker import free_port

    assert cli.main(["fleet", "readiness", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--wait", "1"]) == 2
    assert "tidak terjangkau" in capsys.readouterr().err
    assert cli.main(["fleet", "readiness"]) == 2


def test_unwritable_csv_is_a_clear_error(tmp_path, capsys):

    db = tmp_path / "collector.db"
    _readiness_db(db, [("kit-a", "31.71.01.1001", 1, '{"ready": true}', 1.7e9, 1)])
    out = tmp_path / "no-such-dir" / "fleet.csv"
    assert cli.main(["fleet", "readiness", "--collector-db", str(db), "--csv", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "Traceback" not in err


def test_skipped_checks_are_not_counted_ready():
    now = time.time()
    skipped = fleet.Observation("kit-a", "31.71.01.1001", 1,
                                {"ready": False, "failing": [], "skipped": ["broker", "collector"],
                                 "checked_at": now})
    # a body that claims ready but names skipped checks is not ready either
    claims = fleet.Observation("kit-b", "31.71.01.1001", 2,
                               {"ready": True, "failing": [], "skipped": ["camera"], "checked_at": now})
    states = {s.kit_id: s for s in fleet.assess(None, [skipped, claims], now=now)}
    a, b = states["kit-a"], states["kit-b"]
    assert a.state == "not_ready" and a.skipped == ["broker", "collector"]
    assert "kecuali yang dilewati" in a.reasons[0] and "broker, collector" in a.reasons[0]
    assert "tanpa rincian" not in " ".join(a.reasons)
    assert b.state == "not_ready" and "camera" in b.reasons[0]
    summary = fleet.summarize(states.values())
    assert summary[0].ready == 0 and summary[0].not_ready == 2
    text = fleet.table(list(states.values()), summary)
    assert "ready except skipped: broker, collector" in text


def test_old_readiness_is_stale_by_default(tmp_path, capsys):
    """A kit that said ready once and then died is not shown ready from its old retained message."""

    db = tmp_path / "collector.db"
    now = time.time()
    rows = []
    for kit_id, tps, age_h in (("kit-old", 1, 30), ("kit-new", 2, 2)):
        body = json.dumps({"ready": True, "failing": [], "checked_at": now - age_h * 3600})
        rows.append((kit_id, "31.71.01.1001", tps, body, now - age_h * 3600, 1))
    _readiness_db(db, rows)
    assert cli.main(["fleet", "readiness", "--collector-db", str(db), "--json"]) == 0
    kits = _by_kit(json.loads(capsys.readouterr().out)["kits"])
    assert kits["kit-new"]["state"] == "ready"
    assert kits["kit-old"]["state"] == "not_ready" and "30 jam lalu" in kits["kit-old"]["reasons"][0]
    assert cli.main(["fleet", "readiness", "--collector-db", str(db), "--json", "--max-age-hours", "48"]) == 0
    assert {k["state"] for k in json.loads(capsys.readouterr().out)["kits"]} == {"ready"}
    assert cli.main(["fleet", "readiness", "--collector-db", str(db), "--json", "--max-age-hours", "0"]) == 0
    assert {k["state"] for k in json.loads(capsys.readouterr().out)["kits"]} == {"ready"}  # 0 = no limit


def test_collector_db_kit_not_in_registry_is_not_ready(tmp_path, capsys):
    """A kit the registry no longer lists (retired, replaced) or lists for another TPS is not counted
    ready from the collector database, just as it is not from the broker."""

    from comms import signing

    reg_path = tmp_path / "reg.json"
    signing.registry_add(reg_path, "kit-a", signing.generate_key(), kode_wilayah="31.71.01.1001", tps=1)
    signing.registry_add(reg_path, "kit-c", signing.generate_key(), kode_wilayah="31.71.01.1001", tps=2)
    signing.registry_add(reg_path, "kit-d", signing.generate_key(), kode_wilayah="31.71.01.1001", tps=3)
    db = tmp_path / "collector.db"
    now = time.time()
    body = json.dumps({"ready": True, "failing": [], "checked_at": now})
    _readiness_db(db, [(kit_id, "31.71.01.1001", tps, body, now, 1)
                       for kit_id, tps in (("kit-a", 1), ("kit-b-retired", 2), ("kit-d", 9))])
    assert cli.main(["fleet", "readiness", "--collector-db", str(db), "--registry", str(reg_path),
                     "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    kits = _by_kit(data["kits"])
    assert kits["kit-a"]["state"] == "ready"
    assert kits["kit-c"]["state"] == "silent"
    assert kits["kit-b-retired"]["state"] == "not_ready" and not kits["kit-b-retired"]["registered"]
    assert "tidak terdaftar" in kits["kit-b-retired"]["reasons"][0]
    assert kits["kit-d"]["state"] == "not_ready" and "terdaftar untuk" in kits["kit-d"]["reasons"][0]
    assert data["total"]["ready"] == 1


@pytest.mark.parametrize("old_tps", [7, 9])
def test_moved_kit_old_retained_readiness_does_not_hide_the_new_one(tmp_path, mosquitto, old_tps):
    """A kit moved to TPS 8 and re-provisioned (new outbox: new epoch, seq from 1) leaves its old
    retained readiness (higher seq) on its old TPS topic; the fleet shows the valid one for TPS 8."""
    from comms import payloads, signing
    from comms.courier import make_mqtt_client, parse_broker_url

    key = signing.generate_key()
    reg_path = tmp_path / "reg.json"
    signing.registry_add(reg_path, "kit-x", key, kode_wilayah="31.71.01.1001", tps=8)
    registry = signing.load_registry(reg_path)
    now = time.time()
    wires = [(tps, payloads.build(key, kind="readiness", msg_id=f"kit-x:readiness:{epoch}:{seq}",
                                  kit_id="kit-x", kode_wilayah="31.71.01.1001", tps=tps, seq=seq, epoch=epoch,
                                  created_at=now - age, body={"ready": True, "checked_at": now - age}))
             for tps, seq, epoch, age in ((8, 1, 2000, 60), (old_tps, 50, 1000, 3600))]
    host, port, tls = parse_broker_url(mosquitto.url)
    client = make_mqtt_client(client_id="pub", protocol="mqtt5", tls=tls)
    client.connect(host, port)
    client.loop_start()
    try:
        for tps, wire in wires:
            topic = f"tpskit/v1/31.71.01.1001/{tps}/readiness"
            client.publish(topic, wire, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()
    obs = fleet.from_broker(mosquitto.url, registry=registry, wait_s=3)
    states = fleet.assess(registry, obs, now=now)
    assert [(s.kit_id, s.tps, s.state) for s in states] == [("kit-x", 8, "ready")]


def test_a_readiness_checked_at_infinity_is_not_ready_for_ever():
    """checked_at is the kit's word in the body (not checked by the collector): 1e400 parses as Infinity and
    made the age check pass for ever; a time that is not finite falls back to the message's created_at."""
    now = time.time()
    obs = fleet.Observation("kit-a", "31.71.01.1001", 1, {"ready": True, "checked_at": float("inf")},
                            created_at=now - 5 * 86400)
    st = fleet.assess(None, [obs], now=now, max_age_s=86400)[0]
    assert st.state == "not_ready" and st.checked_at == now - 5 * 86400
    assert "T" in fleet.to_csv([st])  # a real time in the CSV, not a crash on gmtime(inf)


def test_readiness_refuses_a_malformed_kabupaten(tmp_path, capsys):
    """Like `fleet results`: `--kabupaten 31-71` (or 3171) is an error naming the form, not an empty report
    that reads as "no kits here"."""
    db = tmp_path / "collector.db"
    CollectorStore(db).close()
    for bad in ("31-71", "3171", "31.71.01"):
        assert cli.main(["fleet", "readiness", "--collector-db", str(db), "--kabupaten", bad]) == 2
        assert "NN.NN" in capsys.readouterr().err
    assert cli.main(["fleet", "readiness", "--collector-db", str(db), "--kabupaten", "31.71"]) == 0


def test_a_kit_clock_not_yet_synced_is_aged_by_the_collectors_clock(tmp_path, capsys):
    """No RTC: until NTP syncs, a kit switched on after days in storage stamps its readiness with the last
    saved time (fake-hwclock). The collector's receive time says when it reported; a synced clock is
    believed; from the broker (no receive time) the reason says the kit's clock is not synced."""
    now = time.time()
    stored_days_ago = now - 4 * 86400
    rows = []
    for kit_id, tps, source, checked, received in (
            ("kit-unsynced-fresh", 1, "unsynced", stored_days_ago, now - 600),  # just switched on
            ("kit-unsynced-old", 2, "unsynced", stored_days_ago, now - 3 * 86400),  # really silent since
            ("kit-ntp-old", 3, "ntp", now - 2 * 86400, now - 600)):  # delivered late, clock right: stale
        body = json.dumps({"ready": True, "failing": [], "checked_at": checked, "time_source": source})
        rows.append((kit_id, "31.71.01.1001", tps, body, checked, 1, received))
    db = tmp_path / "collector.db"
    _readiness_db(db, rows)
    assert cli.main(["fleet", "readiness", "--collector-db", str(db), "--json"]) == 0
    kits = _by_kit(json.loads(capsys.readouterr().out)["kits"])
    assert kits["kit-unsynced-fresh"]["state"] == "ready"
    assert kits["kit-unsynced-old"]["state"] == "not_ready" and "72 jam lalu" in kits["kit-unsynced-old"][
        "reasons"][0]
    assert kits["kit-ntp-old"]["state"] == "not_ready" and "48 jam lalu" in kits["kit-ntp-old"]["reasons"][0]

    from_broker = fleet.Observation("kit-b", "31.71.01.1001", 4,
                                    {"ready": True, "checked_at": stored_days_ago, "time_source": "unsynced"})
    st = fleet.assess(None, [from_broker], now=now, max_age_s=86400)[0]
    assert st.state == "not_ready" and "belum sinkron NTP" in st.reasons[0]


def _prepared_kits_folder(tmp_path):
    """What `tpskit provision --prepare` writes into <out-dir>/kits: TOML files, no registry."""
    folder = tmp_path / "out" / "kits"
    folder.mkdir(parents=True)
    (folder / "kit-3171011001-001.toml").write_text('[kit]\nkit_id = "kit-3171011001-001"\n')
    return folder


@pytest.mark.parametrize("command", ["readiness", "results"])
def test_a_registry_without_kits_is_a_clear_error(tmp_path, capsys, command):
    """A registry folder without .csv/.json files (e.g. the kits/ folder of provision --prepare) read as no
    kits at all, without a word: every kit missing from the report, nobody told why."""
    import sqlite3

    db = tmp_path / "collector.db"
    sqlite3.connect(db).close()
    empty_json = tmp_path / "registry.json"
    empty_json.write_text('{"version": 1, "kits": {}}')
    for registry in (_prepared_kits_folder(tmp_path), empty_json):
        assert cli.main(["fleet", command, "--registry", str(registry), "--collector-db", str(db)]) == 2
        err = capsys.readouterr().err
        assert str(registry) in err and "provision --export" in err and "Traceback" not in err


def test_a_kit_moved_to_another_tps_is_not_ready_at_both(tmp_path, capsys):
    """A kit self-tested for TPS 5, then re-provisioned for TPS 6 (same key, the guide keeps it) and
    self-tested again: the registry holds both rows, the collector both readiness reports, and the fleet
    showed TPS 5 and TPS 6 SIAP, 100 % ready with one kit for two TPS. The older identity of one key is
    not ready, and says why."""
    from comms import signing

    key = signing.generate_key()
    reg_path = tmp_path / "reg.json"
    for tps in (5, 6):
        signing.registry_add(reg_path, f"kit-3171011001-00{tps}", key, kode_wilayah="31.71.01.1001", tps=tps)
    signing.registry_add(reg_path, "kit-other", signing.generate_key(), kode_wilayah="31.71.01.1001", tps=7)
    db = tmp_path / "collector.db"
    now = time.time()
    body = json.dumps({"ready": True, "failing": [], "checked_at": now - 3600, "time_source": "ntp"})
    _readiness_db(db, [("kit-3171011001-005", "31.71.01.1001", 5, body, now - 3600, 4),
                       ("kit-3171011001-006", "31.71.01.1001", 6, body, now - 60, 1),
                       ("kit-other", "31.71.01.1001", 7, body, now - 7200, 9)])
    assert cli.main(["fleet", "readiness", "--collector-db", str(db), "--registry", str(reg_path),
                     "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    kits = _by_kit(data["kits"])
    assert kits["kit-3171011001-006"]["state"] == "ready" and kits["kit-other"]["state"] == "ready"
    moved = kits["kit-3171011001-005"]
    assert moved["state"] == "not_ready" and data["total"]["ready"] == 2
    assert "kit-3171011001-006" in moved["reasons"][0] and "--new-key" in moved["reasons"][0]


def test_a_readiness_from_a_kit_clock_ahead_is_not_ready_for_ever():
    """From the broker there is no receive time: a kit whose clock ran days ahead (unsynced) stamped a ready
    report that never went stale (its age was negative), so a kit switched off since still counted ready."""
    now = time.time()
    ahead = fleet.Observation("kit-a", "31.71.01.1001", 1,
                              {"ready": True, "checked_at": now + 10 * 86400, "time_source": "unsynced"},
                              created_at=now + 10 * 86400)
    st = fleet.assess(None, [ahead], now=now, max_age_s=86400)[0]
    assert st.state == "not_ready" and "masa depan" in st.reasons[0]
    # a few minutes ahead is just two clocks that differ a little
    close = fleet.Observation("kit-b", "31.71.01.1001", 2, {"ready": True, "checked_at": now + 120},
                              created_at=now + 120)
    assert fleet.assess(None, [close], now=now, max_age_s=86400)[0].state == "ready"


def test_readiness_help_shows_a_single_percent_sign(capsys):
    from firmware import cli

    with pytest.raises(SystemExit):
        cli.main(["fleet", "readiness", "--help"])
    out = capsys.readouterr().out
    assert "% ready" in out and "%%" not in out


@pytest.mark.parametrize("argv, why", [
    (["--wait", "-3"], "must be more than 0 seconds"),
    (["--wait", "nan"], "is not a number"),
    (["--max-age-hours", "-1"], "must be 0 or more"),
])
def test_a_wait_or_age_that_means_nothing_is_refused_before_anything_runs(argv, why, capsys):
    """--wait -3 collected nothing and called it a timeout; --max-age-hours -1 made every kit stale."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["fleet", "readiness", "--broker", "mqtt://127.0.0.1:1", *argv])
    assert exc.value.code == 2 and why in capsys.readouterr().err


def test_a_missing_collector_database_says_what_to_give(tmp_path, capsys):
    for sub in ("readiness", "results"):
        assert cli.main(["fleet", sub, "--collector-db", str(tmp_path / "none.db")]) == 2
        err = capsys.readouterr().err
        assert "tidak ada / collector database" in err and "/var/lib/tpskit-collector/collector.db" in err


def test_a_kit_whose_later_heartbeat_says_fault_is_not_ready(tmp_path, capsys):
    """A card gone read-only cannot queue the readiness that says so, but the kit's heartbeats (not queued)
    still carry its state and faults: a heartbeat the collector received after a 'ready' readiness and saying
    'fault' makes the kit not ready, with the fault; a later healthy heartbeat makes it ready again."""
    from comms import payloads, signing, topics
    from comms.collector_store import CollectorStore
    from comms.signing import KitEntry

    key = signing.generate_key()
    kw, tps = "31.71.01.1001", 1
    registry = {"kit-a": KitEntry("kit-a", key.verify_key, kw, tps)}
    db = tmp_path / "collector.db"
    store = CollectorStore(db)

    def deliver(kind: str, body: dict, seq: int | None, n: int):
        wire = payloads.build(key, kind=kind, msg_id=f"kit-a:{kind}:{n}", kit_id="kit-a", kode_wilayah=kw,
                              tps=tps, seq=seq, epoch=1, created_at=time.time(), body=body)
        store.begin()
        store.process(topics.topic("tpskit/v1", kw, tps, kind), wire, registry)
        store.commit()
        time.sleep(0.01)  # the collector's receive times are ordered

    now = time.time()
    deliver("readiness", {"ready": True, "checked_at": now, "time_source": "ntp"}, 1, 1)
    obs = fleet.from_collector_db(db)
    assert fleet.assess(registry, obs)[0].state == "ready" and obs[0].heartbeat is None
    deliver("heartbeat", {"state": "fault", "faults": {"storage": "Read-only file system"}}, None, 2)
    (st,) = fleet.assess(registry, fleet.from_collector_db(db))
    assert st.state == "not_ready" and "storage: Read-only file system" in st.reasons[0]
    deliver("heartbeat", {"state": "ready", "faults": {}}, None, 3)
    assert fleet.assess(registry, fleet.from_collector_db(db))[0].state == "ready"
    store.close()


# --- the broker view sees a kit's retained heartbeat ---------------------------------------------------

BEAT_KW = "31.71.01.1001"


def _publish_retained(broker_url: str, messages: list[tuple[str, bytes]]) -> None:
    """Publish (topic, payload) pairs retained, as a kit does, and wait for each PUBACK."""
    from comms.courier import make_mqtt_client, parse_broker_url

    host, port, tls = parse_broker_url(broker_url)
    client = make_mqtt_client(client_id=f"pub-{time.time_ns()}", protocol="mqtt5", tls=tls)
    client.connect(host, port)
    client.loop_start()
    try:
        for topic, wire in messages:
            client.publish(topic, wire, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def _signed(key, kind: str, body: dict, at: float, *, kit_id="kit-a", tps=1, seq=None) -> tuple[str, bytes]:
    """(topic, payload) of a signed message of *kind* as kit *kit_id* at TPS *tps* publishes it."""
    from comms import payloads, topics

    wire = payloads.build(key, kind=kind, msg_id=f"{kit_id}:{kind}:{at}", kit_id=kit_id, kode_wilayah=BEAT_KW,
                          tps=tps, seq=seq, epoch=1 if seq else None, created_at=at, body=body)
    return topics.topic("tpskit/v1", BEAT_KW, tps, kind), wire


@pytest.fixture
def beat_world(tmp_path, mosquitto):
    """kit-a (TPS 1) registered with its key; its 'ready' readiness retained at the broker, a minute old."""
    from comms import signing

    key = signing.generate_key()
    reg_path = tmp_path / "reg.json"
    signing.registry_add(reg_path, "kit-a", key, kode_wilayah=BEAT_KW, tps=1)
    now = time.time()
    readiness = _signed(key, "readiness", {"ready": True, "failing": [], "checked_at": now - 60,
                                           "time_source": "ntp"}, now - 60, seq=1)
    _publish_retained(mosquitto.url, [readiness])
    return {"key": key, "reg_path": reg_path, "registry": signing.load_registry(reg_path), "now": now,
            "broker": mosquitto.url}


def _broker_verdict(w) -> fleet.KitState:
    (st,) = [s for s in fleet.assess(w["registry"], fleet.from_broker(w["broker"], registry=w["registry"],
                                                                         wait_s=3), max_age_s=86400)
             if s.kit_id == "kit-a"]
    return st


def _beat(w, body: dict, age: float, **kw) -> tuple[str, bytes]:
    return _signed(kw.pop("key", w["key"]), "heartbeat", body, w["now"] - age, **kw)


FAULT = {"state": "fault", "faults": {"storage": "cannot write x.jpg: Read-only file system"}}


def test_a_retained_heartbeat_in_fault_makes_the_kit_not_ready_from_the_broker(beat_world, capsys):
    """A kit whose card refuses writes cannot queue the readiness that says so; its last readiness at the
    broker still says ready. Its heartbeat (not queued, retained) created after that readiness says fault:
    `fleet readiness --broker` shows it not ready, naming the storage fault; a later heartbeat saying ready
    (the card takes writes again) makes it ready again."""
    w = beat_world
    st = _broker_verdict(w)
    assert st.state == "ready"
    _publish_retained(w["broker"], [_beat(w, FAULT, 30)])
    st = _broker_verdict(w)
    assert st.state == "not_ready" and "Read-only file system" in st.reasons[0] and "storage" in st.reasons[0]
    assert cli.main(["fleet", "readiness", "--registry", str(w["reg_path"]), "--broker", w["broker"],
                     "--wait", "3", "--json"]) == 0
    kit = _by_kit(json.loads(capsys.readouterr().out)["kits"])["kit-a"]
    assert kit["state"] == "not_ready" and "storage: cannot write x.jpg" in kit["reasons"][0]
    assert cli.main(["fleet", "readiness", "--registry", str(w["reg_path"]), "--broker", w["broker"],
                     "--wait", "3"]) == 0
    assert "BELUM SIAP" in capsys.readouterr().out
    _publish_retained(w["broker"], [_beat(w, {"state": "ready", "faults": {}}, 10)])
    assert _broker_verdict(w).state == "ready"


def test_a_heartbeat_older_than_the_readiness_or_not_vouched_for_changes_nothing(beat_world):
    """Only the kit's own heartbeat, created after its readiness, counts: one from before it (the readiness
    is the kit's later word), one whose signature does not verify against the registry, one of a kit the
    registry does not list, or one of this kit for a TPS the registry does not give it, is ignored."""
    from comms import signing

    w = beat_world
    _publish_retained(w["broker"], [_beat(w, FAULT, 120)])  # before the readiness (60 s old)
    assert _broker_verdict(w).state == "ready"
    _publish_retained(w["broker"], [_beat(w, FAULT, 10, key=signing.generate_key())])  # forged
    assert _broker_verdict(w).state == "ready"
    _publish_retained(w["broker"], [_beat(w, FAULT, 10, kit_id="kit-z", tps=2),  # not registered
                                    _beat(w, FAULT, 10, tps=3)])  # kit-a, but not its TPS
    obs = fleet.from_broker(w["broker"], registry=w["registry"], wait_s=3)
    assert [(o.kit_id, o.tps, o.heartbeat) for o in obs] == [("kit-a", 1, None)]
    assert _broker_verdict(w).state == "ready"


def test_a_kit_with_a_heartbeat_but_no_readiness_stays_silent_and_says_it_is_alive(tmp_path, mosquitto):
    """A kit whose card refused writes from its boot never queued a readiness: it stays silent (no report),
    and the reason says its heartbeat came, with the fault it names."""
    from comms import signing

    key, other = signing.generate_key(), signing.generate_key()
    reg_path = tmp_path / "reg.json"
    signing.registry_add(reg_path, "kit-a", key, kode_wilayah=BEAT_KW, tps=1)
    signing.registry_add(reg_path, "kit-b", other, kode_wilayah=BEAT_KW, tps=2)
    signing.registry_add(reg_path, "kit-c", signing.generate_key(), kode_wilayah=BEAT_KW, tps=3)
    registry = signing.load_registry(reg_path)
    now = time.time()
    _publish_retained(mosquitto.url, [_signed(key, "heartbeat", FAULT, now - 5),
                                      _signed(other, "heartbeat", {"state": "ready", "faults": {}}, now - 5,
                                              kit_id="kit-b", tps=2)])
    states = {s.kit_id: s for s in fleet.assess(registry, fleet.from_broker(mosquitto.url, registry=registry,
                                                                             wait_s=3))}
    assert [states[k].state for k in ("kit-a", "kit-b", "kit-c")] == ["silent"] * 3
    assert "heartbeat" in states["kit-a"].reasons[0] and "storage: cannot write" in states["kit-a"].reasons[0]
    assert "kit hidup" in states["kit-b"].reasons[0] and "selftest" in states["kit-b"].reasons[0]
    assert "belum dinyalakan" in states["kit-c"].reasons[0]


def test_a_real_kit_courier_in_storage_fault_shows_not_ready_from_the_broker(tmp_path, mosquitto):
    """End to end with the kit's courier: its 'ready' readiness goes out, then its card refuses writes (the
    kit's heartbeat info says fault) and it asks for a heartbeat: the broker view shows it not ready."""
    registry_path = tmp_path / "registry.json"
    conf = make_kit(tmp_path / "kit", kode_wilayah=BEAT_KW, tps=4, broker_url=mosquitto.url,
                    registry=registry_path)
    from comms.signing import load_registry

    registry = load_registry(registry_path)
    info = {"state": "ready", "faults": {}}
    courier = Courier.from_config(conf, password="rahasia")
    courier.heartbeat_info(lambda: dict(info))
    try:
        msg_id = courier.publish_retained("readiness", _report_body(conf, True))
        courier.start()
        assert _wait_state(conf.db_path, msg_id, "sent"), courier.status()

        def verdict():
            return fleet.assess(registry, fleet.from_broker(mosquitto.url, registry=registry, wait_s=3))[0]

        assert verdict().state == "ready"
        time.sleep(0.05)  # the kit's clock moves on past its readiness
        info.update(FAULT)
        courier.heartbeat()
        deadline = time.monotonic() + 15
        while (st := verdict()).state == "ready" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert st.state == "not_ready" and "storage: cannot write x.jpg" in st.reasons[0]
    finally:
        courier.close()
