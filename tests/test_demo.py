"""`tpskit demo` end to end: real reader, real broker, real collector (skipped until the model is present)."""

from __future__ import annotations

import json

import pytest

from firmware.cli import main
from tests.form_helpers import OTHER, install_second_form


def _reader_available() -> str | None:
    try:
        from inference.digits import DEFAULT_MODEL
        from inference.reader import PageReader  # noqa: F401
    except ImportError as exc:
        return f"inference reader not importable: {exc}"
    if not DEFAULT_MODEL.is_file():
        return f"digit model {DEFAULT_MODEL} not present"
    return None


@pytest.mark.broker
@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    from firmware.demo_broker import find_mosquitto

    why = _reader_available()
    if why:
        pytest.skip(why)
    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    rc = main(["demo", "--tps", "2", "--dir", str(tmp_path / "demo"), "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    presses = summary["presses"]
    assert len(presses) == 7  # 2 TPS x 3 pages + 1 spoiled photo
    spoiled = [p for p in presses if p["spoiled"]]
    assert [p["status"] for p in spoiled] == ["retake"]  # the hand over the page is refused
    assert all(p["status"] != "error" for p in presses)
    sent = [p for p in presses if p["status"] in ("ok", "review")]
    stored = summary["collector"]["readings"]
    assert len(stored) == len(sent)  # the collector holds every stored ok/review page exactly once
    assert summary["collector"]["rejects"] == 0
    slip = [t for t in summary["tps"] if t["slip"]]
    assert slip and any(p["status"] == "review" for p in presses if p["tps"] == slip[0]["tps"]) or \
        (slip[0]["cross_page"] or {}).get("status") == "review"
    assert "What the collector stored" in out
    # the operator's view: every TPS that sent all its pages is complete or, the slip's TPS, to check
    states = {t["tps"]: t["state"] for t in summary["results"]["tps"]}
    assert set(states) == {t["tps"] for t in summary["tps"]} and set(states.values()) <= {"ok", "review"}
    assert "TPS results as an operator sees them" in out
    # TPS 2 is the blank spot: no broker at its URL, so nothing went over MQTT; the USB stick carried it
    by_tps = {t["tps"]: t for t in summary["tps"]}
    assert by_tps[1]["blank_spot"] is False and by_tps[1]["delivered_by"] == "mqtt"
    blank = by_tps[2]
    assert blank["blank_spot"] is True and blank["delivered"] is False and blank["delivered_by"] == "usb"
    waiting = blank["waiting"]
    assert waiting["connected"] is False and waiting["acked_over_mqtt"] == 0 and waiting["led"] == "queued"
    blank_sent = [p for p in sent if p["tps"] == 2]
    assert waiting["messages"] > len(blank_sent)  # its readings and their photos' chunks, all in the outbox
    usb = summary["usb"]
    assert usb["tps"] == 2 and usb["collector_readings_before"] == 0  # nothing of it arrived over MQTT
    assert usb["export_rc"] == 0 and usb["exported"] == waiting["messages"]
    assert usb["import_rc"] == 0 and usb["acks_file"] == usb["bundle"] + ".acks"
    assert (tmp_path / "demo" / "usb-stick" / usb["acks_file"]).is_file()  # next to the bundle, on the stick
    # back on the kit: the collector's signed acks (the kit has its key) mark everything delivered
    assert usb["second_export_rc"] == 0 and usb["confirmed"] == usb["exported"]
    assert usb["second_export"] == 0 and usb["left_unacked"] == 0 and usb["delivered"] is True
    assert usb["collector_readings_after"] == len(blank_sent)
    assert sorted(r["halaman"] for r in stored if r["kit_id"] == blank["kit_id"]) == \
        sorted(p["page"] for p in blank_sent)
    assert states[2] in ("ok", "review")
    assert "tpskit import" in out and "nothing left to carry" in out
    assert "reached the collector by USB stick" in out and "its pages came by USB stick" in out


@pytest.mark.parametrize("argv,what", [(["--tps", "0"], "--tps"), (["--tps", "-2"], "--tps"),
                                       (["--scale", "0"], "--scale"), (["--scale", "-1"], "--scale"),
                                       (["--broker", "nonsense"], "--broker")])
def test_bad_options_are_refused_before_anything_starts(tmp_path, capsys, argv, what):
    work = tmp_path / "demo"
    assert main(["demo", "--dir", str(work), *argv]) == 2
    err = capsys.readouterr().err
    assert what in err and "Traceback" not in err
    assert not work.exists()


def _pages(form_ids: list[str]) -> list[dict]:
    """One TPS's three pages as the kit reads them, consistent, page k of form ``form_ids[k - 1]``."""
    import numpy as np

    from inference.synth import make_tps

    numbers = make_tps(np.random.default_rng(5))[0]
    return [{"image": "", "form": form, "page": h, "status": "ok", "reasons": [],
             "fields": {k: {"value": v} for k, v in numbers[h].items()}}
            for h, form in zip((1, 2, 3), form_ids, strict=True)]


def test_cross_page_check_is_the_form_the_pages_are_of(tmp_path, monkeypatch):
    """Pages of another form were checked as a TPS of the default form (every page "missing")."""
    from firmware.cmd_demo import cross_page

    install_second_form(tmp_path / "forms", monkeypatch)
    cross = cross_page(_pages([OTHER] * 3))
    assert cross["status"] == "ok" and cross["form"] == OTHER and cross["reasons"] == []


def test_cross_page_check_of_pages_of_different_forms_says_why(tmp_path, monkeypatch):
    from firmware.cmd_demo import cross_page
    from inference.templates import DEFAULT_FORM

    install_second_form(tmp_path / "forms", monkeypatch)
    cross = cross_page(_pages([DEFAULT_FORM, OTHER, OTHER]))
    assert cross["status"] == "review" and cross["form"] is None
    assert [r["code"] for r in cross["reasons"]] == ["mixed_forms"]
    assert DEFAULT_FORM in cross["reasons"][0]["message"] and OTHER in cross["reasons"][0]["message"]


def test_the_last_tps_is_the_blank_spot_when_there_are_two_or_more():
    from firmware.cmd_demo import blank_spot_tps

    assert blank_spot_tps(1) is None  # one TPS: the ordinary path, over MQTT
    assert blank_spot_tps(2) == 2 and blank_spot_tps(5) == 5


def test_the_blank_spots_broker_port_refuses_connections():
    import socket

    from comms.courier import parse_broker_url
    from firmware.cmd_demo import NoBroker

    nothing = NoBroker()
    try:
        host, port, tls = parse_broker_url(nothing.url)
        assert host == "127.0.0.1" and not tls
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, port), timeout=2).close()
        with socket.socket() as other, pytest.raises(OSError):  # nobody else can listen there meanwhile
            other.bind((host, port))
    finally:
        nothing.stop()


def test_a_dir_that_is_a_file_is_refused_before_anything_starts(tmp_path, capsys):
    work = tmp_path / "demo"
    work.write_text("notes\n")
    assert main(["demo", "--dir", str(work)]) == 2
    err = capsys.readouterr().err
    assert "--dir" in err and "Traceback" not in err
    assert work.read_text() == "notes\n"
