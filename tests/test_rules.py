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

    def __init__(self, values):
        self.crops, rows = [], []
        for f in P3.fields:
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


def _decide(p):
    reader = PageReader(classifier=None, confidence=0.99)
    return reader._decide(P3, p.crops, p.probs.argmax(1), p.probs, {})


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


def test_a_doubtful_digit_is_resolved_by_the_rule_only_when_the_box_supports_it():
    p = _Probs(GOOD).doubt("total_suara", 2, 8, 0.45)  # units box: 3 (55 %) or 8 (45 %)
    fields, _, _, status = _decide(p)
    assert fields["total_suara"]["value"] == 183 and status == "ok"
    p = _Probs(GOOD).doubt("total_suara", 2, 8, 0.9)  # the box says 8: rule support too weak
    fields, reasons, _, status = _decide(p)
    assert status == "review"


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
