"""Rules and the reader's joint decision, fed with given digit probabilities (no photo, no model)."""

import numpy as np
import pytest

from inference import rules
from inference.reader import EMPTY, BoxCrop, PageReader, check_tps, value_distribution
from inference.templates import load_form

P3 = load_form().pages[3]


def test_rule_holds_and_any_filled():
    r = next(r for r in P3.rules if r.total == "total_suara")
    assert rules.holds(r, {"suara_sah": 100, "suara_tidak_sah": 5, "total_suara": 105}) is True
    assert rules.holds(r, {"suara_sah": 100, "suara_tidak_sah": 5, "total_suara": 106}) is False
    assert rules.holds(r, {"suara_sah": None, "suara_tidak_sah": 5, "total_suara": 106}) is None
    rows = next(r for r in P3.rules if r.when == "any_filled")
    assert rules.holds(rows, {"suara_tidak_sah": 5}) is True  # row sums not written: nothing to check
    assert rules.holds(rows, {"suara_tidak_sah": 5, "suara_tidak_sah_baris_1": 5}) is True
    assert rules.holds(rows, {"suara_tidak_sah": 5, "suara_tidak_sah_baris_1": 4}) is False


def test_value_distribution_leading_boxes_and_zero():
    def onehot(labels):
        p = np.full((len(labels), 11), 1e-9)
        p[np.arange(len(labels)), labels] = 1.0
        return p / p.sum(1, keepdims=True)
    pv, blank = value_distribution(onehot([EMPTY, 4, 2]))
    assert pv.argmax() == 42 and pv[42] > 0.99
    pv, _ = value_distribution(onehot([0, 4, 2]))
    assert pv.argmax() == 42
    pv, blank = value_distribution(onehot([EMPTY, EMPTY, 0]))
    assert pv.argmax() == 0 and pv[0] > 0.99
    pv, blank = value_distribution(onehot([EMPTY, EMPTY, EMPTY]))
    assert blank > 0.99 and pv.max() < 1e-6  # an empty number is not 0
    pv, blank = value_distribution(onehot([4, EMPTY, 2]))
    assert pv.max() < 1e-6 and blank < 1e-6  # a gap between digits is no number


class _Probs:
    """Box probabilities for page 3 built from the numbers written (one-hot, with optional doubts)."""

    def __init__(self, values, page=P3):
        self.crops, rows = [], []
        for f in page.fields:
            v = values.get(f.name)
            labels = [EMPTY] * len(f.boxes) if v is None else \
                [EMPTY] * (len(f.boxes) - len(str(v))) + [int(c) for c in str(v)]
            for i, lab in enumerate(labels):
                self.crops.append(BoxCrop(f.name, i, np.zeros((4, 4), np.uint8)))
                p = np.full(11, 1e-7)
                p[lab] = 1.0
                rows.append(p / p.sum())
        self.probs = np.array(rows)

    def doubt(self, field, box, label, share):
        i = next(k for k, c in enumerate(self.crops) if c.field == field and c.box == box)
        self.probs[i] *= 1 - share
        self.probs[i, label] += share
        return self


GOOD = {"suara_sah": 176, "suara_tidak_sah": 7, "total_suara": 183, "tanggal": 14, "bulan": 2, "tahun": 2024}


def _decide(p, page=P3, bubbles=None, **kw):
    reader = PageReader(classifier=None, confidence=0.99, **kw)
    return reader._decide(page, p.crops, p.probs.argmax(1), p.probs, bubbles or {})[:4]


def test_confident_consistent_page_is_ok():
    fields, reasons, checks, status = _decide(_Probs(GOOD))
    assert status == "ok" and reasons == []
    assert {k: fields[k]["value"] for k in GOOD} == GOOD
    assert all(c["ok"] for c in checks)
    assert fields["suara_tidak_sah_baris_1"]["value"] is None  # optional row sums left empty


def test_arithmetic_slip_is_review_with_the_failed_rule():
    fields, reasons, checks, status = _decide(_Probs({**GOOD, "total_suara": 184}))
    assert status == "review"
    assert "rule_failed" in [r["code"] for r in reasons]
    assert fields["total_suara"]["value"] == 184  # what is written, not a corrected number
    assert any(c["ok"] is False for c in checks)


GOOD1 = {**GOOD, "suara_sah": 171, "total_suara": 178}  # units of V.A: a 1 that may be a 7


def test_a_digit_in_doubt_is_decided_by_the_rule():
    p = _Probs(GOOD1).doubt("suara_sah", 2, 7, 0.2)  # p(1) = 0.8, p(7) = 0.2: 177 would break V.C = V.A + V.B
    fields, reasons, _, status = _decide(p)
    assert status == "ok" and reasons == []
    assert fields["suara_sah"]["value"] == 171 and fields["suara_sah"]["confidence"] > 0.999


def test_a_rule_that_holds_only_through_an_improbable_digit_stays_review():
    p = _Probs(GOOD1).doubt("suara_sah", 2, 7, 0.8)  # the box says 7 (0.8): the page adds up only with a 1
    fields, reasons, _, status = _decide(p)
    assert status == "review" and "digit_uncertain" in [r["code"] for r in reasons]
    assert "suara_sah" in reasons[-1]["fields"]
    p = _Probs(GOOD1).doubt("suara_sah", 2, 7, 0.7)  # 7 (0.7) or 1 (0.3): the rule may not overrule the box
    fields, reasons, _, status = _decide(p)
    assert status == "review" and "suara_sah" in reasons[-1]["fields"]
    p = _Probs(GOOD1).doubt("suara_sah", 2, 7, 0.9999)  # the box clearly says 7: a slip, shown as written
    fields, reasons, _, status = _decide(p)
    assert status == "review" and fields["suara_sah"]["value"] == 177
    assert "rule_failed" in [r["code"] for r in reasons]


def test_a_lower_min_support_lets_the_rule_settle_a_doubt_the_box_raises_not_a_digit_it_rules_out():
    # 7 (0.7) or 1 (0.3): with min_support 0.1 the 1 is supported enough and a slip that happens to be a 7 is
    # improbable enough (posterior P(wrong) ~ 2e-3 <= max_error): the page adds up, 171 is accepted
    fields, reasons, _, status = _decide(_Probs(GOOD1).doubt("suara_sah", 2, 7, 0.7), min_support=0.1)
    assert status == "ok" and fields["suara_sah"]["value"] == 171
    assert 0.997 < fields["suara_sah"]["confidence"] < 0.999
    # tens box 1 (0.95) or 7 (0.05): a slip 60 off is so improbable that the posterior alone would accept 171;
    # with min_support_far 0.1 the box rates the 7 below a tenth of its favourite: never picked by the rule
    p = _Probs(GOOD1).doubt("suara_sah", 1, 1, 0.95)
    fields, reasons, _, status = _decide(p, min_support=0.1, min_support_far=0.1)
    assert status == "review" and "suara_sah" in reasons[-1]["fields"]
    fields, reasons, _, status = _decide(p, min_support=0.0)
    assert status == "ok" and fields["suara_sah"]["value"] == 171
    with pytest.raises(ValueError, match="min_support"):
        PageReader(classifier=None, min_support=1.5)
    with pytest.raises(ValueError, match="min_support_far"):
        PageReader(classifier=None, min_support_far=-0.1)


def test_a_rule_may_pick_a_far_digit_the_box_rates_low_but_never_one_it_rules_out():
    # written 171 (consistent); the tens box reads 1 (0.95) or 7 (0.05): the 7 has a twentieth of the 1's
    # support, below min_support, but what the box favours (111, 60 off) is no plausible slip, so
    # min_support_far (0.02) applies and the posterior, which weighs a far slip at SLIP_ODDS_FAR, decides
    fields, reasons, _, status = _decide(_Probs(GOOD1).doubt("suara_sah", 1, 1, 0.95))
    assert status == "ok" and fields["suara_sah"]["value"] == 171
    # the box says 1 with 0.995 (7 at 0.005, a two-hundredth): a digit it rules out is never picked
    fields, reasons, _, status = _decide(_Probs(GOOD1).doubt("suara_sah", 1, 1, 0.995))
    assert status == "review" and "suara_sah" in reasons[-1]["fields"]
    # one doubt, the right digit at 0.3 against 0.7, in two places: in the tens box what the box favours
    # (111) is 60 off and the rule settles it; in the units box it is 177, 6 off, a plausible slip:
    # min_support (0.5) keeps it review although the posterior alone would accept it (min_support 0.1 does)
    fields, reasons, _, status = _decide(_Probs(GOOD1).doubt("suara_sah", 1, 1, 0.7))
    assert status == "ok" and fields["suara_sah"]["value"] == 171
    fields, reasons, _, status = _decide(_Probs(GOOD1).doubt("suara_sah", 2, 7, 0.7))
    assert status == "review" and "suara_sah" in reasons[-1]["fields"]
    assert _decide(_Probs(GOOD1).doubt("suara_sah", 2, 7, 0.7), min_support=0.1)[3] == "ok"
    # a far guard stricter than the near one is clamped to it
    assert PageReader(classifier=None, min_support=0.1, min_support_far=0.3).min_support_far == 0.1


def test_a_slip_with_a_doubtful_digit_is_not_explained_away():
    # written 184 (a slip: V.C should be 183); the units box leans to 4 but a 3 is not ruled out
    p = _Probs({**GOOD, "total_suara": 184}).doubt("total_suara", 2, 3, 0.3)
    fields, reasons, _, status = _decide(p)
    assert status == "review"


def test_a_doubtful_digit_that_the_rules_cannot_decide_is_review():
    # 171 + 7 and 177 + 1 both make 178: the rules cannot tell, the boxes must
    p = _Probs(GOOD1).doubt("suara_sah", 2, 7, 0.2).doubt("suara_tidak_sah", 2, 1, 0.2)
    fields, reasons, _, status = _decide(p)
    assert status == "review" and "digit_uncertain" in [r["code"] for r in reasons]


def test_leading_mark_that_may_be_a_seven_is_decided_by_the_range():
    # a dash in the hundreds box of tanggal's neighbour bulan reads 7 at 30 %: 72 is no month
    p = _Probs(GOOD).doubt("bulan", 0, 7, 0.3)
    fields, reasons, _, status = _decide(p)
    assert fields["bulan"]["value"] == 2 and status == "ok"


P2 = load_form().pages[2]
VOTES = {"paslon_1": 71, "paslon_2": 60, "paslon_3": 45}


def test_bubbles_decide_a_digit_in_doubt_and_disagreement_is_review():
    read = {n: (v, "read") for n, v in VOTES.items()}
    p = _Probs(VOTES, P2).doubt("paslon_1", 2, 7, 0.3)  # 71 or 77: no row sums, the bubbles say 71
    fields, reasons, _, status = _decide(p, P2, read)
    assert status == "ok" and fields["paslon_1"]["value"] == 71
    p = _Probs(VOTES, P2).doubt("paslon_1", 2, 7, 0.3)
    fields, reasons, _, status = _decide(p, P2, {**read, "paslon_1": (None, "empty")})  # no bubbles
    assert status == "review" and "paslon_1" in reasons[-1]["fields"]
    fields, reasons, _, status = _decide(_Probs(VOTES, P2), P2, {**read, "paslon_2": (61, "read")})
    assert status == "review" and fields["paslon_2"]["value"] == 60  # the boxes, flagged
    assert "bubble_mismatch" in [r["code"] for r in reasons]


def test_date_rule():
    fields, reasons, checks, status = _decide(_Probs({**GOOD, "tanggal": 10}))  # before polling day
    assert status == "review" and "rule_failed" in [r["code"] for r in reasons]
    date = next(r for r in P3.rules if r.kind == "date")
    assert rules.holds(date, {"tanggal": 15, "bulan": 2, "tahun": 2024}) is True
    assert rules.holds(date, {"tanggal": 30, "bulan": 2, "tahun": 2024}) is False  # no such day
    assert rules.holds(date, {"tanggal": 15, "bulan": None, "tahun": 2024}) is None
    # polling day and the day after are the usual dates: a doubt towards another date is settled ...
    fields, _, _, status = _decide(_Probs({**GOOD, "tanggal": 15}).doubt("tanggal", 1, 6, 0.01))
    assert status == "ok" and fields["tanggal"]["value"] == 15
    # ... but a clearly written other date in the period (a re-vote, PSU) is read as written
    fields, _, _, status = _decide(_Probs({**GOOD, "tanggal": 24}))
    assert status == "ok" and fields["tanggal"]["value"] == 24


def test_uncertain_digit_without_rule_is_review():
    p = _Probs(GOOD).doubt("tanggal", 1, 9, 0.4)
    fields, reasons, _, status = _decide(p)
    assert status == "review" and "digit_uncertain" in [r["code"] for r in reasons]
    assert "tanggal" in reasons[-1]["fields"]


def test_empty_required_number_is_null_and_review():
    fields, reasons, _, status = _decide(_Probs({**GOOD, "suara_tidak_sah": None}))
    assert fields["suara_tidak_sah"]["value"] is None and status == "review"
    assert "field_empty" in [r["code"] for r in reasons]


def test_check_tps_cross_page_rules():
    def page(n, status="ok", **vals):
        return {"page": n, "status": status, "fields": {k: {"value": v} for k, v in vals.items()}}
    p1 = page(1, pengguna_total_jml=183, surat_digunakan=183, dpt_jml=200, pengguna_dptb_jml=2,
              pengguna_dpk_jml=1)
    p2 = page(2, paslon_1=100, paslon_2=50, paslon_3=26)
    p3 = page(3, suara_sah=176, total_suara=183)
    assert check_tps([p1, p2, p3])["status"] == "ok"
    bad = check_tps([p1, page(2, paslon_1=100, paslon_2=50, paslon_3=27), p3])
    assert bad["status"] == "review" and any(c["ok"] is False for c in bad["checks"])
    assert bad["tps"] is True
    missing = check_tps([p1, p3])
    assert missing["status"] == "review" and missing["reasons"][0]["code"] == "page_missing"


def test_reader_rejects_bad_confidence():
    with pytest.raises(ValueError):
        PageReader(classifier=None, confidence=1.5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"when": "any_filled"}, "for 'sum' rules only"),
        ({"usual": "2024-02-14"}, "must be a list of ISO dates"),
    ],
)
def test_date_rule_template_errors_are_refused(extra, message):
    from inference.templates import TemplateError, _rule

    base = {"name": "tgl", "kind": "date", "day": "d", "month": "m", "year": "y",
            "start": "2024-02-14", "end": "2024-03-31"}
    assert _rule(base, "page3.rules[0]", {"d", "m", "y"}).fields == ("d", "m", "y")
    with pytest.raises(TemplateError, match=message):
        _rule({**base, **extra}, "page3.rules[0]", {"d", "m", "y"})


def test_voters_with_disabilities_cannot_outnumber_the_voters_of_their_sex():
    p1 = load_form().pages[1]
    good = {"dpt_l": 100, "dpt_p": 100, "dpt_jml": 200,
            "pengguna_dpt_l": 80, "pengguna_dpt_p": 90, "pengguna_dpt_jml": 170,
            "pengguna_dptb_l": 2, "pengguna_dptb_p": 1, "pengguna_dptb_jml": 3,
            "pengguna_dpk_l": 0, "pengguna_dpk_p": 1, "pengguna_dpk_jml": 1,
            "pengguna_total_l": 82, "pengguna_total_p": 92, "pengguna_total_jml": 174,
            "disabilitas_l": 3, "disabilitas_p": 0, "disabilitas_jml": 3,
            "surat_diterima": 204, "surat_digunakan": 174, "surat_dikembalikan": 2,
            "surat_tidak_digunakan": 28}
    assert all(c["ok"] is True for c in rules.check(p1.rules, good))
    # III (L) 90 > I.B.4 (L) 82: more men with disabilities voted than men voted; the JML (90 <= 174) hides it
    for part, other, n in (("l", "p", 90), ("p", "l", 95)):
        bad = {**good, f"disabilitas_{part}": n, "disabilitas_jml": n + good[f"disabilitas_{other}"]}
        failed = [c["rule"] for c in rules.check(p1.rules, bad) if c["ok"] is False]
        assert failed == [f"disabilitas_{part} <= pengguna_total_{part}"], failed


def test_cross_page_rules_naming_an_unknown_field_are_refused(tmp_path):
    import json
    import shutil

    from inference.templates import FORMS_DIR, TemplateError

    form = "C.HASIL-PPWP-2024"
    shutil.copytree(FORMS_DIR / form, tmp_path / form)
    assert len(rules.load_tps_rules(form, tmp_path)) == len(rules.load_tps_rules(form))
    tps = json.loads((tmp_path / form / "tps.json").read_text())
    tps["rules"][0]["terms"] = ["p3.total_suara_"]  # a typo: the rule could never be checked
    (tmp_path / form / "tps.json").write_text(json.dumps(tps))
    rules.load_tps_rules.cache_clear()
    with pytest.raises(TemplateError, match="unknown field.*p3.total_suara_"):
        rules.load_tps_rules(form, tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r[0].__setitem__("terms", []), "needs at least one field on each side"),
        (lambda r: r[3].__setitem__("right", []), "needs at least one field on each side"),
        (lambda r: r[3].__setitem__("left", [["p1.dpt_jml"]]), "field names"),
        (lambda r: r[0].__setitem__("label", 5), "label"),
    ],
)
def test_malformed_cross_page_rules_are_refused_clearly(tmp_path, change, message):
    """An empty side summed to 0 (``V.C = nothing`` failed every TPS); a name that is no string was an
    'unhashable type' message; a label that is no text went out in the TPS line."""
    import json
    import shutil

    from inference.templates import FORMS_DIR, TemplateError

    form = "C.HASIL-PPWP-2024"
    shutil.copytree(FORMS_DIR / form, tmp_path / form)
    tps = json.loads((tmp_path / form / "tps.json").read_text())
    change(tps["rules"])
    (tmp_path / form / "tps.json").write_text(json.dumps(tps))
    rules.load_tps_rules.cache_clear()
    with pytest.raises(TemplateError, match=message):
        rules.load_tps_rules(form, tmp_path)


def test_cross_page_rules_that_are_no_utf8_text_are_a_template_error(tmp_path):
    import shutil

    from inference.templates import FORMS_DIR, TemplateError

    form = "C.HASIL-PPWP-2024"
    shutil.copytree(FORMS_DIR / form, tmp_path / form)
    (tmp_path / form / "tps.json").write_bytes(b'{"rules": [], "about": "\xff"}')
    rules.load_tps_rules.cache_clear()
    with pytest.raises(TemplateError, match="tps.json"):
        rules.load_tps_rules(form, tmp_path)


def _tps_pages():
    def page(n, status="ok", form="C.HASIL-PPWP-2024", **vals):
        return {"form": form, "page": n, "status": status,
                "fields": {k: {"value": v} for k, v in vals.items()}}
    p1 = page(1, pengguna_total_jml=183, surat_digunakan=183, dpt_jml=200, pengguna_dptb_jml=2,
              pengguna_dpk_jml=1)
    p2 = page(2, paslon_1=100, paslon_2=50, paslon_3=26)
    p3 = page(3, suara_sah=176, total_suara=183)
    return page, p1, p2, p3


def test_a_page_of_another_form_is_no_page_of_the_tps():
    """Page 3 of another form (a DPR sheet with the same field names) photographed with the PPWP pages: the
    PPWP page 3 is missing, not taken from the DPR sheet."""
    page, p1, p2, p3 = _tps_pages()
    assert check_tps([p1, p2, p3])["status"] == "ok"
    t = check_tps([p1, p2, {**p3, "form": "C.HASIL-DPR-2024"}])
    assert t["status"] == "review" and t["reasons"][0] == {**t["reasons"][0], "code": "page_missing",
                                                           "pages": [3]}


def test_one_page_read_ok_twice_with_other_numbers_is_review():
    """Two accepted readings of page 2 that disagree (one is wrong, or another TPS's sheet): the TPS line is
    not ok on whichever came last. A page read again after a review or a retake takes the newer reading."""
    page, p1, p2, p3 = _tps_pages()
    other = page(2, paslon_1=100, paslon_2=56, paslon_3=20)  # adds up to V.A too
    t = check_tps([p1, p2, other, p3])
    assert t["status"] == "review"
    assert [(r["code"], r["pages"]) for r in t["reasons"]] == [("page_not_ok", [2])]
    assert check_tps([p1, p2, dict(p2), p3])["status"] == "ok"  # the same numbers twice
    assert check_tps([p1, page(2, "review", paslon_1=100, paslon_2=5, paslon_3=None), other, p3])[
        "status"] == "ok"
    assert check_tps([p1, page(2, "retake"), p2, p3])["status"] == "ok"


@pytest.mark.parametrize("ppm", [float("nan"), 0.0, -2.0, float("inf")])
def test_reader_rejects_a_resolution_floor_that_would_refuse_nothing_or_everything(ppm):
    """min_px_per_mm NaN, 0 or negative switched the low-resolution check off without a word (inf refused
    every photo); the other thresholds were already checked."""
    with pytest.raises(ValueError, match="min_px_per_mm"):
        PageReader(classifier=None, min_px_per_mm=ppm)
