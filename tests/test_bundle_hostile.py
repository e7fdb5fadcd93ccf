"""Files on a USB stick are input from anyone: a crafted or garbled bundle or acks file gets a clear answer
(a damaged line, a skipped file), never a traceback that stops the export or the import."""

from __future__ import annotations

import json

import pytest

from comms import payloads
from comms.bundle import BundleError, acks_path, import_bundle, iter_intact, read_manifest, write_acks
from comms.signing import canonical_json, generate_key
from firmware import cli
from tests.test_bundle import KW, TPS, _courier, _filled_and_exported
from tests.test_bundle import _export as export_kit1
from tests.test_bundle_acks import ALL, _export, _kit, _states, _write_acks

NESTED = b"[" * 200_000  # json.loads raises RecursionError (not a ValueError) on this


def test_a_deeply_nested_acks_file_on_the_stick_is_skipped_not_fatal_to_the_export(tmp_path, capsys):
    col_key = generate_key()
    _key, cfg, db = _kit(tmp_path, collector_key=col_key)
    usb = tmp_path / "usb"
    (usb / "evil.tpsbundle.acks").write_bytes(NESTED + b"\n")
    _write_acks(usb / "good.tpsbundle.acks",
                [payloads.ack_payload(ALL[:1], collector="x", at=1.0, key=col_key)])
    result, err = _export(cfg, usb, capsys)
    assert result["messages"] == len(ALL) - 1 and result["acks_confirmed"] == 1
    assert "evil.tpsbundle.acks: not a tpskit acks file" in err
    assert _states(db)[ALL[0]] == "acked"


def test_a_deeply_nested_message_line_is_damaged_and_a_nested_manifest_refused_clearly(tmp_path):
    path, n = _filled_and_exported(tmp_path, generate_key(), 3)
    lines = path.read_bytes().splitlines()
    manifest = read_manifest(path)
    lines[2] = NESTED
    path.write_bytes(b"\n".join(lines) + b"\n")
    damaged: list[str] = []
    got = [m.id for m in iter_intact(path, manifest, damaged)]
    assert damaged == [manifest["messages"][1][0]] and len(got) == n - 1

    path.write_bytes(b"\n".join([NESTED, *lines[1:]]) + b"\n")
    with pytest.raises(BundleError, match="not a tpskit bundle"):
        read_manifest(path)
    assert cli.main(["import", str(path), "--broker", "mqtt://127.0.0.1:1"]) == 2


def test_an_earlier_acks_file_that_is_deeply_nested_is_replaced_by_the_import(tmp_path):
    path, _n = _filled_and_exported(tmp_path, generate_key(), 1)
    manifest = read_manifest(path)
    acks_path(path).write_bytes(NESTED + b"\n")
    ack = payloads.ack_payload([manifest["messages"][0][0]], collector="x", at=1.0)
    assert write_acks(path, manifest, [ack]) == acks_path(path)
    assert acks_path(path).read_bytes().splitlines()[1] == ack


def test_a_huge_acks_file_is_skipped_without_reading_it_all(tmp_path, capsys, monkeypatch):
    """An acks file far larger than any tpskit import writes (a crafted one, a disk image named *.acks) would
    hold the export for as long as its lines take to check, with all of them in memory, on a Pi that also
    runs the kit: it is skipped, said why, and the export goes on."""
    import tracemalloc

    col_key = generate_key()
    _key, cfg, db = _kit(tmp_path, collector_key=col_key)
    usb = tmp_path / "usb"
    line = payloads.ack_payload(ALL[:1], collector="x", at=1.0, key=generate_key())
    big = usb / "big.tpsbundle.acks"
    _write_acks(big, [line] * (64 * 1024 * 1024 // len(line) + 1))  # 64 MiB of (forged) acks
    tracemalloc.start()
    try:
        result, err = _export(cfg, usb, capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result["messages"] == len(ALL) and result["acks_rejected"] == 1
    assert "big.tpsbundle.acks: cannot be read (larger than" in err
    assert peak < 16 * 1024 * 1024
    assert set(_states(db).values()) == {"queued"}


def test_a_line_whose_topic_or_retain_flag_was_changed_within_the_kit_publishes_nothing(tmp_path):
    """The manifest signs each message's id and payload, not the line's topic and retain flag: a reading moved
    to the kit's own photo topic, a reading made retained (the broker would keep it as the TPS's latest) or
    the readiness made not retained (the fleet view would lose it) is refused whole, before any connection:
    each line must be addressed as its signed message says."""
    key = generate_key()
    c = _courier(key, tmp_path / "tpskit.db")
    c.submit_reading(capture_id="c0", halaman=1, reading={"paslon": {"01": 3}}, photo_jpeg=None,
                     taken_at=1.0, time_source="rtc")
    c.publish_retained("readiness", {"ready": True})
    c.close()
    (tmp_path / "usb").mkdir()
    path, n = export_kit1(key, tmp_path / "tpskit.db", tmp_path / "usb")
    assert n == 2
    lines = path.read_bytes().splitlines()
    reading, readiness = (json.loads(x) for x in lines[1:3])
    assert reading["topic"] == f"tpskit/v1/{KW}/{TPS}/reading" and not reading["retain"]
    assert readiness["retain"]
    changes = [
        (1, dict(reading, topic=f"tpskit/v1/{KW}/{TPS}/photo"), "reading message going to .*/photo"),
        (1, dict(reading, topic=f"tpskit/v1/{KW}/{TPS}/readiness"), "reading message going to .*/readiness"),
        (1, dict(reading, retain=True), r"reading message .*\(retained\); the kit publishes .*not retained"),
        (2, dict(readiness, retain=False), r"readiness message .*\(not retained\).*\(retained\)"),
    ]
    for at, changed, why in changes:
        edited = list(lines)
        edited[at] = canonical_json(changed)
        path.write_bytes(b"\n".join(edited) + b"\n")
        with pytest.raises(BundleError, match=f"{why}.*the bundle was changed; nothing was imported"):
            import_bundle(path, broker_url="mqtt://127.0.0.1:1", wait_acks_s=0)  # before any connection


@pytest.mark.parametrize("retain", [True, False])
def test_a_heartbeat_line_in_a_bundle_signed_by_the_kit_publishes_nothing(tmp_path, retain):
    """A kit never queues a heartbeat, so no bundle it exports holds one: a heartbeat line listed in a
    manifest the kit key signed (a crafted bundle) is refused whole, before any connection, whether it is
    retained (as the kit publishes heartbeats) or not: the broker would keep a crafted heartbeat as the
    kit's latest state for the fleet view."""
    import hashlib

    from comms.signing import sign_document

    key = generate_key()
    path, n = _filled_and_exported(tmp_path, key, 1)
    lines = path.read_bytes().splitlines()
    beat = payloads.build(key, kind="heartbeat", msg_id="kit-1:heartbeat:1", kit_id="kit-1",
                          kode_wilayah=KW, tps=TPS, seq=None, created_at=2e9,
                          body={"state": "ready", "faults": {}})
    line = {"id": "kit-1:heartbeat:1", "topic": f"tpskit/v1/{KW}/{TPS}/heartbeat", "retain": retain,
            "payload": beat.decode()}
    manifest = {k: v for k, v in json.loads(lines[0]).items() if k != "sig"}
    manifest["messages"] = [*manifest["messages"], ["kit-1:heartbeat:1", hashlib.sha256(beat).hexdigest()]]
    manifest["count"] = n + 1
    path.write_bytes(b"\n".join([canonical_json(sign_document(key, manifest)), *lines[1:],
                                 canonical_json(line)]) + b"\n")
    never = "is a heartbeat message, which a kit never queues.*nothing was imported"
    with pytest.raises(BundleError, match=never):
        import_bundle(path, broker_url="mqtt://127.0.0.1:1", wait_acks_s=0)
