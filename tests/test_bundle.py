"""USB bundles: export unacked messages, detect damage, import (idempotent), kit acked only by acks."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comms.bundle import BundleError, export_bundle, import_bundle, read_bundle
from comms.collector import Collector
from comms.courier import Courier
from comms.outbox import Outbox, WalSnapshot
from comms.signing import canonical_json, generate_key, registry_add, save_private_key, sign_document
from firmware import cli
from tests.readonly_fs import ReadOnlyView

KW, TPS = "31.71.01.1001", 7


def _courier(key, db, url="mqtt://127.0.0.1:1"):
    return Courier(
        db_path=db,
        kit_id="kit-1",
        kode_wilayah=KW,
        tps=TPS,
        signing_key=key,
        broker_url=url,
        ack_timeout_s=1.5,
        backoff_base_s=0.2,
        backoff_max_s=1.0,
        chunk_bytes=4000,
    )


def _export(key, db, out_dir):
    """``export_bundle`` of kit-1's database ``db`` to ``out_dir``: (path, messages)."""
    return export_bundle(db_path=db, out_dir=out_dir, signing_key=key, kit_id="kit-1", kode_wilayah=KW,
                         tps=TPS)


def _fill(courier, n=5):
    for i in range(n):
        courier.submit_reading(
            capture_id=f"c{i}",
            halaman=1,
            reading={"paslon": {"01": i}},
            photo_jpeg=os.urandom(9000) if i == 0 else None,
            taken_at=1.0,
            time_source="rtc",
        )


def _filled_and_exported(tmp_path, key, n: int):
    """kit-1's outbox at tmp_path/tpskit.db with ``n`` readings queued (``_fill``), exported to tmp_path/usb
    signed with ``key``: (path, messages)."""
    c = _courier(key, tmp_path / "tpskit.db")
    _fill(c, n)
    c.close()
    (tmp_path / "usb").mkdir()
    return _export(key, tmp_path / "tpskit.db", tmp_path / "usb")


def test_export_read_and_damage(tmp_path):
    key = generate_key()
    path, n = _filled_and_exported(tmp_path, key, 5)
    assert n == 5 + 3  # 5 readings + 3 photo chunks
    manifest, msgs = read_bundle(path, public_key=key.verify_key)
    assert manifest["kit_id"] == "kit-1" and [m.id for m in msgs][:5] == [
        f"kit-1:c{i}:reading" for i in range(5)
    ]
    with pytest.raises(BundleError, match="signature"):
        read_bundle(path, public_key=generate_key().verify_key)
    lines = path.read_bytes().splitlines()
    bad = json.loads(lines[1])
    bad["payload"] = bad["payload"].replace('"01":0', '"01":9')
    path.write_bytes(b"\n".join([lines[0], json.dumps(bad).encode(), *lines[2:]]) + b"\n")
    with pytest.raises(BundleError, match="damaged"):
        read_bundle(path)
    path.write_bytes(b"\n".join(lines[:-1]) + b"\n")
    with pytest.raises(BundleError, match="truncated"):
        read_bundle(path)
    with pytest.raises(BundleError, match="USB"):
        _export(key, tmp_path / "tpskit.db", tmp_path / "nope")


def test_cli_export_import_then_kit_acked_by_collector(tmp_path, mosquitto):
    state = tmp_path / "state"
    key = generate_key()
    save_private_key(key, state / "keys" / "kit.key")
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[kit]\nkit_id = "kit-1"\nkode_wilayah = "{KW}"\ntps = {TPS}\n'
        f'[paths]\nstate_dir = "{state}"\nvolatile_ok = true\n[mqtt]\nurl = "{mosquitto.url}"\n'
    )
    c = _courier(key, state / "tpskit.db")
    _fill(c)
    registry_add(tmp_path / "kits.json", "kit-1", key.verify_key, kode_wilayah=KW, tps=TPS)
    collector = Collector(
        broker_url=mosquitto.url,
        db_path=tmp_path / "collector.db",
        registry=tmp_path / "kits.json",
        client_id="collector-bundle",
    ).start()
    try:
        assert collector.connected.wait(10)
        (tmp_path / "usb").mkdir()
        assert cli.main(["--config", str(cfg), "export", str(tmp_path / "usb")]) == 0
        bundle = next((tmp_path / "usb").glob("*.tpsbundle"))
        assert (
            cli.main(
                [
                    "import",
                    str(bundle),
                    "--broker",
                    mosquitto.url,
                    "--kits",
                    str(tmp_path / "kits.json"),
                    "--wait",
                    "20",
                ]
            )
            == 0
        )
        again = import_bundle(bundle, broker_url=mosquitto.url, wait_acks_s=20)
        assert again == {"messages": 8, "published": 8, "acked": 8, "damaged": [],
                         "acks_file": str(bundle) + ".acks", "acks_error": None}
        with sqlite3.connect(tmp_path / "collector.db") as db:
            assert db.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 5
            assert db.execute("SELECT COUNT(*) FROM photos").fetchone()[0] == 1
        # the kit has not heard any ack yet: nothing is marked acked
        assert c.status()["queued"] == 8 and c.status()["acked"] == 0
        c2 = _courier(key, state / "tpskit.db", url=mosquitto.url).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and c2.status()["acked"] < 8:
            time.sleep(0.1)
        assert c2.status()["acked"] == 8
        c2.close()
        with sqlite3.connect(tmp_path / "collector.db") as db:
            assert db.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 5
            assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 8
    finally:
        c.close()
        collector.stop()


def test_export_from_a_missing_database_is_refused(tmp_path):
    """A wrong --db must not report 'bundle written (0 messages)' (and leave an empty database behind):
    the KPPS would believe nothing is waiting to be sent."""
    (tmp_path / "usb").mkdir()
    missing = tmp_path / "state" / "tpskit.db"
    with pytest.raises(BundleError, match="not found"):
        _export(generate_key(), missing, tmp_path / "usb")
    assert not missing.exists() and not (tmp_path / "state").exists()
    assert list((tmp_path / "usb").iterdir()) == []


def test_damaged_message_lines_are_reported_not_crashed_on(tmp_path):
    """A message line that is valid JSON but not a message (a flipped bit in a key) is 'damaged'."""
    key = generate_key()
    path, _n = _filled_and_exported(tmp_path, key, 2)
    lines = path.read_bytes().splitlines()
    for damaged in (
        lines[1].replace(b'"topic"', b'"topiC"'),
        lines[1].replace(b'"payload"', b'"paylOad"'),
        b"[" + lines[1] + b"]",
        lines[1].replace(b'"retain":false', b'"retain":"no"'),
    ):
        path.write_bytes(b"\n".join([lines[0], damaged, *lines[2:]]) + b"\n")
        with pytest.raises(BundleError, match="damaged"):
            read_bundle(path)
    manifest = json.loads(lines[0])
    manifest["messages"] = [m[0] for m in manifest["messages"]]  # ids only: signed, but not a v1 manifest
    path.write_bytes(b"\n".join([canonical_json(sign_document(key, manifest)), *lines[1:]]) + b"\n")
    with pytest.raises(BundleError, match="not a tpskit bundle"):
        read_bundle(path)


def test_import_stops_at_once_when_the_broker_drops_the_connection(tmp_path, mosquitto_factory):
    """A broker that drops the importer half way (here: photo chunks over its max_packet_size) must give a
    clear error at once, not a wait of 60 s for every message left unpublished."""
    broker = mosquitto_factory(extra_conf="max_packet_size 3000")
    key = generate_key()
    # 5 readings (~700 B), then 3 photo chunks of ~5.5 KB (how many were PUBACKed is a race)
    path, n = _filled_and_exported(tmp_path, key, 5)
    started = time.monotonic()
    with pytest.raises(BundleError, match=r"connection .* lost after \d of 8 .* import again"):
        import_bundle(path, broker_url=broker.url, wait_acks_s=1)
    assert time.monotonic() - started < 20


def test_export_from_a_damaged_database_is_explained(tmp_path):
    """A kit database that is not SQLite any more (a failing SD card) gives a BundleError, not a traceback."""
    (tmp_path / "usb").mkdir()
    db = tmp_path / "tpskit.db"
    db.write_bytes(b"\x00rusak / damaged\x00" * 500)
    with pytest.raises(BundleError, match="cannot be read"):
        _export(generate_key(), db, tmp_path / "usb")
    assert list((tmp_path / "usb").iterdir()) == []


def test_import_that_no_collector_confirmed_is_not_a_success(tmp_path, mosquitto, capsys):
    """Every message reached the broker but no collector stored it (none running, or the kit not in its
    registry): the import must not end as a success, and must say what to do."""
    key = generate_key()
    path, _n = _filled_and_exported(tmp_path, key, 2)
    assert cli.main(["import", str(path), "--broker", mosquitto.url, "--wait", "1"]) == 1
    err = capsys.readouterr().err
    assert "0 of 5" in err and "import again" in err  # 2 readings, 3 photo chunks


def _kit_killed_with_messages_in_its_wal(state, n=4):
    """A kit process that queued *n* readings (one with a photo) and died before any checkpoint: what a
    power cut, or a card the kernel remounts read-only under the running kit, leaves behind."""
    script = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from comms.courier import Courier
from comms.signing import load_private_key
c = Courier(db_path={str(state / "tpskit.db")!r}, kit_id="kit-1", kode_wilayah={KW!r}, tps={TPS},
            signing_key=load_private_key({str(state / "keys" / "kit.key")!r}), broker_url="mqtt://127.0.0.1:1",
            chunk_bytes=4000)
for i in range({n}):
    c.submit_reading(capture_id=f"c{{i}}", halaman=1, reading={{"paslon": {{"01": i}}}},
                     photo_jpeg=b"J" * 9000 if i == 0 else None, taken_at=1.0, time_source="rtc")
os._exit(0)  # no close, no checkpoint
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


@pytest.mark.parametrize("shm", ["kept", "lost"])
def test_export_works_from_a_read_only_card_with_messages_only_in_the_wal(tmp_path, shm):
    """The USB bundle is the rescue path when the SD card fails, and a failing card is remounted read-only
    by the kernel: export must still write every unacked message, also those only in the -wal file (with or
    without its -shm index), and must not write anything into the state directory."""
    state = tmp_path / "state"
    key = generate_key()
    save_private_key(key, state / "keys" / "kit.key")
    _kit_killed_with_messages_in_its_wal(state)
    db = state / "tpskit.db"
    assert (state / "tpskit.db-wal").stat().st_size > 0
    if shm == "lost":
        (state / "tpskit.db-shm").unlink()
    with sqlite3.connect(f"file:{db}?immutable=1", uri=True) as main_file_only:  # what ignores the WAL
        tables = main_file_only.execute("SELECT name FROM sqlite_master WHERE name = 'outbox'").fetchall()
        in_main_file = main_file_only.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] if tables else 0
    assert in_main_file == 0  # every message is only in the WAL
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[kit]\nkit_id = "kit-1"\nkode_wilayah = "{KW}"\ntps = {TPS}\n'
        f'[paths]\nstate_dir = "{state}"\nvolatile_ok = true\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n'
    )
    (tmp_path / "usb").mkdir()
    before = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()}
    repo = Path(__file__).resolve().parent.parent
    with ReadOnlyView(state) as view:
        res = subprocess.run(
            view.command([sys.executable, "-m", "firmware.cli", "--config", str(cfg), "export",
                          str(tmp_path / "usb"), "--json"]),
            capture_output=True, text=True, timeout=120, cwd="/", env={**os.environ, "PYTHONPATH": str(repo)},
        )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["messages"] == 4 + 3  # 4 readings + 3 photo chunks
    assert {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()} == before
    assert [p.name for p in (tmp_path / "usb").iterdir()] == [Path(json.loads(res.stdout)["bundle"]).name]
    _manifest, msgs = read_bundle(json.loads(res.stdout)["bundle"], public_key=key.verify_key)
    with Outbox(db) as ob:  # the card works again: the bundle holds exactly the kit's unacked messages
        assert [(m.id, m.payload) for m in msgs] == [(r.id, r.payload) for r in ob.unacked()]


def test_snapshot_goes_to_the_next_folder_and_is_removed(tmp_path):
    """When the system temp folder is on the read-only card too, the copy goes to the USB stick, and is
    deleted from it afterwards (only the bundle stays there)."""
    state = tmp_path / "state"
    key = generate_key()
    save_private_key(key, state / "keys" / "kit.key")
    _kit_killed_with_messages_in_its_wal(state, n=2)
    not_a_folder = tmp_path / "tmp-on-the-card"
    not_a_folder.write_bytes(b"")
    (tmp_path / "usb").mkdir()
    with WalSnapshot(state / "tpskit.db", scratch_dirs=[not_a_folder, tmp_path / "usb"]) as copy:
        assert copy.parent.parent == tmp_path / "usb"
        assert sorted(p.name for p in copy.parent.iterdir()) == ["tpskit.db", "tpskit.db-wal"]
        with Outbox(copy) as ob:
            assert len(list(ob.unacked())) == 2 + 3
    assert list((tmp_path / "usb").iterdir()) == []


def test_a_second_export_never_overwrites_a_bundle_on_the_stick(tmp_path):
    """Two exports with the same name (the same second, or a kit clock that restarts at the same time after
    a reboot) must both stay on the stick: the first may hold messages the second does not (another --db)."""
    key = generate_key()
    c = _courier(key, tmp_path / "tpskit.db")
    _fill(c, 2)
    c.close()
    other = _courier(key, tmp_path / "other.db")
    _fill(other, 1)
    other.close()
    usb = tmp_path / "usb"
    usb.mkdir()
    first, n1 = export_bundle(db_path=tmp_path / "tpskit.db", out_dir=usb, signing_key=key, kit_id="kit-1",
                              kode_wilayah=KW, tps=TPS, now=1000.0)
    second, n2 = export_bundle(db_path=tmp_path / "other.db", out_dir=usb, signing_key=key, kit_id="kit-1",
                               kode_wilayah=KW, tps=TPS, now=1000.0)
    assert first != second and first.exists() and second.exists()
    assert second.name.endswith(".tpsbundle")
    assert len(read_bundle(first)[1]) == n1 and len(read_bundle(second)[1]) == n2
    third, _n = export_bundle(db_path=tmp_path / "tpskit.db", out_dir=usb, signing_key=key, kit_id="kit-1",
                              kode_wilayah=KW, tps=TPS, now=1000.0)
    assert third not in (first, second) and len(list(usb.iterdir())) == 3


def test_a_bundle_cut_off_or_with_a_bad_manifest_is_explained(tmp_path):
    """A bundle cut off in the middle of a line (the stick pulled while a PC copied it) is 'truncated', not
    'not a tpskit bundle'; a manifest without the kit's identity or with a broken key is refused by
    read_bundle (no KeyError in the import, no advice about 'tpskit provision')."""
    key = generate_key()
    path, _n = _filled_and_exported(tmp_path, key, 2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(BundleError, match="truncated.*again"):
        read_bundle(path)
    lines = data.splitlines()
    for change in ({"kit_id": None}, {"kode_wilayah": 7}, {"tps": "7"}, {"public_key": "!!"}):
        manifest = {k: v for k, v in json.loads(lines[0]).items() if k != "sig"}
        manifest.update(change)
        path.write_bytes(b"\n".join([canonical_json(sign_document(key, manifest)), *lines[1:]]) + b"\n")
        with pytest.raises(BundleError, match="not a tpskit bundle") as err:
            read_bundle(path)
        assert "provision" not in str(err.value)


def test_import_refused_by_the_broker_says_why_at_once(tmp_path, mosquitto_factory):
    """Wrong or missing credentials: the broker's CONNACK refusal is reported at once with its reason and
    what to check, not after 15 s as 'did not accept the connection'; a broker that is down: what to do."""
    broker = mosquitto_factory(anonymous=False)
    path, _n = _filled_and_exported(tmp_path, generate_key(), 1)
    started = time.monotonic()
    with pytest.raises(BundleError, match=r"(?i)refused.*not authori[sz]ed.*--username"):
        import_bundle(path, broker_url=broker.url, wait_acks_s=1)
    assert time.monotonic() - started < 5
    broker.stop()
    with pytest.raises(BundleError, match=r"cannot connect.*broker running.*import again"):
        import_bundle(path, broker_url=broker.url, wait_acks_s=1)


def _kit_with_photos(db: Path, key, *, readings: int, chunks_each: int) -> None:
    """kit-1's outbox with *readings* readings, each with a photo of *chunks_each* 64 KB chunks."""
    c = Courier(db_path=db, kit_id="kit-1", kode_wilayah=KW, tps=TPS, signing_key=key,
                broker_url="mqtt://127.0.0.1:1", chunk_bytes=64_000)
    for i in range(readings):
        c.submit_reading(capture_id=f"c{i}", halaman=1, reading={"paslon": {"01": i}},
                         photo_jpeg=os.urandom(64_000 * chunks_each), taken_at=1.0, time_source="rtc")
    c.close()


def test_export_of_many_photo_chunks_streams_in_bounded_memory(tmp_path):
    """A Pi Zero 2 W has 512 MB for everything: an export must not hold the whole bundle in memory (it held
    it three times: rows, lines, the joined file: 380 MB for 1000 chunks). Here ~26 MB of chunks."""
    import tracemalloc

    key = generate_key()
    _kit_with_photos(tmp_path / "tpskit.db", key, readings=15, chunks_each=20)
    (tmp_path / "usb").mkdir()
    tracemalloc.start()
    try:
        path, n = _export(key, tmp_path / "tpskit.db", tmp_path / "usb")
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 15 * 21 and path.stat().st_size > 25_000_000
    assert peak < 8_000_000, f"export peak {peak / 1e6:.0f} MB"
    _manifest, msgs = read_bundle(path, public_key=key.verify_key)
    with Outbox(tmp_path / "tpskit.db") as ob:
        assert [(m.id, m.payload) for m in msgs] == [(r.id, r.payload) for r in ob.unacked()]


def test_import_of_many_photo_chunks_streams_in_bounded_memory(tmp_path, mosquitto):
    """The import runs on whatever has signal (a laptop, another Pi): it must check and publish the bundle a
    few messages at a time, not read it whole (four copies of it: file, lines, JSON, payloads)."""
    import tracemalloc

    key = generate_key()
    _kit_with_photos(tmp_path / "tpskit.db", key, readings=15, chunks_each=20)
    (tmp_path / "usb").mkdir()
    path, n = _export(key, tmp_path / "tpskit.db", tmp_path / "usb")
    tracemalloc.start()
    try:
        result = import_bundle(path, broker_url=mosquitto.url, wait_acks_s=0)
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result == {"messages": n, "published": n, "acked": 0, "damaged": [],
                      "acks_file": None, "acks_error": None}
    assert peak < 12_000_000, f"import peak {peak / 1e6:.0f} MB"


def test_a_bundle_whose_topics_were_changed_publishes_nothing(tmp_path):
    """The manifest signs each message's id and payload, not the topic it goes to: a line moved to another
    TPS's topic or to the kit's ack topic (where the collector speaks) would be published by the importer's
    broker account. Every topic is checked against the manifest's kit before anything is published."""
    key = generate_key()
    path, n = _filled_and_exported(tmp_path, key, 2)
    lines = path.read_bytes().splitlines()
    entry = json.loads(lines[1])
    own = entry["topic"]
    for other in (own.rsplit("/", 1)[0] + "/ack", own.replace(f"/{TPS}/", f"/{TPS + 1}/"), "elsewhere/x"):
        changed = dict(entry, topic=other)
        path.write_bytes(b"\n".join([lines[0], canonical_json(changed), *lines[2:]]) + b"\n")
        assert read_bundle(path)  # the signature still verifies: the topic is not signed
        with pytest.raises(BundleError, match="not to a topic of kit kit-1.*nothing was imported"):
            import_bundle(path, broker_url="mqtt://127.0.0.1:1", wait_acks_s=0)  # before any connection


def test_a_usb_stick_from_several_kits_is_imported_as_one_folder(tmp_path, mosquitto, capsys):
    """A technician back from blank spots carries one stick with the bundles of many kits: `tpskit import
    <folder>` imports each (it said 'Is a directory'); an empty folder says what to give instead."""
    usb = tmp_path / "usb"
    usb.mkdir()
    registry = tmp_path / "kits.json"
    for kit_id, tps in (("kit-1", TPS), ("kit-2", TPS + 1)):
        key = generate_key()
        db = tmp_path / kit_id / "tpskit.db"
        c = Courier(db_path=db, kit_id=kit_id, kode_wilayah=KW, tps=tps, signing_key=key,
                    broker_url="mqtt://127.0.0.1:1", chunk_bytes=4000)
        _fill(c, 2)
        c.close()
        export_bundle(db_path=db, out_dir=usb, signing_key=key, kit_id=kit_id, kode_wilayah=KW, tps=tps)
        registry_add(registry, kit_id, key.verify_key, kode_wilayah=KW, tps=tps)
    (usb / ".tpskit-kit-3.tpsbundle.tmp").write_bytes(b"half a bundle")  # a write that never finished
    (usb / "notes.txt").write_text("TPS 7 dan 8")
    collector = Collector(broker_url=mosquitto.url, db_path=tmp_path / "collector.db", registry=registry,
                          client_id="collector-usb").start()
    try:
        assert collector.connected.wait(10)
        argv = ["import", str(usb), "--broker", mosquitto.url, "--kits", str(registry), "--wait", "20"]
        assert cli.main([*argv, "--json"]) == 0
        results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [Path(r["bundle"]).name[:12] for r in results] == ["tpskit-kit-1", "tpskit-kit-2"]
        assert all(r["acked"] == r["messages"] == 2 + 3 for r in results)  # 2 readings + 3 photo chunks
        with sqlite3.connect(tmp_path / "collector.db") as db:
            assert db.execute("SELECT COUNT(DISTINCT kit_id) FROM readings").fetchone()[0] == 2
    finally:
        collector.stop()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["import", str(empty), "--broker", mosquitto.url]) == 2
    assert "no *.tpsbundle file in" in capsys.readouterr().err


def test_export_to_the_mount_folder_of_a_stick_that_is_not_mounted_is_refused(tmp_path, monkeypatch):
    """`tpskit export /media/usb` with no stick mounted wrote the bundle onto the kit's own SD card and said
    'bundle written': the technician left with an empty stick. A folder below the stick roots must be on a
    mounted stick; a folder elsewhere (an ordinary path given on purpose) is taken as it is."""
    import comms.bundle as bundle

    key = generate_key()
    db = tmp_path / "state" / "tpskit.db"
    c = _courier(key, db)
    _fill(c, n=1)
    c.close()
    media = tmp_path / "media"
    (media / "usb").mkdir(parents=True)
    monkeypatch.setattr(bundle, "STICK_ROOTS", (media,))
    with pytest.raises(BundleError, match="no USB stick is mounted at .*nothing was written"):
        _export(key, db, media / "usb")
    assert list((media / "usb").iterdir()) == []
    # the same folder with a stick mounted on it: the bundle is written there
    monkeypatch.setattr(bundle.os.path, "ismount", lambda p: str(p) == str(media / "usb"))
    path, n = _export(key, db, media / "usb")
    assert path.parent == media / "usb" and n == 4  # the reading and its photo in 3 chunks


def test_export_to_a_file_or_from_a_folder_says_which_is_wrong(tmp_path):
    """A file given as the stick's folder was reported as 'does not exist', a folder as --db as 'not
    found': both exist, and the technician went looking for the wrong problem."""
    (tmp_path / "usb").mkdir()
    stick = tmp_path / "stick.img"
    stick.write_text("x")
    db = tmp_path / "state" / "tpskit.db"
    c = _courier(generate_key(), db)
    _fill(c, 1)
    c.close()
    with pytest.raises(BundleError, match="is not a folder"):
        _export(generate_key(), db, stick)
    with pytest.raises(BundleError, match="is a folder"):
        _export(generate_key(), tmp_path / "state", tmp_path / "usb")
    assert stick.read_text() == "x" and list((tmp_path / "usb").iterdir()) == []
