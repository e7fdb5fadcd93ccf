"""Files on a USB stick are input from anyone: a crafted or garbled bundle or acks file gets a clear answer
(a damaged line, a skipped file), never a traceback that stops the export or the import."""

from __future__ import annotations

import pytest

from comms import payloads
from comms.bundle import BundleError, acks_path, iter_intact, read_manifest, write_acks
from firmware import cli
from tests.test_bundle import _filled_and_exported
from tests.test_bundle_acks import ALL, _export, _kit, _states, _write_acks

NESTED = b"[" * 200_000  # json.loads raises RecursionError (not a ValueError) on this


def test_a_deeply_nested_acks_file_on_the_stick_is_skipped_not_fatal_to_the_export(tmp_path, capsys):
    from comms.signing import generate_key

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
    from comms.signing import generate_key

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
    from comms.signing import generate_key

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

    from comms.signing import generate_key

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
