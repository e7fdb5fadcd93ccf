"""The collector's acks carried back on the USB stick: `tpskit import` writes them next to the bundle, `tpskit
export` marks acked what the kit's collector key verifies and carries only the rest."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from comms import payloads
from comms.bundle import acks_path, read_bundle
from comms.outbox import Outbox
from comms.signing import canonical_json, generate_key, public_key_b64, save_private_key
from firmware import cli
from tests.delivery_helpers import start_collector
from tests.test_bundle import KW, TPS, _courier, _fill
from tests.test_bundle_damaged import CHUNKS, READINGS, _damage_payload

ALL = READINGS + CHUNKS


def _kit(tmp_path: Path, *, collector_key=None, key_file: Path | None = None):
    """kit-1 with 5 readings queued (8 messages) and its config; the config names the collector's public key
    (written to *key_file*) when *collector_key* or *key_file* is given. (key, config path, database)."""
    state = tmp_path / "state"
    key = generate_key()
    save_private_key(key, state / "keys" / "kit.key")
    mqtt = '[mqtt]\nurl = "mqtt://127.0.0.1:1"\n'
    if collector_key is not None or key_file is not None:
        key_file = key_file or tmp_path / "collector.pub"
        if collector_key is not None:
            key_file.write_text(public_key_b64(collector_key))
        mqtt += f'collector_key_file = "{key_file}"\n'
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[kit]\nkit_id = "kit-1"\nkode_wilayah = "{KW}"\ntps = {TPS}\n'
        f'[paths]\nstate_dir = "{state}"\nvolatile_ok = true\n{mqtt}'
    )
    c = _courier(key, state / "tpskit.db")
    _fill(c, 5)
    c.close()
    (tmp_path / "usb").mkdir()
    return key, cfg, state / "tpskit.db"


def _export(cfg: Path, usb: Path, capsys) -> tuple[dict, str]:
    assert cli.main(["--config", str(cfg), "export", str(usb), "--json"]) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err


def _import(bundle: Path, url: str, capsys, *, wait: str = "20") -> tuple[int, dict, str]:
    code = cli.main(["import", str(bundle), "--broker", url, "--wait", wait, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def _states(db: Path) -> dict[str, str]:
    with Outbox(db) as ob:
        return {i: ob.state_of(i) for i in ALL}


def _write_acks(path: Path, lines: list[bytes], *, kit_id: str = "kit-1") -> None:
    header = {
        "v": 1,
        "kind": "acks",
        "bundle": "b.tpsbundle",
        "kit_id": kit_id,
        "kode_wilayah": KW,
        "tps": TPS,
        "written_at": 1.0,
    }
    path.write_bytes(b"\n".join([canonical_json(header), *lines]) + b"\n")


def test_round_trip_carries_only_what_the_collector_did_not_ack(tmp_path, mosquitto, capsys):
    """export → import (one line damaged) → export: the kit marks acked what the collector confirmed, as the
    same acks over MQTT would, and the second bundle carries only the damaged message; once that one is
    imported too, a third export has nothing left to carry."""
    col_key = generate_key()
    key, cfg, db = _kit(tmp_path, collector_key=col_key)
    usb = tmp_path / "usb"
    first, _err = _export(cfg, usb, capsys)
    assert first["messages"] == 8 and first["acks_files"] == 0
    bundle = Path(first["bundle"])
    lines = bundle.read_bytes().splitlines()
    lines[3] = _damage_payload(lines[3])  # kit-1:c2:reading
    bundle.write_bytes(b"\n".join(lines) + b"\n")
    collector = start_collector(key, mosquitto, tmp_path, client_id="collector-acks", ack_key=col_key)
    try:
        code, result, err = _import(bundle, mosquitto.url, capsys)
        assert code == 1 and result["damaged"] == ["kit-1:c2:reading"] and result["acked"] == 7
        assert result["acks_file"] == str(acks_path(bundle)) == str(bundle) + ".acks"
        written = acks_path(bundle).read_bytes().splitlines()
        assert json.loads(written[0])["kind"] == "acks" and json.loads(written[0])["kit_id"] == "kit-1"
        acked = [i for a in written[1:] for i in payloads.parse_ack(a, keys=[col_key.verify_key])]
        assert sorted(acked) == sorted(i for i in ALL if i != "kit-1:c2:reading")
        assert [p.name for p in usb.iterdir() if p.name.startswith(".")] == []  # no temp file left

        second, err = _export(cfg, usb, capsys)
        assert second["acks_files"] == 1 and second["acks_confirmed"] == 7 and second["acks_rejected"] == 0
        assert second["messages"] == 1 and err == ""
        assert [m.id for m in read_bundle(second["bundle"])[1]] == ["kit-1:c2:reading"]
        states = _states(db)
        assert states.pop("kit-1:c2:reading") == "queued" and set(states.values()) == {"acked"}
        with sqlite3.connect(db) as conn:  # what Outbox.record(acked=...) writes for an MQTT ack
            rows = conn.execute("SELECT sent_at, acked_at FROM outbox WHERE state = 'acked'").fetchall()
        assert len(rows) == 7 and all(s == a and a > 0 for s, a in rows)

        code, result, _err = _import(Path(second["bundle"]), mosquitto.url, capsys)
        assert code == 0 and result["acked"] == 1 and result["damaged"] == []
    finally:
        collector.stop()
    on_stick = sorted(usb.iterdir())
    assert cli.main(["--config", str(cfg), "export", str(usb)]) == 0
    out = capsys.readouterr().out
    assert "1 messages confirmed by the collector" in out and "bundle written" not in out
    assert "nothing left to carry" in out and "no bundle was written" in out
    assert sorted(usb.iterdir()) == on_stick  # no empty bundle to carry and import for nothing
    again, _err = _export(cfg, usb, capsys)
    assert again["bundle"] is None and again["messages"] == 0 and sorted(usb.iterdir()) == on_stick
    assert set(_states(db).values()) == {"acked"}
    with sqlite3.connect(tmp_path / "collector.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 5


def test_importing_again_keeps_the_acks_already_on_the_stick(tmp_path, mosquitto, capsys):
    """A second import of the same bundle while no collector answers must not lose the acks the first one
    wrote; one that gets acks again adds nothing twice."""
    col_key = generate_key()
    key, cfg, _db = _kit(tmp_path, collector_key=col_key)
    bundle = Path(_export(cfg, tmp_path / "usb", capsys)[0]["bundle"])
    collector = start_collector(key, mosquitto, tmp_path, client_id="collector-acks", ack_key=col_key)
    try:
        assert _import(bundle, mosquitto.url, capsys)[0] == 0
        before = acks_path(bundle).read_bytes().splitlines()
        assert _import(bundle, mosquitto.url, capsys)[0] == 0  # the collector acks duplicates again
        after = acks_path(bundle).read_bytes().splitlines()
        assert after[1 : len(before)] == before[1:] and len(set(after[1:])) == len(after) - 1
    finally:
        collector.stop()
    code, result, _err = _import(bundle, mosquitto.url, capsys, wait="1")
    assert code == 1 and result["acked"] == 0 and result["acks_file"] == str(acks_path(bundle))
    assert acks_path(bundle).read_bytes().splitlines() == after  # left as it was


def test_acks_not_signed_by_the_kits_collector_key_are_ignored(tmp_path, capsys):
    """Acks signed by another key, unsigned, damaged, or a file that is not an acks file: each is reported,
    none marks anything acked, and the export still carries every unacked message. Acks of another kit
    match nothing."""
    col_key = generate_key()
    _key, cfg, db = _kit(tmp_path, collector_key=col_key)
    usb = tmp_path / "usb"
    _write_acks(
        usb / "forged.tpsbundle.acks", [payloads.ack_payload(ALL, collector="x", at=1.0, key=generate_key())]
    )
    _write_acks(usb / "unsigned.tpsbundle.acks", [payloads.ack_payload(ALL, collector="x", at=1.0)])
    good = payloads.ack_payload(READINGS[:1], collector="x", at=1.0, key=col_key)
    _write_acks(usb / "damaged.tpsbundle.acks", [good.replace(b'"kit-1:c0', b'"kit-1:c1'), b"{rusak"])
    (usb / "junk.tpsbundle.acks").write_bytes(b"\x00\xffnot an acks file")
    _write_acks(
        usb / "kit-2.tpsbundle.acks",
        [payloads.ack_payload(["kit-2:c0:reading"], collector="x", at=1.0, key=col_key)],
        kit_id="kit-2",
    )
    _write_acks(
        usb / "other-ids.tpsbundle.acks",
        [payloads.ack_payload(["kit-9:c0:reading"], collector="x", at=1.0, key=col_key)],
    )
    result, err = _export(cfg, usb, capsys)
    assert result["messages"] == 8 and result["acks_files"] == 6 and result["acks_confirmed"] == 0
    assert result["acks_rejected"] == 1 + 1 + 2 + 1
    assert "forged.tpsbundle.acks: 1 of 1 acks not signed by the collector key" in err
    assert "unsigned.tpsbundle.acks: 1 of 1" in err and "damaged.tpsbundle.acks: 2 of 2" in err
    assert "junk.tpsbundle.acks: not a tpskit acks file" in err
    assert "kit-2" not in err and "other-ids" not in err
    assert set(_states(db).values()) == {"queued"}


def test_without_a_collector_key_acks_files_are_ignored_and_said_why(tmp_path, capsys):
    """A kit with no collector key cannot tell the collector's acks from a file anyone wrote: it ignores them,
    says why, and exports everything; likewise when its key file cannot be read."""
    col_key = generate_key()
    _key, cfg, db = _kit(tmp_path)
    usb = tmp_path / "usb"
    _write_acks(usb / "b.tpsbundle.acks", [payloads.ack_payload(ALL, collector="x", at=1.0, key=col_key)])
    result, err = _export(cfg, usb, capsys)
    assert result["messages"] == 8 and result["acks_confirmed"] == 0 and result["acks_rejected"] == 1
    assert "acks files on the stick ignored: the kit has no collector key (mqtt.collector_key_file)" in err
    assert set(_states(db).values()) == {"queued"}
    for p in usb.glob("*.tpsbundle"):
        p.unlink()
    _key, cfg, db = _kit(tmp_path / "other", key_file=tmp_path / "missing.pub")
    usb = tmp_path / "other" / "usb"
    _write_acks(usb / "b.tpsbundle.acks", [payloads.ack_payload(ALL, collector="x", at=1.0, key=col_key)])
    result, err = _export(cfg, usb, capsys)
    assert result["messages"] == 8 and result["acks_confirmed"] == 0
    assert f"the collector key {tmp_path / 'missing.pub'} cannot be read" in err
