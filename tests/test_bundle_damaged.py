"""USB bundles with damaged lines: the intact messages are imported, the damaged ones reported by id."""

from __future__ import annotations

import json
import sqlite3

import pytest

from comms.bundle import BundleError, check_bundle, import_bundle, iter_intact, read_manifest
from comms.signing import canonical_json, generate_key
from firmware import cli
from tests.delivery_helpers import start_collector
from tests.test_bundle import TPS, _filled_and_exported

READINGS = [f"kit-1:c{i}:reading" for i in range(5)]
CHUNKS = [f"kit-1:c0:photo:{i}" for i in range(3)]


def _damage_payload(line: bytes) -> bytes:
    entry = json.loads(line)
    entry["payload"] = entry["payload"].replace('"01":', '"01":9')
    return canonical_json(entry)


def _import_to_collector(path, key, mosquitto, tmp_path, capsys, *, client_id: str) -> tuple[int, dict, str]:
    """``_import_json`` of *path* while a collector (kit-1's *key* registered) listens on the broker."""
    collector = start_collector(key, mosquitto, tmp_path, client_id=client_id)
    try:
        return _import_json(path, mosquitto.url, capsys)
    finally:
        collector.stop()


def _import_json(path, url, capsys, *, wait="20") -> tuple[int, dict, str]:
    code = cli.main(["import", str(path), "--broker", url, "--wait", wait, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def _stored_readings(tmp_path) -> int:
    with sqlite3.connect(tmp_path / "collector.db") as db:
        return db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]


def test_a_damaged_line_in_the_middle_is_skipped_and_the_others_imported(tmp_path, mosquitto, capsys):
    """One changed byte in one message must not hold back the other signed messages: they are imported and
    acked, the damaged one is named, and the import is not done (exit 1: export again from the kit)."""
    key = generate_key()
    path, n = _filled_and_exported(tmp_path, key, 5)
    lines = path.read_bytes().splitlines()
    lines[3] = _damage_payload(lines[3])  # kit-1:c2:reading
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(BundleError, match="damaged"):
        check_bundle(path)  # the strict whole-bundle check still says so
    assert read_manifest(path)["count"] == n
    code, result, err = _import_to_collector(path, key, mosquitto, tmp_path, capsys,
                                             client_id="collector-damaged")
    assert code == 1
    assert result["damaged"] == ["kit-1:c2:reading"]
    assert result["messages"] == n and result["published"] == result["acked"] == n - 1
    assert "1 messages damaged" in err and "kit-1:c2:reading" in err and "export again from the kit" in err
    assert "NOT DONE" not in err  # every intact message was confirmed: importing again would not help
    assert _stored_readings(tmp_path) == 4


def test_a_truncated_bundle_imports_what_is_whole(tmp_path, mosquitto, capsys):
    """The stick pulled while copying: the file ends in the middle of a line. The whole lines are imported,
    the cut-off line and the lost ones are reported."""
    key = generate_key()
    path, n = _filled_and_exported(tmp_path, key, 5)
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join(lines[:7]) + b"\n" + lines[7][: len(lines[7]) // 2])  # c0:photo:1 cut off
    code, result, err = _import_to_collector(path, key, mosquitto, tmp_path, capsys,
                                             client_id="collector-truncated")
    assert code == 1
    assert result["damaged"] == CHUNKS[1:]
    assert result["published"] == result["acked"] == n - 2
    assert "2 messages damaged or missing" in err and "kit-1:c0:photo:1, kit-1:c0:photo:2" in err
    assert _stored_readings(tmp_path) == 5


def test_lost_and_repeated_lines_are_matched_by_id(tmp_path):
    """A line lost in the middle and a line written twice do not shift the others: each line is matched
    to its manifest entry by id and checksum, in manifest order."""
    key = generate_key()
    path, _n = _filled_and_exported(tmp_path, key, 5)
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join([lines[0], lines[1], lines[3], lines[3], b"{not json", *lines[4:]]) + b"\n")
    damaged: list[str] = []
    got = [m.id for m in iter_intact(path, read_manifest(path), damaged)]
    assert damaged == ["kit-1:c1:reading"]
    assert got == [i for i in READINGS + CHUNKS if i != "kit-1:c1:reading"]


def test_an_intact_line_to_a_foreign_topic_still_refuses_everything(tmp_path):
    """Damage is skipped, tampering is not: an intact line (its checksum matches) sent to another TPS's topic
    refuses the whole bundle before anything is published, also when other lines are damaged."""
    key = generate_key()
    path, _n = _filled_and_exported(tmp_path, key, 3)
    lines = path.read_bytes().splitlines()
    lines[1] = _damage_payload(lines[1])
    entry = json.loads(lines[2])
    entry["topic"] = entry["topic"].replace(f"/{TPS}/", f"/{TPS + 1}/")
    lines[2] = canonical_json(entry)
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(BundleError, match="not to a topic of kit kit-1.*nothing was imported"):
        import_bundle(path, broker_url="mqtt://127.0.0.1:1", wait_acks_s=0)  # before any connection
    # a damaged line to a foreign topic is only damaged: it is never published
    entry["payload"] = entry["payload"].replace('"01":', '"01":9')
    lines[2] = canonical_json(entry)
    path.write_bytes(b"\n".join(lines) + b"\n")
    damaged: list[str] = []
    assert len(list(iter_intact(path, read_manifest(path), damaged))) == 3 + 3 - 2
    assert damaged == ["kit-1:c0:reading", "kit-1:c1:reading"]


def test_a_damaged_manifest_still_refuses_the_whole_bundle(tmp_path, capsys):
    """Nothing in a bundle can be trusted when its manifest does not verify: the import publishes nothing."""
    key = generate_key()
    path, _n = _filled_and_exported(tmp_path, key, 2)
    lines = path.read_bytes().splitlines()
    manifest = json.loads(lines[0])
    manifest["count"] -= 1
    manifest["messages"] = manifest["messages"][1:]
    path.write_bytes(b"\n".join([canonical_json(manifest), *lines[1:]]) + b"\n")
    with pytest.raises(BundleError, match="signature does not verify"):
        import_bundle(path, broker_url="mqtt://127.0.0.1:1", wait_acks_s=0)
    assert cli.main(["import", str(path), "--broker", "mqtt://127.0.0.1:1"]) == 2
    assert "signature does not verify" in capsys.readouterr().err
