"""tpskit fleet results: per TPS, from a real collector database, whether all three halaman arrived, read and
consistent across pages, or what is missing or must be checked."""

from __future__ import annotations

import csv
import io
import json
import time

import numpy as np
import pytest

from comms import payloads, topics
from comms.collector_store import CollectorStore
from comms.signing import KitEntry, generate_key, registry_add
from firmware import cli
from firmware.results import (
    INCOMPLETE,
    NONE,
    OK,
    REVIEW,
    assess,
    pages_from_collector_db,
    parse_since,
    rejected_from_collector_db,
    table,
    to_csv,
)
from inference.synth import make_tps
from tests.form_helpers import OTHER, install_second_form
from tests.pg import pg_cluster, pg_url  # noqa: F401 (fixtures)

PREFIX = "tpskit/v1"
EPOCH = 1_700_000_000_000
KW = "31.71.01.1001"


class Kit:
    """One registered kit sending signed readings of its TPS, seq by seq."""

    def __init__(self, kit_id: str, tps: int, *, kode_wilayah: str = KW) -> None:
        self.kit_id, self.tps, self.kode_wilayah = kit_id, tps, kode_wilayah
        self.key = generate_key()
        self.seq = 0
        self.numbers = make_tps(np.random.default_rng(tps))[0]  # {halaman: {field: value}}, consistent

    @property
    def entry(self) -> KitEntry:
        return KitEntry(self.kit_id, self.key.verify_key, self.kode_wilayah, self.tps)

    def page(self, halaman: int, *, status: str = "ok", change: dict | None = None,
             form: str | None = None, fields: object = None, taken_at: float = 1.0,
             time_source: str = "rtc", epoch: int = EPOCH, photo: bytes | None = None) -> tuple[str, bytes]:
        self.seq += 1
        values = {**self.numbers[halaman], **(change or {})}
        reading = {"page": halaman, "status": status, "reasons": [],
                   "fields": {k: {"value": v} for k, v in values.items()} if fields is None else fields}
        if form is not None:  # as the kit's reader names it
            reading["form"] = form
        capture = f"c{self.seq}"
        body = payloads.reading_body(capture_id=capture, halaman=halaman, reading=reading, taken_at=taken_at,
                                     time_source=time_source, photo=photo, chunk_bytes=1000)
        msg = payloads.build(self.key, kind="reading", msg_id=payloads.reading_id(self.kit_id, capture),
                             kit_id=self.kit_id, kode_wilayah=self.kode_wilayah, tps=self.tps, seq=self.seq,
                             created_at=2.0, body=body, epoch=epoch)
        return topics.topic(PREFIX, self.kode_wilayah, self.tps, "reading"), msg

    def photo(self, halaman: int, photo: bytes) -> list[tuple[str, bytes]]:
        """The photo chunks of the last page sent (``page(..., photo=photo)``)."""
        capture, out = f"c{self.seq}", []
        for body in payloads.photo_chunk_bodies(capture_id=capture, halaman=halaman, photo=photo,
                                                chunk_bytes=1000):
            self.seq += 1
            msg = payloads.build(self.key, kind="photo",
                                 msg_id=payloads.photo_chunk_id(self.kit_id, capture, body["index"]),
                                 kit_id=self.kit_id, kode_wilayah=self.kode_wilayah, tps=self.tps,
                                 seq=self.seq, created_at=2.0, body=body, epoch=EPOCH)
            out.append((topics.topic(PREFIX, self.kode_wilayah, self.tps, "photo"), msg))
        return out


def _collect(db, kits: list[Kit], messages: list[tuple[str, bytes]]) -> None:
    """What a collector stores of these messages, in this order (as they arrive)."""
    registry = {k.kit_id: k.entry for k in kits}
    store = CollectorStore(db)
    try:
        for topic, msg in messages:
            store.begin()
            out = store.process(topic, msg, registry)
            store.commit()
            assert out.status == "stored", out
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def collector_db(request, tmp_path):
    """A collector database on both backends (PostgreSQL: a throw-away cluster, see tests/pg.py)."""
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else tmp_path / "collector.db"


def test_each_tps_is_complete_to_check_incomplete_or_silent(collector_db):
    db = collector_db
    full, partial, broken, silent = Kit("kit-a", 1), Kit("kit-b", 2), Kit("kit-c", 3), Kit("kit-d", 4)
    twin_1, twin_2 = Kit("kit-e", 5), Kit("kit-f", 5)
    corrected = full.page(2, status="review")  # photographed, to check; then photographed again, ok
    late = [corrected, full.page(1), full.page(2), full.page(3)]
    messages = [*late[1:], late[0]]  # the older page 2 arrives last: it must not replace the newer one
    messages += [partial.page(1), partial.page(2)]
    v = broken.numbers[3]["total_suara"]
    messages += [broken.page(1), broken.page(2), broken.page(3, change={"total_suara": v + 10})]
    messages += [twin_1.page(1), twin_1.page(2), twin_2.page(3)]
    kits = [full, partial, broken, silent, twin_1, twin_2]
    _collect(db, kits, messages)

    got = {r.tps: r for r in assess({k.kit_id: k.entry for k in kits}, pages_from_collector_db(db))}
    assert got[1].state == OK and got[1].pages == {1: "ok", 2: "ok", 3: "ok"} and got[1].reasons == []
    assert got[2].state == INCOMPLETE and got[2].pages == {1: "ok", 2: "ok"}
    assert any("3" in r for r in got[2].reasons)  # page_missing names halaman 3
    assert got[3].state == REVIEW and any("V.C = I.B.4" in r for r in got[3].reasons)
    assert got[4].state == NONE and got[4].pages == {}
    assert got[5].state == REVIEW and got[5].kits == ["kit-e", "kit-f"]
    assert any("beberapa kit" in r for r in got[5].reasons)


def test_a_tps_is_checked_against_the_form_its_pages_name(tmp_path, monkeypatch):
    """Pages of another form than the default were checked as a TPS of the default form: every page
    "missing", the TPS to check though all three arrived, read and consistent."""
    from inference.templates import DEFAULT_FORM

    install_second_form(tmp_path / "forms", monkeypatch)
    other, broken = Kit("kit-a", 1), Kit("kit-b", 2)
    v = broken.numbers[3]["total_suara"]
    messages = [other.page(h, form=OTHER) for h in (1, 2, 3)]
    messages += [broken.page(1, form=OTHER), broken.page(2, form=OTHER),
                 broken.page(3, form=OTHER, change={"total_suara": v + 10})]
    _collect(tmp_path / "collector.db", [other, broken], messages)
    got = {r.tps: r for r in assess(None, pages_from_collector_db(tmp_path / "collector.db"))}
    assert got[1].state == OK and got[1].reasons == []
    assert got[2].state == REVIEW and any("V.C = I.B.4" in r for r in got[2].reasons)
    assert all(DEFAULT_FORM not in r for r in got[2].reasons)


def test_a_tps_whose_pages_are_of_different_forms_is_to_check_and_says_why(tmp_path, monkeypatch):
    from inference.templates import DEFAULT_FORM

    install_second_form(tmp_path / "forms", monkeypatch)
    mixed, partial = Kit("kit-a", 1), Kit("kit-b", 2)
    messages = [mixed.page(1), mixed.page(2, form=DEFAULT_FORM), mixed.page(3, form=OTHER)]
    messages += [partial.page(1, form=DEFAULT_FORM), partial.page(2, form=OTHER)]
    _collect(tmp_path / "collector.db", [mixed, partial], messages)
    got = {r.tps: r for r in assess(None, pages_from_collector_db(tmp_path / "collector.db"))}
    assert got[1].state == REVIEW and got[2].state == INCOMPLETE
    for res in got.values():
        why = [r for r in res.reasons if DEFAULT_FORM in r and OTHER in r]
        assert why and "halaman 2" in why[0]
    assert "halaman 3" in [r for r in got[1].reasons if OTHER in r][0]


def test_a_tps_is_complete_when_every_page_of_its_form_came_however_many_there_are(tmp_path, monkeypatch):
    """Forms are data: a form of four halaman is complete with four, incomplete (not 'to check') with three,
    and its fourth page has its own status and numbers in the report."""
    from inference import templates

    root = install_second_form(tmp_path / "forms", monkeypatch)
    page4 = json.loads((root / OTHER / "page3.json").read_text(encoding="utf-8"))
    page4["page"], page4["tag"]["id"] = 4, page4["tag"]["id"] + 100
    (root / OTHER / "page4.json").write_text(json.dumps(page4), encoding="utf-8")
    load = templates.load_form
    monkeypatch.setattr(templates, "load_form", lambda form_id=OTHER, forms_dir=root: load(form_id,
                                                                                            forms_dir))
    four, three = Kit("kit-a", 1), Kit("kit-b", 2)
    four.numbers[4] = dict(four.numbers[3])
    messages = [four.page(h, form=OTHER) for h in (1, 2, 3, 4)]
    messages += [three.page(h, form=OTHER) for h in (1, 2, 3)]
    _collect(tmp_path / "collector.db", [four, three], messages)
    got = {r.tps: r for r in assess(None, pages_from_collector_db(tmp_path / "collector.db"))}
    assert got[1].state == OK and got[1].expected_pages == (1, 2, 3, 4) and got[1].pages[4] == "ok"
    assert got[1].numbers["h4.suara_sah"] == four.numbers[3]["suara_sah"]
    assert got[2].state == INCOMPLETE and any("4" in r for r in got[2].reasons)
    rows = list(csv.DictReader(io.StringIO(to_csv(got.values()))))
    assert rows[0]["halaman_4"] == "ok" and rows[1]["halaman_4"] == ""
    assert "4:ok" in table(list(got.values())) and "4:-" in table(list(got.values()))


def test_a_form_this_machine_does_not_know_is_to_check_not_a_crash(tmp_path):
    kit = Kit("kit-a", 1)
    _collect(tmp_path / "collector.db", [kit], [kit.page(h, form="C.HASIL-ENTAH-2099") for h in (1, 2, 3)])
    (res,) = assess(None, pages_from_collector_db(tmp_path / "collector.db"))
    assert res.state == REVIEW and any("C.HASIL-ENTAH-2099" in r for r in res.reasons)


def test_a_signed_reading_whose_numbers_are_not_numbers_is_to_check_not_a_crash(tmp_path, capsys):
    """The collector stores any JSON object as a page's reading (a kit of another version, a damaged one): a
    field value that is text, or fields that are not {name: {"value": n}}, ended the whole report (every
    TPS of the database) in a traceback."""
    db = tmp_path / "collector.db"
    text, listed, plain, good = Kit("kit-a", 1), Kit("kit-b", 2), Kit("kit-c", 3), Kit("kit-d", 4)
    messages = [text.page(1), text.page(2, change={"paslon_1": "12"}), text.page(3)]
    messages += [listed.page(1), listed.page(2, fields=[1, 2, 3]), listed.page(3)]
    messages += [plain.page(1), plain.page(2, fields={"paslon_1": 12}), plain.page(3)]
    messages += [good.page(h) for h in (1, 2, 3)]
    _collect(db, [text, listed, plain, good], messages)
    got = {r.tps: r for r in assess(None, pages_from_collector_db(db))}
    assert [got[t].state for t in (1, 2, 3, 4)] == [REVIEW, REVIEW, REVIEW, OK]
    assert cli.main(["fleet", "results", "--collector-db", str(db)]) == 0
    assert "PERIKSA" in capsys.readouterr().out


def test_since_leaves_out_the_practice_pages_of_h1(tmp_path, capsys):
    """A page photographed on H-1 (a technician's or KPPS's practice press) made a TPS complete when polling
    day's page never came. With --since the report counts only the pages photographed from then on: by the
    kit's clock when it was synchronised, else by when the collector received them (a kit's unsynced clock
    may be days behind; a page is never received before it is taken)."""
    db = tmp_path / "collector.db"
    now = time.time()
    day, h1, today = now - 3600, now - 86400, now - 600  # polling day began an hour ago
    practised, practice_only, unsynced, fresh = (Kit(f"kit-{k}", t) for t, k in enumerate("abcd", 1))
    messages = [practised.page(3, taken_at=h1, time_source="ntp")]  # H-1 practice; polling day's page 3 lost
    messages += [practised.page(h, taken_at=today, time_source="ntp") for h in (1, 2)]
    messages += [practice_only.page(h, taken_at=h1, time_source="ntp") for h in (1, 2, 3)]
    # a kit whose clock runs ten days behind, received now: a polling-day page, kept
    messages += [unsynced.page(h, taken_at=now - 10 * 86400, time_source="unsynced") for h in (1, 2, 3)]
    messages += [fresh.page(h, taken_at=today, time_source="ntp") for h in (1, 2, 3)]
    kits = [practised, practice_only, unsynced, fresh]
    _collect(db, kits, messages)
    registry = {k.kit_id: k.entry for k in kits}

    everything = {r.tps: r for r in assess(registry, pages_from_collector_db(db))}
    assert [everything[t].state for t in (1, 2, 3, 4)] == [OK, OK, OK, OK]  # practice counted as results

    got = {r.tps: r for r in assess(registry, pages_from_collector_db(db, since=day))}
    assert got[1].state == INCOMPLETE and got[1].pages == {1: "ok", 2: "ok"}
    assert any("1 halaman difoto sebelum --since" in r for r in got[1].reasons)
    assert got[2].state == NONE and any("3 halaman difoto sebelum --since" in r for r in got[2].reasons)
    assert got[3].state == OK and got[4].state == OK and got[4].reasons == []

    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(day))
    assert cli.main(["fleet", "results", "--collector-db", str(db), "--since", stamp, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]["total"]
    assert summary == {"ok": 2, "review": 0, "incomplete": 1, "none": 1}
    assert cli.main(["fleet", "results", "--collector-db", str(db), "--since", "14 Februari"]) == 2
    err = capsys.readouterr().err
    assert "--since '14 Februari'" in err and "2024-02-14" in err and "Traceback" not in err


def test_a_tps_whose_pages_the_collector_refused_says_so_and_what_to_do(collector_db, capsys):
    """A kit re-provisioned with a new key whose registry row was not updated: the collector refuses every
    page (bad signature) and the TPS showed only 'nothing received yet'. A refusal later made good (the row
    fixed, the kit's resend stored) is history and not shown."""
    db = collector_db
    rekeyed, fixed, fine = Kit("kit-a", 1), Kit("kit-b", 2), Kit("kit-c", 3)
    registered = {k.kit_id: k.entry for k in (rekeyed, fixed, fine)}
    rekeyed.key = generate_key()  # the registry still has the old one
    store = CollectorStore(db)
    try:
        for kit, halaman in [(rekeyed, 1), (rekeyed, 2), (rekeyed, 3), (fine, 1), (fine, 2), (fine, 3)]:
            store.begin()
            store.process(*kit.page(halaman), registered)
            store.commit()
        for h in (1, 2, 3):  # refused while its row is missing, stored when resent after the fix
            topic, msg = fixed.page(h)
            store.begin()
            assert store.process(topic, msg, {}).status == "rejected"
            assert store.process(topic, msg, registered).status == "stored"
            store.commit()
    finally:
        store.close()

    got = {r.tps: r for r in assess(registered, pages_from_collector_db(db),
                                     rejected=rejected_from_collector_db(db))}
    assert got[1].state == NONE
    (refused,) = [r for r in got[1].reasons if "menolak" in r]
    assert "3 pesan halaman" in refused and "bad_signature ×3" in refused and "registry" in refused
    assert got[2].state == OK and got[2].reasons == [] and got[3].reasons == []
    assert rejected_from_collector_db(db, kabupaten="31.72") == {}
    assert rejected_from_collector_db(db, since=time.time() + 60) == {}
    assert cli.main(["fleet", "results", "--collector-db", str(db)]) == 0
    assert "bad_signature ×3" in capsys.readouterr().out


def test_results_carry_the_numbers_read_and_csv_has_a_column_per_field(tmp_path, capsys):
    """The operator's export is the point of polling day: the numbers of each TPS's newest pages, not only
    their statuses."""
    db = tmp_path / "collector.db"
    full, partial = Kit("kit-a", 1), Kit("kit-b", 2)
    messages = [full.page(h) for h in (1, 2, 3)] + [partial.page(2)]
    _collect(db, [full, partial], messages)
    got = {r.tps: r for r in assess(None, pages_from_collector_db(db))}
    expected = {**full.numbers[1], **full.numbers[2], **full.numbers[3]}
    assert got[1].numbers == expected and list(got[1].numbers)[:1] == list(full.numbers[1])[:1]
    assert got[2].numbers == partial.numbers[2]
    out = tmp_path / "hasil.csv"
    assert cli.main(["fleet", "results", "--collector-db", str(db), "--csv", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tps"][0]["numbers"] == expected
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [rows[0][k] for k in expected] == ["" if v is None else str(v) for v in expected.values()]
    assert rows[1]["paslon_1"] == str(partial.numbers[2]["paslon_1"]) and rows[1]["dpt_jml"] == ""


def test_results_say_which_pages_photos_have_not_arrived_yet(tmp_path, capsys):
    """The numbers go first and the photo (the evidence) after it: a TPS is complete on its numbers, and the
    report says whose photos are still on their way."""
    db = tmp_path / "collector.db"
    kit = Kit("kit-a", 1)
    jpeg = b"\xff\xd8" + bytes(range(256)) * 9 + b"\xff\xd9"
    messages = []
    for h in (1, 2, 3):
        messages.append(kit.page(h, photo=jpeg))
        chunks = kit.photo(h, jpeg)
        messages += chunks if h != 2 else chunks[:-1]  # page 2's last chunk still on its way
    _collect(db, [kit], messages)
    (res,) = assess(None, pages_from_collector_db(db))
    assert res.state == OK and res.photos_missing == [2]
    assert cli.main(["fleet", "results", "--collector-db", str(db), "--csv", "-"]) == 0
    assert list(csv.DictReader(io.StringIO(capsys.readouterr().out)))[0]["foto_belum"] == "2"


def test_pages_of_a_kit_the_registry_no_longer_lists_for_the_tps_are_to_check(tmp_path):
    """The collector checked each page against its registry when it came; a kit retired or moved since (a
    stolen kit revoked, a kit sent to another TPS) must not make a TPS complete."""
    db = tmp_path / "collector.db"
    kept, retired, moved = Kit("kit-a", 1), Kit("kit-b", 2), Kit("kit-c", 3)
    _collect(db, [kept, retired, moved], [k.page(h) for k in (kept, retired, moved) for h in (1, 2, 3)])
    now = {kept.kit_id: kept.entry, moved.kit_id: KitEntry(moved.kit_id, moved.key.verify_key, KW, 9)}
    got = {r.tps: r for r in assess(now, pages_from_collector_db(db))}
    assert got[1].state == OK and got[1].reasons == []
    for tps, kit in ((2, retired), (3, moved)):
        assert got[tps].state == REVIEW
        assert any("tidak terdaftar untuk TPS ini: " + kit.kit_id in r for r in got[tps].reasons)
    assert got[9].state == NONE  # where the moved kit is registered now: nothing from it there yet
    assert {r.tps: r.state for r in assess(None, pages_from_collector_db(db))} == {1: OK, 2: OK, 3: OK}


def test_a_replacement_card_whose_clock_was_behind_still_gives_the_newest_pages(tmp_path):
    """A kit's SD card dies on polling day; the technician sets up a new card for the same kit, in the field
    without NTP: its outbox's epoch comes from a clock behind the old card's. Its pages, photographed later,
    must win over the dead card's, whether its clock synced later or not; within one card the kit's
    sequence still decides, whatever its clock says."""
    db = tmp_path / "collector.db"
    now = time.time()
    synced, unsynced = Kit("kit-a", 1), Kit("kit-b", 2)
    messages = []
    for kit, source in ((synced, "ntp"), (unsynced, "unsynced")):
        messages += [kit.page(h, taken_at=now - 7200, time_source="ntp") for h in (1, 2, 3)]  # the old card
        # the new card's outbox: an epoch from a clock a year behind (its seq would start again at 1; the
        # test's message ids need it to go on)
        taken = now - 600 if source == "ntp" else now - 400 * 86400
        messages += [kit.page(2, change={"paslon_1": 777}, taken_at=taken, time_source=source,
                              epoch=EPOCH - 365 * 86400 * 1000)]
    _collect(db, [synced, unsynced], messages)
    got = {r.tps: r for r in assess(None, pages_from_collector_db(db))}
    for tps in (1, 2):
        assert got[tps].numbers["paslon_1"] == 777

    same = Kit("kit-c", 3)  # one card, a clock that jumped back between two photos of page 2
    _collect(db, [same], [same.page(2, taken_at=now - 60, time_source="ntp"),
                          same.page(2, change={"paslon_1": 555}, taken_at=now - 3600, time_source="ntp")])
    assert {r.tps: r for r in assess(None, pages_from_collector_db(db))}[3].numbers["paslon_1"] == 555


def test_a_second_kit_reading_other_numbers_for_the_same_page_is_to_check(tmp_path):
    """A TPS served by two kits (a kit replaced, a spare): the second kit's full set hid the first's. When
    the same page reads the same on both, the TPS stays complete; when a number differs, a person must look
    at the form and both photos, whichever kit photographed last."""
    db = tmp_path / "collector.db"
    first, spare = Kit("kit-a", 1), Kit("kit-b", 1)
    again, replacement = Kit("kit-c", 2), Kit("kit-d", 2)
    replacement.numbers = again.numbers
    n = spare.numbers[1]
    # the spare's page 1 is consistent in itself and with pages 2 and 3 (no rule fails), but not the first's
    other = {"disabilitas_l": n["disabilitas_l"] + 1, "disabilitas_jml": n["disabilitas_jml"] + 1}
    messages = [first.page(h) for h in (1, 2, 3)]
    messages += [spare.page(1, change=other), spare.page(2), spare.page(3)]
    messages += [again.page(h) for h in (1, 2, 3)] + [replacement.page(h) for h in (1, 2, 3)]
    _collect(db, [first, spare, again, replacement], messages)
    got = {r.tps: r for r in assess(None, pages_from_collector_db(db))}
    assert got[1].kits == ["kit-b"] and got[1].state == REVIEW and len(got[1].reasons) == 1
    assert got[1].reasons[0].startswith("halaman 1 dari kit-a terbaca lain: ")
    assert f"disabilitas_l {n['disabilitas_l']} (terbaru {n['disabilitas_l'] + 1})" in got[1].reasons[0]
    assert got[2].state == OK and got[2].kits == ["kit-d"] and got[2].reasons == []


def test_since_reads_a_date_as_midnight_wib_and_keeps_a_given_offset():
    assert parse_since("2024-02-14") == 1707843600.0  # 2024-02-13 17:00 UTC
    assert parse_since("2024-02-14T07:00") == parse_since("2024-02-14T00:00Z") == 1707868800.0
    assert parse_since(" 2024-02-14T07:00+08:00 ") == 1707865200.0  # 07:00 WITA
    with pytest.raises(ValueError, match="2024-02-14T07:00"):
        parse_since("kemarin")


def test_fleet_results_command_json_csv_and_bad_database(tmp_path, capsys):
    db = tmp_path / "collector.db"
    full, silent = Kit("kit-a", 1), Kit("kit-b", 2, kode_wilayah="32.73.05.1002")
    _collect(db, [full, silent], [full.page(1), full.page(2), full.page(3)])
    reg = tmp_path / "registry.json"
    for k in (full, silent):
        registry_add(reg, k.kit_id, k.key.verify_key, kode_wilayah=k.kode_wilayah, tps=k.tps)

    assert cli.main(["fleet", "results", "--collector-db", str(db), "--registry", str(reg), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(t["kode_wilayah"], t["tps"], t["state"]) for t in out["tps"]] == [
        ("31.71.01.1001", 1, "ok"), ("32.73.05.1002", 2, "none")]
    assert out["summary"]["total"] == {"ok": 1, "review": 0, "incomplete": 0, "none": 1}
    assert out["summary"]["31.71"]["ok"] == 1 and out["summary"]["32.73"]["none"] == 1

    argv = ["fleet", "results", "--collector-db", str(db), "--kabupaten", "31.71", "--csv", "-"]
    assert cli.main(argv) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["tps"], r["state"], r["halaman_3"], r["kits"]) for r in rows] == [("1", "ok", "ok", "kit-a")]

    assert cli.main(["fleet", "results", "--collector-db", str(db), "--kabupaten", "31-71"]) == 2
    assert "NN.NN" in capsys.readouterr().err
    assert cli.main(["fleet", "results", "--collector-db", str(db)]) == 0
    text = capsys.readouterr().out
    assert "LENGKAP" in text and "tanpa --registry" in text

    assert cli.main(["fleet", "results", "--collector-db", str(tmp_path / "none.db")]) == 2
    assert "tidak ada" in capsys.readouterr().err
    (tmp_path / "other.db").write_bytes(b"not a database at all, just text" * 100)
    assert cli.main(["fleet", "results", "--collector-db", str(tmp_path / "other.db")]) == 2


@pytest.mark.parametrize("command", ["results", "readiness"])
def test_a_collector_database_in_a_folder_this_user_cannot_write_is_not_called_another_file(tmp_path,
                                                                                          command):
    """A stopped collector's WAL database can be read only where SQLite may create its -shm beside it: in a
    folder the operator cannot write (no sudo, a read-only share or stick) `tpskit fleet` said the collector's
    own database "is not a tpskit collector database"."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.readonly_fs import ReadOnlyView

    folder = tmp_path / "collector"
    kit = Kit("kit-a", 1)
    _collect(folder / "collector.db", [kit], [kit.page(h) for h in (1, 2, 3)])
    repo = Path(__file__).resolve().parent.parent
    with ReadOnlyView(folder) as view:
        argv = [sys.executable, "-m", "firmware.cli", "fleet", command, "--collector-db",
                str(folder / "collector.db")]
        res = subprocess.run(view.command(argv), capture_output=True, text=True, timeout=60, cwd="/",
                             env={**os.environ, "PYTHONPATH": str(repo)})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "not a tpskit collector database" not in res.stderr
    assert "read-only" in res.stderr and "sudo" in res.stderr


def test_a_database_with_no_page_yet_still_has_its_total(tmp_path, capsys):
    """Before the first page (or for a kabupaten with none) the JSON summary had no "total" (readiness
    always has one) and the table no total line."""
    db = tmp_path / "collector.db"
    CollectorStore(db).close()
    assert cli.main(["fleet", "results", "--collector-db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"] == {
        "total": {"ok": 0, "review": 0, "incomplete": 0, "none": 0}}
    assert cli.main(["fleet", "results", "--collector-db", str(db), "--kabupaten", "32.01"]) == 0
    assert "\ntotal" in capsys.readouterr().out


def test_several_reasons_on_one_line_read_as_one_sentence_each():
    """The reader's reasons end with a full stop; joined on the table's (and the CSV's) line they must not
    show "3.; Halaman"."""
    from firmware.results import TpsResult, table, to_csv

    res = TpsResult("31.71.01.1001", 7, INCOMPLETE, {1: "review", 2: "ok"},
                    ["Halaman belum difoto atau belum terbaca: 3.",
                     "Halaman perlu diperiksa atau difoto ulang: 1."],
                    ["kit-a"])
    joined = "Halaman belum difoto atau belum terbaca: 3; Halaman perlu diperiksa atau difoto ulang: 1"
    for text in (table([res]), to_csv([res])):
        assert joined in text and ".;" not in text


@pytest.mark.parametrize("command", ["results", "readiness"])
def test_fleet_collector_db_that_is_a_folder_is_refused_clearly(tmp_path, capsys, command):
    assert cli.main(["fleet", command, "--collector-db", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "collector.db" in err
