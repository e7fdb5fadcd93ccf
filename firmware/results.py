"""TPS results as the collector holds them: which TPS sent all three halaman, read and consistent (ok), which
need a person (review: a page to check, a cross-page rule broken, several kits), which are incomplete, and
which sent nothing yet. Operators' view of polling day, next to ``fleet readiness`` for H-1."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

OK, REVIEW, INCOMPLETE, NONE = "ok", "review", "incomplete", "none"
LABELS = {OK: "LENGKAP", REVIEW: "PERIKSA", INCOMPLETE: "KURANG", NONE: "BELUM ADA"}
PAGES = (1, 2, 3)  # the halaman of a TPS whose form is not known here (C.HASIL-PPWP: three)
MIXED_FORMS_ADVICE = "Periksa kit mana yang memotret formulir yang salah."

# the newest reading of every page (``PageSeen.newer_than``): within one outbox by the kit's seq (its clock
# may run behind), across outboxes and kits by when it was photographed (``page_time``)
# (and whether the page's photo is complete at the collector: the photo follows the numbers)
READINGS_SQL = ("SELECT r.kode_wilayah, r.tps, r.halaman, r.kit_id, m.epoch, r.seq, r.received_at, "
                "r.reading, r.taken_at, r.time_source, "
                "CASE WHEN p.capture_id IS NULL THEN 0 ELSE 1 END "
                "FROM readings r JOIN messages m ON m.id = r.message_id "
                "LEFT JOIN photos p ON p.kit_id = r.kit_id AND p.capture_id = r.capture_id "
                "WHERE r.halaman IS NOT NULL")
# the readings the collector refused and never stored later (a kit resends what is not acked: once its
# registry row is fixed the resends are stored, and the refusal is history)
REJECTS_SQL = ("SELECT topic, reason, received_at FROM rejects WHERE topic LIKE '%/reading' "
               "AND (message_id IS NULL OR message_id NOT IN (SELECT message_id FROM readings))")
# what an operator can do about each refusal (comms.collector_store's reasons)
REJECT_HINTS = {
    "unknown_kit": "kit tidak ada di registry collector → tambahkan baris registry kit itu "
                   "(provision --export)",
    "bad_signature": "tanda tangan tidak cocok dengan kunci di registry → kit diprovision ulang? perbarui "
                     "baris registry-nya",
    "wrong_tps": "kit terdaftar untuk TPS lain → periksa provisioning kit dan registry",
    "topic_mismatch": "topik tidak sesuai isi pesan → periksa provisioning kit",
    "schema": "format pesan tidak dikenal → samakan versi tpskit di kit dan collector",
}
WIB = timezone(timedelta(hours=7))  # a --since without its own UTC offset is Western Indonesia Time


@dataclass
class PageSeen:
    """The newest reading the collector holds of one halaman of one TPS."""

    kit_id: str
    epoch: int
    seq: int
    received_at: float
    reading: dict
    at: float | None = None  # when it was photographed (``page_time``); None: when it was received
    photo: bool = False  # its photo is complete at the collector

    def newer_than(self, other: PageSeen) -> bool:
        """Within one outbox (kit and epoch) by the kit's sequence (its clock may run behind). Across outboxes
        (a replaced SD card: its epoch comes from the clock when its database was made, which may be behind
        the old card's) and across kits by when each was photographed (``page_time``)."""
        if (self.kit_id, self.epoch) == (other.kit_id, other.epoch):
            return self.seq > other.seq
        mine, theirs = self._when(), other._when()
        if mine != theirs:
            return mine > theirs
        return self.kit_id == other.kit_id and self.epoch > other.epoch

    def _when(self) -> float:
        return self.received_at if self.at is None else self.at


@dataclass
class TpsPages:
    """What the collector holds of one TPS: the newest reading of each halaman, and how many readings were
    left out as taken before the report's ``since`` (practice presses on H-1)."""

    newest: dict[int, PageSeen] = field(default_factory=dict)
    earlier: int = 0
    # halaman -> kit -> that kit's newest reading of it (a TPS served by two kits: a replaced kit, a spare)
    by_kit: dict[int, dict[str, PageSeen]] = field(default_factory=dict)

    def add(self, halaman: int, seen: PageSeen) -> None:
        """Keep ``seen`` if it is the newest of its halaman overall or from its kit."""
        if halaman not in self.newest or seen.newer_than(self.newest[halaman]):
            self.newest[halaman] = seen
        mine = self.by_kit.setdefault(halaman, {})
        if seen.kit_id not in mine or seen.newer_than(mine[seen.kit_id]):
            mine[seen.kit_id] = seen

    def other_kits_disagree(self) -> list[str]:
        """Each halaman another kit read with other numbers than the page taken as newest (a number both
        read): a person must look, whichever kit photographed last."""
        out = []
        for h, page in sorted(self.newest.items()):
            mine = _values(page)
            for kit_id, other in sorted(self.by_kit.get(h, {}).items()):
                if kit_id == page.kit_id:
                    continue
                theirs = _values(other)
                diff = [n for n in mine if mine[n] is not None and theirs.get(n) is not None
                        and mine[n] != theirs[n]]
                if diff:
                    shown = ", ".join(f"{n} {theirs[n]} (terbaru {mine[n]})" for n in diff[:3])
                    more = " …" if len(diff) > 3 else ""
                    out.append(f"halaman {h} dari {kit_id} terbaca lain: {shown}{more} → periksa "
                               "formulir dan foto kedua kit")
        return out


def _values(page: PageSeen) -> dict[str, int | None]:
    return {name: f.get("value") for name, f in page.reading.get("fields", {}).items()}


@dataclass
class TpsResult:
    kode_wilayah: str
    tps: int
    state: str  # ok / review / incomplete / none
    pages: dict[int, str] = field(default_factory=dict)  # halaman -> the page's status (ok / review)
    reasons: list[str] = field(default_factory=list)
    kits: list[str] = field(default_factory=list)
    # the numbers of the newest pages, field by field in page order (None: not read); a name two pages share
    # is given as h<halaman>.<name> on the later page
    numbers: dict[str, int | None] = field(default_factory=dict)
    expected_pages: tuple[int, ...] = PAGES  # the halaman of the form its pages are of
    # received halaman whose photo (the evidence; it follows the numbers) is not complete at the collector yet
    photos_missing: list[int] = field(default_factory=list)

    @property
    def kabupaten(self) -> str:
        return ".".join(self.kode_wilayah.split(".")[:2]) if self.kode_wilayah else "?"


def parse_since(text: str) -> float:
    """``--since``: an ISO date (00:00 WIB that day) or date and time (WIB unless it names its UTC offset,
    e.g. ``2024-02-14T07:00+08:00`` for WITA) -> Unix time. ValueError says what to write."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: tulis tanggal / write a date as 2024-02-14 or 2024-02-14T07:00 "
                         "(WIB; another zone with its offset, e.g. 2024-02-14T07:00+08:00)") from None
    return (when if when.tzinfo else when.replace(tzinfo=WIB)).timestamp()


def page_time(received_at: float, taken_at: float | None, time_source: str | None) -> float:
    """When a page was photographed, as far as anyone knows: the kit's clock if it was synchronised (NTP),
    else when the collector received it (a Pi without an RTC may run days behind; a page is never received
    before it is taken)."""
    if time_source == "ntp" and isinstance(taken_at, int | float) and math.isfinite(taken_at):
        return float(taken_at)
    return float(received_at)


def pages_from_collector_db(path: Path | str, *, kabupaten: str | None = None, since: float | None = None,
                            ) -> dict[tuple[str, int], TpsPages]:
    """(kode wilayah, TPS) -> the newest reading of each halaman, from a collector database (SQLite or
    PostgreSQL); only one kabupaten/kota (``NN.NN``) if given, read as such (a national database is large).
    With ``since`` (Unix time) a reading photographed before it (``page_time``: practice on H-1) is left out
    and counted in ``TpsPages.earlier``: the polling day's results are the polling day's pages only."""
    from comms.collector_store import StoreUnavailable, read_rows

    sql = READINGS_SQL
    if kabupaten is not None:
        if not re.fullmatch(r"\d\d\.\d\d", kabupaten):
            raise ValueError(f"kabupaten {kabupaten!r}: tulis NN.NN, mis. 31.71 / write it as NN.NN")
        sql += f" AND r.kode_wilayah LIKE '{kabupaten}.%'"
    try:  # FileNotFoundError for a SQLite file that is not there
        rows = read_rows(path, sql)
    except StoreUnavailable as exc:
        raise ConnectionError(f"database collector tidak bisa dihubungi: {exc}") from None
    out: dict[tuple[str, int], TpsPages] = {}
    for kw, tps, halaman, kit_id, epoch, seq, received_at, reading, taken_at, time_source, photo in rows:
        held = out.setdefault((kw, int(tps)), TpsPages())
        at = page_time(received_at, taken_at, time_source)
        if since is not None and at < since:
            held.earlier += 1
            continue
        held.add(int(halaman), PageSeen(kit_id, int(epoch or 0), int(seq), float(received_at),
                                        _page_reading(reading), at, bool(photo)))
    return out


def rejected_from_collector_db(path: Path | str, *, kabupaten: str | None = None, since: float | None = None,
                               ) -> dict[tuple[str, int], dict[str, int]]:
    """(kode wilayah, TPS) -> refusal reason -> how many page readings the collector refused and never stored
    (received from ``since`` on, if given): a TPS whose every page was refused otherwise shows only 'nothing
    received'. Empty for a database without a rejects table."""
    from comms.collector_store import StoreUnavailable, read_rows
    from comms.topics import parse_topic

    try:
        rows = read_rows(path, REJECTS_SQL)
    except ValueError:
        return {}
    except StoreUnavailable as exc:
        raise ConnectionError(f"database collector tidak bisa dihubungi: {exc}") from None
    out: dict[tuple[str, int], dict[str, int]] = {}
    for topic, reason, received_at in rows:
        if since is not None and received_at < since:
            continue
        try:
            where = parse_topic(str(topic).rsplit("/", 3)[0], str(topic))
        except ValueError:
            continue
        if kabupaten is not None and not where.kode_wilayah.startswith(kabupaten + "."):
            continue
        counts = out.setdefault((where.kode_wilayah, where.tps), {})
        counts[reason] = counts.get(reason, 0) + 1
    return out


def _rejected_reason(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    why = "; ".join(f"{reason} ×{n}" + (f": {REJECT_HINTS[reason]}" if reason in REJECT_HINTS else "")
                    for reason, n in sorted(counts.items()))
    return f"collector menolak {total} pesan halaman / refused {total} page messages ({why})"


def _page_reading(text: str) -> dict:
    """A stored reading (JSON) as the cross-page rules take it: the collector keeps any JSON object a kit
    signed, so a field whose value is no whole number (text, a kit of another version) counts as not read
    (the TPS is to check), never as a crash of the whole report."""
    try:
        data = json.loads(text)
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        return {}
    fields = data.get("fields")
    fields = fields if isinstance(fields, dict) else {}
    data["fields"] = {name: {**(f if isinstance(f, dict) else {}), "value": _whole(f)}
                      for name, f in fields.items()}
    return data


def _whole(field) -> int | None:
    """A field's value if it is a whole number, else None (not read)."""
    value = field.get("value") if isinstance(field, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def cross_page(readings: list[dict]) -> dict:
    """The cross-page verdict of one TPS's newest pages under the form they name (``check_tps_pages``); a
    form this machine does not know (or whose rules are broken) is a ``review`` saying so."""
    from inference.reader import check_tps_pages
    from inference.templates import TemplateError

    try:
        return check_tps_pages(readings, advice=MIXED_FORMS_ADVICE)
    except TemplateError as exc:
        why = {"code": "unknown_form", "message": f"aturan antarhalaman tidak bisa dicek: {exc}"}
        return {"tps": True, "form": None, "status": "review", "reasons": [why], "checks": []}


def assess(registry: dict | None, pages: dict[tuple[str, int], TpsPages], *,
           rejected: dict[tuple[str, int], dict[str, int]] | None = None) -> list[TpsResult]:
    """One TpsResult per TPS of the registry (``none`` if it sent nothing), per TPS that sent readings and per
    TPS whose pages the collector refused (``rejected``, from ``rejected_from_collector_db``: added to its
    reasons with what to do)."""
    places = {(e.kode_wilayah, e.tps) for e in (registry or {}).values() if e.kode_wilayah and e.tps}
    places |= set(pages) | set(rejected or {})
    out = []
    for kw, tps in sorted(places):
        held = pages.get((kw, tps), TpsPages())
        res = (_tps_result(kw, tps, held, registry) if held.newest
               else TpsResult(kw, tps, NONE, reasons=["belum ada halaman yang diterima"]))
        if held.earlier:
            res.reasons.append(f"{held.earlier} halaman difoto sebelum --since diabaikan / photographed "
                               "before --since, left out (latihan H-1?)")
        refused = (rejected or {}).get((kw, tps))
        if refused:
            res.reasons.append(_rejected_reason(refused))
        out.append(res)
    return out


def _tps_result(kode_wilayah: str, tps: int, held: TpsPages, registry: dict | None) -> TpsResult:
    """The verdict on a TPS's newest pages: complete, to check (a page or a cross-page rule, several kits, a
    kit not registered there, two kits reading a page differently) or incomplete."""
    got = held.newest
    kits = sorted({p.kit_id for p in got.values()})
    verdict = cross_page([{**p.reading, "page": h} for h, p in got.items()])
    form = verdict.get("form")
    statuses = {h: str(p.reading.get("status", "?")) for h, p in sorted(got.items())}
    res = TpsResult(kode_wilayah, tps, REVIEW, pages=statuses, kits=kits,
                    reasons=[r.get("message") or r.get("code", "?") for r in verdict["reasons"]],
                    numbers=_numbers(got, form), expected_pages=_form_pages(form),
                    photos_missing=[h for h, p in sorted(got.items()) if not p.photo])
    strangers = _not_registered_here(registry, kits, kode_wilayah, tps)
    disagree = held.other_kits_disagree()
    if any(h not in got for h in res.expected_pages):
        res.state = INCOMPLETE
    elif verdict["status"] == "ok" and len(kits) == 1 and not strangers and not disagree:
        res.state = OK
    res.reasons += disagree
    if len(kits) > 1:
        res.reasons.append(f"halaman dari beberapa kit: {', '.join(kits)} (periksa mana yang sah)")
    if strangers:
        res.reasons.append("halaman dari kit yang kini tidak terdaftar untuk TPS ini: "
                           f"{', '.join(strangers)} (dicabut, diganti atau dipindah?) → periksa "
                           "registry, foto ulang dengan kit yang terdaftar")
    return res


def _numbers(got: dict[int, PageSeen], form_id: str | None) -> dict[str, int | None]:
    """The values of the newest pages' fields, page by page, each page's in the order its form lists them
    (a signed reading's keys come sorted; fields the form does not know follow)."""
    out: dict[str, int | None] = {}
    for h, page in sorted(got.items()):
        fields = page.reading.get("fields", {})
        for name in sorted(fields, key=_field_order(form_id, h)):
            out[name if name not in out else f"h{h}.{name}"] = fields[name].get("value")
    return out


def _form_pages(form_id: str | None) -> tuple[int, ...]:
    """The halaman of a form (its page templates), or ``PAGES`` when the form is not known here."""
    from inference.templates import TemplateError, load_form

    try:
        return tuple(load_form(form_id).pages) if form_id else PAGES
    except (TemplateError, OSError):
        return PAGES


def _field_order(form_id: str | None, halaman: int):
    """Sort key: a field's place on its page's template (unknown fields last, by name)."""
    from inference.templates import TemplateError, load_form

    try:
        names = [f.name for f in load_form(form_id).pages[halaman].fields] if form_id else []
    except (TemplateError, KeyError, OSError):
        names = []
    place = {name: i for i, name in enumerate(names)}
    return lambda name: (place.get(name, len(place)), name)


def _not_registered_here(registry: dict | None, kits: list[str], kode_wilayah: str, tps: int) -> list[str]:
    """Of the kits behind a TPS's pages, those the registry (when given) does not list for that TPS now: the
    collector checked each page against its registry when it came, but a kit may since have been retired,
    replaced or moved."""
    if registry is None:
        return []

    def elsewhere(e) -> bool:  # a registry row without a place says nothing against it
        return bool(e.kode_wilayah and e.kode_wilayah != kode_wilayah) or (e.tps is not None and e.tps != tps)

    return [k for k in kits if (e := registry.get(k)) is None or elsewhere(e)]


def summarize(results: Iterable[TpsResult]) -> dict[str, dict[str, int]]:
    """Per kabupaten (and ``total``, also when there is no TPS): how many TPS are in each state."""
    out: dict[str, dict[str, int]] = {"total": {OK: 0, REVIEW: 0, INCOMPLETE: 0, NONE: 0}}
    for r in results:
        for key in (r.kabupaten, "total"):
            counts = out.setdefault(key, {OK: 0, REVIEW: 0, INCOMPLETE: 0, NONE: 0})
            counts[r.state] += 1
    return {k: out[k] for k in sorted(out, key=lambda k: (k == "total", k))}


def _joined(reasons: list[str]) -> str:
    """The reasons on one line: each one's own full stop left out, so the line never shows ".;" """
    return "; ".join(r.rstrip(" .") for r in reasons)


def to_csv(results: Iterable[TpsResult]) -> str:
    """One row per TPS: its state, each page's status, kits, reasons, the received halaman whose photo is not
    complete yet, then every number read (a column per field, in page order; empty where not read or not
    received)."""
    results = list(results)
    pages = sorted({h for r in results for h in (*r.expected_pages, *r.pages)} or PAGES)
    columns = list(dict.fromkeys(name for r in results for name in r.numbers))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["kode_wilayah", "tps", "state", *(f"halaman_{h}" for h in pages), "kits", "reasons",
                "foto_belum", *columns])
    for r in results:
        numbers = [r.numbers.get(c) for c in columns]
        w.writerow([r.kode_wilayah, r.tps, r.state, *(r.pages.get(h, "") for h in pages), " ".join(r.kits),
                    _joined(r.reasons), " ".join(map(str, r.photos_missing)),
                    *("" if v is None else v for v in numbers)])
    return buf.getvalue()


def to_json(results: list[TpsResult]) -> dict:
    return {"tps": [{**asdict(r), "kabupaten": r.kabupaten} for r in results], "summary": summarize(results)}


def table(results: list[TpsResult]) -> str:
    lines = []
    for r in results:
        pages = " ".join(f"{h}:{r.pages.get(h, '-')}" for h in sorted({*r.expected_pages, *r.pages}))
        lines.append(f"{r.kode_wilayah:13} TPS {r.tps:>3}  {LABELS[r.state]:9} {pages:32} "
                     f"{_joined(r.reasons)}".rstrip())
    lines.append("")
    lines.append(f"{'kabupaten':10} {'lengkap':>8} {'periksa':>8} {'kurang':>7} {'belum':>6}")
    for key, c in summarize(results).items():
        lines.append(f"{key:10} {c[OK]:8} {c[REVIEW]:8} {c[INCOMPLETE]:7} {c[NONE]:6}")
    return "\n".join(lines)
