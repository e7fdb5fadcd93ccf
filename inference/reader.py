"""The page reader: photo -> registered page -> box crops -> digits (one batch) + bubbles -> numbers.

The page is decided jointly from the digit probabilities of its boxes, its bubbles (page 2) and the printed
rules. The reader enumerates the readings the boxes support (leading boxes may be empty, X, dash or 0) and
searches the most probable assignment of the whole page that satisfies every rule and agrees with the
bubbles. Its posterior is its probability mass over: every consistent assignment (other readings the rules
allow), the readings never enumerated (counted as if consistent), and the inconsistent readings, i.e. what the
KPPS may really have written (a slip), each weighted by the prior odds of such a slip (``SLIP_ODDS``: 1e-3
for a number off by up to 10, ``SLIP_ODDS_FAR`` beyond). The page is ``ok`` only if that posterior reaches
``1 - max_error`` (default 3e-3 per page; the expected share of pages read that are accepted with a wrong
number stays below 1e-4, see ``MAX_ERROR``) and every number's own posterior reaches ``confidence``; otherwise
``review``. Box probabilities are mixed with ``BOX_MISREAD`` of a uniform guess (the classifier's confident
errors). So a
digit the boxes leave in doubt (1 or 7) is decided when the rules leave one reading with material mass, and
a rule that holds only through a digit the boxes rate below ``MIN_SUPPORT`` of their favourite stays
``review``. If the boxes say clearly that the page
as written breaks a rule, what the boxes say is shown (``rule_failed``). A reading the boxes do not support
is never produced: candidates come only from the boxes. Unusable photos are ``retake``.

Output: ``PageReading.to_dict()`` is the ``tpskit read --json`` contract::

    {"image", "form", "page": 1|2|3|null, "status": "ok"|"review"|"retake",
     "reasons": [{"code", "message" (Bahasa Indonesia), "fields"|"rules"|"pages": [...] (when relevant)}],
     "fields": {name: {"value": int|null, "confidence": float, "digits": [0-9|null per box],
                       "bubbles": int|null}},
     "checks": [{"rule", "ok": true|false|null (null: a number is not read)}], "timing_ms": {step: ms}}

``tpskit read --evidence`` adds ``"evidence"`` (``PageReading.evidence_dict()``): the page posterior, every
box's three likeliest classes with probabilities and the bubbles read (null for a page not read).

Reason codes: retake ``not_in_frame blurred too_dark too_bright glare covered unknown_form no_form
low_resolution not_an_image``; review ``digit_uncertain field_empty rule_failed bubble_mismatch
bubble_unclear known_mismatch`` (a number the kit knows before the count, the DPT, reads otherwise); TPS
line also ``page_missing page_not_ok``. ``fields`` is empty for ``retake``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import cv2
import numpy as np

from capture.quality import SATURATED, is_image, to_gray
from inference import rules as rules_mod
from inference.digits import paper_level
from inference.register import BRIGHT_PAPER, Registration, RetakeError, rectify, register
from inference.register import REASONS as RETAKE_MESSAGES
from inference.render import INK, page_style
from inference.templates import DEFAULT_FORM, KNOWN_FACTS, Field, Form, PageTemplate, TemplateError, load_form

__all__ = ["PageReader", "PageReading", "BoxCrop", "check_tps", "check_tps_pages", "tps_form", "MESSAGES",
           "EMPTY"]

EMPTY = 10
CROP_MARGIN_MM = 1.0
# The paper level is measured over each field and this much of the page around it (a closing SHADE_KERNEL_MM
# wide, as wide as the classifier's own); where it varies across a box (EVEN_LIGHT_MIN) the box is read with
# the light evened out, so that a sharp shadow edge crossing its corner is seen as the straight edge it is and
# not as a wedge of ink.
SHADE_KERNEL_MM = 6.5
SHADE_CONTEXT_MM = 11.0  # (also room to look for the boxes: FRAME_REACH_MM + BOX_SEARCH_MM)
EVEN_LIGHT_MIN = 0.85  # a box whose paper level varies less than this (darkest / brightest) is left as is
BUBBLE_SHADE_MM = 12.0  # the same for the OMR bubbles: wider than a blackened bubble (8 mm)
BUBBLE_NUDGE_MM = 3.0  # ... a bubble group that reads unclear is looked for, then each bubble this far round
# A field's boxes are looked for up to this far from where the page's homography puts them: a plano sheet
# that does not lie flat (fold lines, curl) moves the middle of the page by millimetres against its corner
# markers, and at 2 mm off every box crop misses its printed border (the page was refused as "covered").
BOX_SEARCH_MM = 4.0
BOX_SEARCH_FAR_MM = 9.0  # a field not seen where the markers put it is looked for this far (< half a row)
BOX_NUDGE_MM = 1.5  # ... and then each box this far from where its field lies (a fold bends a field)
FRAME_REACH_MM = 6.0  # the table's printed lines this near a field are looked for with its boxes
FRAME_LINE_MM = 0.3
BOX_MATCH_MIN = 0.3  # the printed outlines must match at least this well (normalised correlation) to move
# ... and this much better than where the markers put them: a page that lies flat keeps its cut (a shift
# of a pixel either way only trades one borderline crop for another)
BOX_MATCH_GAIN = 0.1
# Prior odds of one specific reading that breaks a printed rule (a KPPS slip: a sum that does not add up, a
# value out of range, bubbles that disagree with the boxes) against one specific consistent reading: about
# one page in ten carries a slip, spread over ~100 ways (which number, how far off) -> 1e-3.
SLIP_ODDS = 1e-3
SLIP_ODDS_FAR = 1e-4  # a wrong value more than 10 away from the consistent one
# A page is accepted only if P(any of its numbers is wrong) is at most this. Most accepted pages are far
# surer (median ~1e-5), so the expected share of accepted pages with a wrong number, summed over all pages
# read, stays below 1e-4 (bench_reader prints it: expected_silent_per_page; 6e-5 on 300 TPS).
MAX_ERROR = 3e-3
CANDIDATE_MIN_P = 1e-7
MAX_CANDIDATES = 16
BEAM = 256
PRUNE = 1e-9  # partial readings this much less likely than the best are dropped (their mass is counted)
BUBBLE_ERROR = 1e-4  # chance that bubbles read clearly spell one specific other value than the KPPS meant
# Every box may be misread beyond what the classifier says (its confident errors): its probabilities are
# mixed with this much of a uniform guess (not for a box the ink measure finds blank: a blank box holds no
# digit). Measured on reader crops (300 TPS, model v6): 5 errors among ~26,000 boxes read at >= 0.999,
# about 2e-4 per box, where the classifier claimed ~4e-5.
BOX_MISREAD = 1e-4
MIN_VALID = 0.5  # below this the boxes more likely hold no valid number (a gap, a value out of range)
# A rule (or the bubbles) may settle a doubt the boxes themselves raise, never pick a digit they rule out: an
# accepted value must be at least this probable, by its boxes alone, as what they favour. At 0.5 a rule only
# breaks a near tie, so a slip whose digit is in doubt (written 184, the 4 read 4: 0.7 / 3: 0.3, the sum
# needs 183) is shown as written, never explained away. Lower values let the arithmetic decide more 1/7
# doubts at the price of explaining such slips away when the page posterior allows it; bench_reader, 300 TPS,
# model v7, 0.5 -> 0.1: auto-accepted 97.5 -> 97.7% (seed 2024), 96.2 -> 96.9% (seed 2025) of slip-free
# pages, 0 silent errors either way, expected silent errors +2% / +23% (``[reader] min_support``).
MIN_SUPPORT = 0.5
# The guard is against explaining a slip away, and slips are small (``_slip_odds``): where what the boxes
# favour is more than 10 away from the value the rules pick (a 1 read as 7 in the hundreds: 776 for 176), a
# slip would be one of the rare far ones, the page posterior already weighs it (SLIP_ODDS_FAR), and the
# value needs only this much support (a digit the box gives at least 2% of its favourite's probability).
MIN_SUPPORT_FAR = 0.02
BLANK_INK_MM = 1.0  # a box whose largest dark mark is shorter than this has nothing written in it
BLANK_MIN_P = 0.9  # ... if the classifier also gives "empty" at least this (a faint stroke it lost gets ~0.5)
# A dark mark at least this wide that reaches past a box's printed border is an object lying on the form (a
# pen, a dark sleeve): the thickest handwriting on generated pages is 3 mm (where strokes cross a border),
# and a box filled in stays inside its border. Pens are 7-10 mm; a highlight along the barrel leaves >= 4.5
# mm of it dark.
OBJECT_MM = 4.0
OBJECT_DARK = 0.4  # ... dark: under this share of the paper's brightness (a shadow is 0.5-0.7)
# A box whose inside is this much blown out (SATURATED) by a lamp's reflection may have lost its writing: a
# leading digit gone reads 129 as 29, with nothing on the page to say so where no rule or bubble checks it.
GLARE_BOX_SHARE = 0.03
GLARE_INSET_MM = 1.2  # ... inside the box's printed border (1.06 mm)
# A grey-bordered box (row sums) is classified from inside its border: printed light grey (0.53 mm) it keeps
# too little contrast in a dim photo for the classifier's border removal, and its remains read as 1, 4 or 6.
GREY_INSET_MM = 0.8  # beyond the box edge inwards: the border's inner half (0.27 mm) + registration slack

MESSAGES = {
    "digit_uncertain": ("Angka kurang jelas: {fields}. Periksa formulir dan pastikan angka ditulis jelas, "
                        "satu angka per kotak, rata kanan."),
    "field_empty": "Kotak angka kosong: {fields}. Isi semua kotak (tulis 0 bila tidak ada).",
    "rule_failed": "Jumlah tidak cocok: {rules}. Periksa kembali penjumlahan pada formulir.",
    "tps_rule_failed": ("Tidak cocok dengan halaman lain yang sudah difoto: {rules}. Periksa angka di semua "
                        "halaman formulir; bila ada yang salah, perbaiki lalu foto ulang halaman itu."),
    "bubble_mismatch": ("Bulatan yang dihitamkan tidak sama dengan angka di kotak: {fields}. "
                        "Periksa dan perbaiki."),
    "bubble_unclear": "Bulatan kurang jelas: {fields}. Hitamkan tepat satu bulatan di setiap kolom.",
    "known_mismatch": ("Angka tidak sama dengan data TPS yang terdaftar: {detail}. Periksa angka di formulir "
                       "(atau data kit pada teknisi)."),
    "page_missing": "Halaman belum difoto atau belum terbaca: {pages}.",
    "page_not_ok": "Halaman perlu diperiksa atau difoto ulang: {pages}.",
}
MESSAGES.update({k: v for k, v in RETAKE_MESSAGES.items() if k not in MESSAGES})


class Classifier(Protocol):
    def classify(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class BoxCrop:
    field: str
    box: int  # 0 = leftmost (most significant)
    crop: np.ndarray  # uint8 gray, as photographed
    even: np.ndarray | None = None  # what is read: the crop, or where the light is uneven across it
    # (a shadow's edge) the crop with the light evened out over its field (``even_light``)
    seen: tuple[bool, bool] | None = None  # ``_box_visible(crop)``, where the cut already looked


def locate(region: np.ndarray, outline: np.ndarray, at: tuple[int, int], ppm: float, *,
           search_mm: float = BOX_SEARCH_MM) -> tuple[int, int] | None:
    """Where printed lines really are in a rectified page region: the shift (dx, dy) in px, at most
    ``search_mm`` each way, that best lays ``outline`` (float32, 1 on the lines), expected with its corner
    at ``at`` (x, y px), over the dark lines of ``region`` (uint8 gray, light evened out). None when the
    lines are not seen well enough (covered, washed out) to say."""
    pad = int(round(search_mm * ppm))
    (tx, ty), (th, tw) = at, outline.shape
    if tx - pad < 0 or ty - pad < 0 or tx + tw + pad > region.shape[1] or ty + th + pad > region.shape[0]:
        return None
    search = 255.0 - region[ty - pad:ty + th + pad, tx - pad:tx + tw + pad].astype(np.float32)
    res = cv2.matchTemplate(search, outline, cv2.TM_CCOEFF_NORMED)
    _, best, _, loc = cv2.minMaxLoc(res)
    if best < BOX_MATCH_MIN:
        return None
    if best - float(res[pad, pad]) < BOX_MATCH_GAIN:  # where the markers put it is as good: stay
        return 0, 0
    return loc[0] - pad, loc[1] - pad


def _nearest_shift(at: tuple[float, float], seen: list[tuple[tuple[float, float], tuple[int, int]]],
                   k: int = 3) -> tuple[int, int]:
    """The shift of the ``k`` fields located nearest to ``at`` (mm), weighted by closeness; (0, 0) if none."""
    if not seen:
        return 0, 0
    d = np.array([np.hypot(p[0] - at[0], p[1] - at[1]) for p, _ in seen])
    near = np.argsort(d)[:k]
    wts = 1.0 / (d[near] + 10.0)
    sh = np.array([seen[i][1] for i in near], np.float64)
    return tuple(int(round(v)) for v in (wts @ sh) / wts.sum())


def _outline(shapes: list[tuple[float, ...]], ppm: float, line_mm: float, *,
             frames: list[tuple[float, float, float, float]] = (), reach_mm: float = 1.0,
             ) -> tuple[np.ndarray, tuple[int, int]]:
    """Printed outlines drawn at ``ppm``: boxes (x, y, w, h) or circles (cx, cy, r), ``line_mm`` wide, and
    the lines of the table ``frames`` (x, y, w, h) that pass within ``reach_mm`` of them, in mm from a
    region's corner. Returns the drawing (``reach_mm`` around the shapes) and where its corner lies in the
    region (px)."""
    ext = [(v[0], v[1], v[0] + v[2], v[1] + v[3]) if len(v) == 4
           else (v[0] - v[2], v[1] - v[2], v[0] + v[2], v[1] + v[2]) for v in shapes]
    x0, y0 = min(e[0] for e in ext) - reach_mm, min(e[1] for e in ext) - reach_mm
    w, h = max(e[2] for e in ext) + reach_mm - x0, max(e[3] for e in ext) + reach_mm - y0
    img = np.zeros((int(round(h * ppm)), int(round(w * ppm))), np.float32)

    def px(vx: float, vy: float) -> tuple[int, int]:
        return int(round((vx - x0) * ppm)), int(round((vy - y0) * ppm))

    for fx, fy, fw, fh in frames:  # drawing clips what lies outside
        cv2.rectangle(img, px(fx, fy), px(fx + fw, fy + fh), 1.0, max(1, int(round(FRAME_LINE_MM * ppm))))
    t = max(1, int(round(line_mm * ppm)))
    for v in shapes:
        if len(v) == 4:
            cv2.rectangle(img, px(v[0], v[1]), px(v[0] + v[2], v[1] + v[3]), 1.0, t)
        else:
            cv2.circle(img, px(v[0], v[1]), int(round(v[2] * ppm)), 1.0, t)
    return img, (int(round(x0 * ppm)), int(round(y0 * ppm)))


def even_light(gray: np.ndarray, ppm: float, *, kernel_mm: float = SHADE_KERNEL_MM) -> np.ndarray:
    """A uint8 gray page region with shading and shadows divided out: every pixel over its paper level
    (``digits.paper_level`` with a ``kernel_mm`` closing: marks narrower than that are kept as marks),
    scaled back to the region's bright paper. The region should extend ``kernel_mm`` beyond what is used."""
    bg, paper = _shading(gray, ppm, kernel_mm)
    return _evened(gray, bg, paper)


def _shading(gray: np.ndarray, ppm: float, kernel_mm: float) -> tuple[np.ndarray, float]:
    """The region's paper level (float32, per pixel) and its bright paper (the level's 90th percentile)."""
    bg = paper_level(gray, max(3, int(round(kernel_mm * ppm)) | 1))
    return bg, float(np.percentile(bg[::3, ::3], 90))


def _evened(gray: np.ndarray, bg: np.ndarray, paper: float) -> np.ndarray:
    return np.clip(gray * (paper / bg), 0, 255).astype(np.uint8)


@dataclass
class _FieldRegion:
    """A field's boxes and SHADE_CONTEXT_MM of page around them, rectified: corner and far corner (mm), the
    photo there, its paper level and bright paper; ``even`` (the light evened out) is made once, if needed."""

    x0: float
    y0: float
    x1: float
    y1: float
    wide: np.ndarray
    bg: np.ndarray
    paper: float

    @cached_property
    def even(self) -> np.ndarray:
        return _evened(self.wide, self.bg, self.paper)


@dataclass
class PageReading:
    image: str
    form: str
    page: int | None
    status: str  # ok | review | retake
    reasons: list[dict]
    fields: dict[str, dict]
    checks: list[dict]
    timing_ms: dict[str, float]
    registration: Registration | None = None
    evidence: dict | None = field(default=None, repr=False)  # boxes, probabilities, bubbles (benchmarks)
    _gray: np.ndarray | None = field(default=None, repr=False)
    _annotated: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "form": self.form,
            "page": self.page,
            "status": self.status,
            "reasons": self.reasons,
            "fields": self.fields,
            "checks": [{"rule": c["rule"], "ok": c["ok"]} for c in self.checks],
            "timing_ms": self.timing_ms,
        }

    def evidence_dict(self, top: int = 3) -> dict[str, Any] | None:
        """What the decision rests on, JSON-ready (``tpskit read --evidence``; for auditors): the page
        posterior, each box's ``top`` classes with their probabilities (``"E"`` = empty) and the bubbles.
        None for a page that was not read (``retake``)."""
        ev = self.evidence
        if not ev:
            return None
        probs = np.asarray(ev["probs"])
        boxes = []
        for (name, box), p in zip(ev["boxes"], probs, strict=True):
            best = np.argsort(-p)[:top]
            boxes.append({"field": name, "box": int(box),
                          "top": [["E" if int(k) == EMPTY else int(k), round(float(p[k]), 6)] for k in best]})
        return {"page_confidence": round(float(ev["page_confidence"]), 6), "boxes": boxes,
                "bubbles": {n: {"value": v, "state": st} for n, (v, st) in ev["bubbles"].items()}}

    @property
    def values(self) -> dict[str, int | None]:
        return {k: v["value"] for k, v in self.fields.items()}

    @property
    def annotated(self) -> np.ndarray:
        """The rectified page (BGR) with every box's value and confidence and each failed rule drawn."""
        if self._annotated is None:
            self._annotated = _annotate(self)
        return self._annotated


def _reason(code: str, page: PageTemplate | None = None, **kw: Any) -> dict:
    """A reason: its code, its message and the lists it names; with *page*, the message names each field by
    its label on the form (what the KPPS finds on the sheet), the ``fields`` list keeps the names."""

    def shown(key: str, v: Any) -> str:
        if key == "fields" and page is not None:
            v = [page.by_name[n].label if n in page.by_name else n for n in v]
        return ", ".join(map(str, v))

    fmt = {k: shown(k, v) if isinstance(v, list | tuple) else v for k, v in kw.items()}
    try:
        msg = MESSAGES[code].format(**fmt)
    except KeyError:
        msg = MESSAGES.get(code, code)
    out = {"code": code, "message": msg}
    out.update({k: list(v) for k, v in kw.items() if isinstance(v, list | tuple)})
    return out


# --------------------------------------------------------------------------------------------- numbers ---
_ENUM: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _enum(m: int) -> tuple[np.ndarray, np.ndarray]:
    """All values with m boxes: digit matrix (N, m) and the mask of leading boxes (before the first digit)."""
    if m not in _ENUM:
        v = np.arange(10**m)
        d = np.stack([(v // 10 ** (m - 1 - i)) % 10 for i in range(m)], axis=1)
        k = np.array([len(str(x)) for x in v])
        lead = np.arange(m)[None, :] < (m - k)[:, None]
        _ENUM[m] = (d, lead)
    return _ENUM[m]


def value_distribution(probs: np.ndarray) -> tuple[np.ndarray, float]:
    """P(value) for every value 0..10^m-1 written right-aligned (leading boxes empty or 0), and P(blank).
    The rest of the mass (a gap between digits, ...) is no valid number."""
    m = probs.shape[0]
    d, lead = _enum(m)
    lead_p = probs[:, 0] + probs[:, EMPTY]
    g = probs[np.arange(m)[None, :], d]
    pv = np.where(lead, lead_p[None, :], g).prod(axis=1)
    return pv, float(np.prod(probs[:, EMPTY]))


@dataclass
class _Candidates:
    """The readings of one number that can take part in a consistent page, with their probability mass
    (box probabilities, times the bubbles' evidence; all readings of the number sum to 1).

    ``rest``: mass of the valid readings left out (beyond the top candidates); ``invalid``: mass of a
    required number left blank (what a KPPS may have done, but no valid reading). Readings where the boxes
    disagree with the bubbles keep their place, weighted by the odds of a slip or a misread column.
    ``own_best``/``own_conf``: what the boxes alone say most likely, out-of-range values included (what is
    shown when the page as written most likely breaks a rule)."""

    values: list[int | None]
    probs: list[float]
    rest: float
    invalid: float
    own_best: int | None
    own_conf: float
    valid: float = 1.0  # share of the boxes' mass that is a number within min..max (or blank)
    box_p: dict = field(default_factory=dict)  # candidate -> what the boxes alone give it (as own_conf)


def _candidates(f: Field, probs: np.ndarray, bubble: int | None) -> _Candidates:
    pv, pblank = value_distribution(probs.astype(np.float64))
    raw_blank = pblank
    own = int(np.argmax(pv))
    own_best, own_conf = (None, pblank) if pblank >= pv[own] else (own, float(pv[own]))
    # Readings that are no number (a gap between digits) or out of min..max cannot have been written:
    # the rest is renormalised (MIN_VALID guards against a number the boxes hardly support).
    w = np.zeros_like(pv)
    w[f.min : f.max + 1] = pv[f.min : f.max + 1]
    valid = float(w.sum() + pblank)
    if valid <= 0:
        return _Candidates([], [], 0.0, 1.0, own_best, own_conf, 0.0)
    w, pblank = w / valid, pblank / valid
    if bubble is not None:
        # Boxes reading v while the bubbles clearly spell b != v: a KPPS slip (odds by how far v is from b)
        # or a misread column.
        agree = np.where(np.abs(np.arange(len(w)) - bubble) <= 10, SLIP_ODDS, SLIP_ODDS_FAR) + BUBBLE_ERROR
        if 0 <= bubble < len(w):
            agree[bubble] = 1.0
        w = w * agree
        pblank *= SLIP_ODDS + BUBBLE_ERROR
        norm = float(w.sum() + pblank)
        w, pblank = w / norm, pblank / norm
    blank = pblank if not f.required else 0.0
    invalid = max(0.0, 1.0 - float(w.sum()) - blank)  # a required number left blank
    order = np.argsort(w)[::-1][:MAX_CANDIDATES]
    pairs = [(float(w[i]), int(i)) for i in order if w[i] >= CANDIDATE_MIN_P]
    if blank >= CANDIDATE_MIN_P:
        pairs.append((blank, None))
    pairs = sorted(pairs, key=lambda t: -t[0])[:MAX_CANDIDATES]
    ps = [p for p, _ in pairs]
    rest = max(0.0, 1.0 - invalid - sum(ps))
    box_p = {v: (raw_blank if v is None else float(pv[v])) for _, v in pairs}
    return _Candidates([v for _, v in pairs], ps, rest, invalid, own_best, own_conf, valid, box_p)


@dataclass
class _Joint:
    """Result of the joint decision over one page."""

    best: tuple  # the most probable rule-consistent reading (one value per field), () if none
    best_mass: float
    marginals: dict[str, dict]  # field -> {value: mass of the consistent readings found with that value}
    consistent: float  # Z: mass of the consistent readings found
    unexplored: float  # M: mass never enumerated that might be consistent (counted as such)
    unexplored_by_field: dict[str, float]
    slips: float = 0.0  # S: inconsistent readings (what the KPPS may have written) weighted by their odds
    slips_by_field: dict[str, float] = field(default_factory=dict)

    def denominator(self) -> float:
        """Z + M + S: every consistent reading, every reading not enumerated, and the inconsistent ones
        (a slip on paper) weighted by their prior odds against a consistent reading."""
        return self.consistent + self.unexplored + self.slips

    def posterior(self) -> float:
        d = self.denominator()
        return self.best_mass / d if d > 0 else 0.0


def _joint(fields: list[Field], cands: list[_Candidates], rules: tuple) -> _Joint:
    """Beam search over the page's fields keeping only rule-consistent assignments."""
    names = [f.name for f in fields]
    pos = {n: i for i, n in enumerate(names)}
    due: dict[int, list] = {}
    for r in rules:
        idx = tuple(pos[f] for f in r.fields)
        due.setdefault(max(idx), []).append((r, idx))
    holds, prior = rules_mod.holds_values, rules_mod.prior_values
    beam: list[tuple[float, tuple, float]] = [(1.0, (), 1.0)]  # (mass with priors, reading, mass without)
    dropped = 0.0
    for i, c in enumerate(cands):
        nxt = []
        checks = due.get(i, ())
        weighs = [(r, idx) for r, idx in checks if r.kind == "date" and r.usual]
        options = list(zip(c.values, c.probs, strict=True))
        for p, assign, raw in beam:
            for v, pv in options:
                a = assign + (v,)
                if all(holds(r, [a[j] for j in idx]) is True for r, idx in checks):
                    w = pv
                    for r, idx in weighs:
                        w *= prior(r, [a[j] for j in idx])
                    nxt.append((p * w, a, raw * pv))
        nxt.sort(key=lambda t: -t[0])
        keep = min(BEAM, len(nxt))
        if nxt:
            floor = nxt[0][0] * PRUNE
            while keep > 1 and nxt[keep - 1][0] < floor:
                keep -= 1
        dropped += sum(t[0] for t in nxt[keep:])
        beam = nxt[:keep]
        if not beam:
            break
    z = sum(t[0] for t in beam)
    z_raw = sum(t[2] for t in beam)  # the same readings without the priors: their share of the boxes' mass
    post: dict[str, dict] = {n: {} for n in names}
    for p, a, _ in beam:
        for n, v in zip(names, a, strict=True):
            post[n][v] = post[n].get(v, 0.0) + p
    # Mass never enumerated: a field's valid readings beyond its candidates. Where the field sits in a sum
    # rule, such a reading u belongs to a consistent page only if another number of the rule takes the one
    # value that makes up for u: at most the largest mass that number gives any value but its top one.
    # Elsewhere (no rule, or only <= rules) it counts in full.
    mates: dict[str, set[str]] = {n: set() for n in names}
    for r in rules:
        if r.kind == "sum":
            for a in r.fields:
                mates[a].update(b for b in r.fields if b != a)
    alt = {n: max(c.probs[1:], default=0.0) + c.rest for n, c in zip(names, cands, strict=True)}
    by_field = {}
    for n, c in zip(names, cands, strict=True):
        share = min(1.0, sum(alt[m] for m in mates[n])) if mates[n] else 1.0
        by_field[n] = c.rest * share
    best = beam[0] if beam else (0.0, (), 0.0)
    slips, slips_by = _slip_mass(fields, cands, rules, best[1], best[0], z_raw, best[2])
    return _Joint(best[1], best[0], post, z, dropped + sum(by_field.values()), by_field, slips, slips_by)


def _slip_odds(u: int | None, v: int | None) -> float:
    """Prior odds that the KPPS wrote u where a consistent page has v: small slips (off by one, a carry,
    up to 10) are the common ones; other wrong values are ten times rarer."""
    if u is None or v is None or abs(u - v) <= 10:
        return SLIP_ODDS
    return SLIP_ODDS_FAR


def _slip_mass(fields: list[Field], cands: list[_Candidates], rules: tuple, best: tuple, best_mass: float,
               z: float, best_raw: float) -> tuple[float, dict[str, float]]:
    """Weight of the inconsistent readings: those that differ from the best consistent reading in one number
    (each weighted by its slip odds), the rest (several numbers off) at SLIP_ODDS_FAR."""
    if not best or best_mass <= 0:
        return SLIP_ODDS * max(0.0, 1.0 - z), {}
    names = [f.name for f in fields]
    pos = {n: i for i, n in enumerate(names)}
    involved: dict[int, list] = {}
    for r in rules:
        idx = tuple(pos[f] for f in r.fields)
        for i in idx:
            involved.setdefault(i, []).append((r, idx))
    holds = rules_mod.holds_values
    total, single, by_field = 0.0, 0.0, {}
    for k, c in enumerate(cands):
        v = best[k]
        pv = c.probs[c.values.index(v)]
        scale, raw = best_mass / pv, best_raw / pv  # with and without the priors (date) of the best
        s = 0.0
        for u, pu in zip(c.values, c.probs, strict=True):
            if u == v:
                continue
            a = best[:k] + (u,) + best[k + 1 :]
            if all(holds(r, [a[j] for j in idx]) is True for r, idx in involved.get(k, ())):
                continue  # consistent: already counted in Z
            single += raw * pu
            s += _slip_odds(u, v) * scale * pu
        # readings beyond the candidates (counted as far slips) and the field's own breaks (blank, bubbles)
        single += raw * (c.rest + c.invalid)
        s += SLIP_ODDS_FAR * scale * c.rest + SLIP_ODDS * scale * c.invalid
        by_field[names[k]] = s
        total += s
    return total + SLIP_ODDS_FAR * max(0.0, 1.0 - z - single), by_field


# --------------------------------------------------------------------------------------------- bubbles ---
def _read_bubbles(gray: np.ndarray, hmm: np.ndarray, f: Field) -> tuple[list[list[float]], int | None, str]:
    """Darkness of every bubble and the value they spell: (fills per column, value or None, state)
    state: 'read', 'empty' (none blackened), 'unclear'."""
    ppm = 4.0
    allb = [b for col in f.bubbles for b in col]
    x0 = min(b.cx - b.r for b in allb) - 2
    y0 = min(b.cy - b.r for b in allb) - 2
    x1 = max(b.cx + b.r for b in allb) + 2
    y1 = max(b.cy + b.r for b in allb) + 2
    plain = rectify(gray, hmm, x0, y0, x1 - x0, y1 - y0, ppm).astype(np.float32)
    read = _spell_bubbles(plain, f, x0, y0, ppm)
    if read[2] != "unclear":
        return read
    # unclear as photographed: a shadow's edge across a bubble, or a fold that moved them. Even the light out
    # over the group and the page around it, look for the bubbles' printed rings, and read again.
    c = int(round(BUBBLE_SHADE_MM * ppm))
    patch = rectify(gray, hmm, x0 - c / ppm, y0 - c / ppm, x1 - x0 + 2 * c / ppm, y1 - y0 + 2 * c / ppm, ppm)
    patch = even_light(patch, ppm, kernel_mm=BUBBLE_SHADE_MM)
    outline, at = _outline([(b.cx - x0 + c / ppm, b.cy - y0 + c / ppm, b.r) for b in allb], ppm, 0.5)
    dx, dy = locate(patch, outline, at, ppm) or (0, 0)
    # a fold across the group bends it: then each bubble's ring is looked for near where the group lies
    found, lost = {}, []
    for j, col in enumerate(f.bubbles):
        for i, b in enumerate(col):
            ring, at = _outline([(b.cx - x0 + c / ppm, b.cy - y0 + c / ppm, b.r)], ppm, 0.5)
            e = locate(patch, ring, (at[0] + dx, at[1] + dy), ppm, search_mm=BUBBLE_NUDGE_MM)
            if e is None:  # a blackened bubble has no ring to see: it moved as the bubbles found near it
                lost.append((j, i))
            else:
                found[j, i] = e
    seen = [((f.bubbles[j][i].cx, f.bubbles[j][i].cy), e) for (j, i), e in found.items()]
    nudge = found | {(j, i): _nearest_shift((f.bubbles[j][i].cx, f.bubbles[j][i].cy), seen, k=2)
                     for j, i in lost}
    return _spell_bubbles(patch.astype(np.float32), f, x0 - (c + dx) / ppm, y0 - (c + dy) / ppm, ppm,
                          nudge=nudge)


def _spell_bubbles(patch: np.ndarray, f: Field, x0: float, y0: float, ppm: float, *,
                   nudge: dict[tuple[int, int], tuple[int, int]] | None = None,
                   ) -> tuple[list[list[float]], int | None, str]:
    """``_read_bubbles`` on the group's rectified patch (float32, corner at x0, y0 mm); ``nudge``: where a
    bubble (column, row) lies off its place in the patch (px)."""
    fills: list[list[float]] = []
    digits: list[int | None] = []
    unclear = False
    for j, col in enumerate(f.bubbles):
        fc = []
        for i, b in enumerate(col):
            ex, ey = nudge.get((j, i), (0, 0)) if nudge else (0, 0)
            cx, cy, rb = (b.cx - x0) * ppm + ex, (b.cy - y0) * ppm + ey, b.r * ppm
            ro = rb * 1.3
            ya, yb = max(0, int(cy - ro)), int(cy + ro) + 1
            xa, xb = max(0, int(cx - ro)), int(cx + ro) + 1
            sub = patch[ya:yb, xa:xb]
            yy, xx = np.mgrid[ya:yb, xa:xb]
            d2 = (xx - cx) ** 2 + (yy - cy) ** 2
            inside = d2 <= (0.65 * rb) ** 2
            ring = (d2 >= (1.12 * rb) ** 2) & (d2 <= ro**2)
            if not inside.any() or not ring.any():
                fc.append(0.0)
                continue
            paper = float(np.percentile(sub[ring], 75))  # local paper: shadows and light gradients cancel
            fc.append(float(np.mean(sub[inside] < 0.6 * paper)))
        fills.append(fc)
        filled = [i for i, v in enumerate(fc) if v >= 0.6]
        middling = [i for i, v in enumerate(fc) if 0.45 <= v < 0.6]
        if middling or len(filled) > 1:
            unclear = True
            digits.append(None)
        else:
            digits.append(filled[0] if filled else None)
    if unclear:
        return fills, None, "unclear"
    if all(d is None for d in digits):
        return fills, None, "empty"
    if any(d is None for d in digits):
        return fills, None, "unclear"
    return fills, int("".join(str(d) for d in digits)), "read"


# ----------------------------------------------------------------------------------------------- crops ---
def _box_visible(crop: np.ndarray, ppm: float, *, grey_border: bool = False) -> tuple[bool, bool]:
    """(border visible on at least 3 sides, washed out by glare) for a box crop cut with CROP_MARGIN_MM."""
    sides, glare = _box_sides(crop, ppm, grey_border=grey_border)
    return sides >= 3, glare


def _box_sides(crop: np.ndarray, ppm: float, *, grey_border: bool = False) -> tuple[int, bool]:
    """(on how many sides the printed border is seen where it should be, washed out by glare) for a box crop
    cut with CROP_MARGIN_MM.

    ``grey_border``: the box is printed in the form's light grey (row-sum cells, 0.53 mm), which keeps only
    ~20-35 grey levels of contrast at 2.4 px/mm against ~90-150 for the black borders."""
    c = crop.astype(np.float32)
    h, w = c.shape
    m = CROP_MARGIN_MM * ppm
    band = max(1, int(round(0.8 * ppm)))
    paper = float(np.percentile(c, 90))
    glare = float(np.median(c)) >= 250
    lo_y, hi_y = int(h * 0.25), int(h * 0.75)
    lo_x, hi_x = int(w * 0.25), int(w * 0.75)
    sides = [
        c[lo_y:hi_y, max(0, int(m) - band) : int(m) + band + 1].min(axis=1),
        c[lo_y:hi_y, max(0, int(w - m) - band - 1) : int(w - m) + band].min(axis=1),
        c[max(0, int(m) - band) : int(m) + band + 1, lo_x:hi_x].min(axis=0),
        c[max(0, int(h - m) - band - 1) : int(h - m) + band, lo_x:hi_x].min(axis=0),
    ]
    min_contrast = 12.0 if grey_border else 30.0
    return sum(float(np.median(s)) < paper - min_contrast for s in sides if s.size), glare


def _sides_shown(tries: list[list[BoxCrop]], ppm: float) -> np.ndarray:
    """(try, box) on how many sides a grey-bordered box cut in each of the ways tried shows its border."""
    return np.array([[_box_sides(bc.crop, ppm, grey_border=True)[0] for bc in t] for t in tries])


def _washed_out(crop: np.ndarray, ppm: float) -> bool:
    """Whether at least GLARE_BOX_SHARE of the inside of a box crop cut with CROP_MARGIN_MM is blown out
    (averaged over 3 x 3 px: bright paper's noise alone never is)."""
    if not (crop >= SATURATED).any():
        return False
    m = int(round((CROP_MARGIN_MM + GLARE_INSET_MM) * ppm))
    inside = cv2.blur(crop, (3, 3))[m:-m, m:-m] if min(crop.shape) > 2 * m else crop
    return np.count_nonzero(inside >= SATURATED) >= GLARE_BOX_SHARE * inside.size


def _object_over(crop: np.ndarray, ppm: float) -> bool:
    """Whether a dark object lies over a box crop cut with CROP_MARGIN_MM: a dark mark at least OBJECT_MM wide
    whose extent reaches the crop's edge, outside the printed border."""
    c = crop.astype(np.float32)
    dark = (c < OBJECT_DARK * float(np.percentile(c, 90))).astype(np.uint8)
    if not dark.any():
        return False
    # (padded as the photo goes on: a band that leaves the crop is as wide at its edge as inside)
    dist = cv2.distanceTransform(cv2.copyMakeBorder(dark, 1, 1, 1, 1, cv2.BORDER_REPLICATE), cv2.DIST_L2, 3)
    thick = dist[1:-1, 1:-1] >= OBJECT_MM / 2 * ppm
    if not thick.any():
        return False
    n, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    h, w = dark.shape
    for k in np.unique(labels[thick]):
        x, y, bw, bh = stats[k, :4]
        if x == 0 or y == 0 or x + bw == w or y + bh == h:
            return True
    return False


def _look_key(page: PageTemplate) -> tuple[Path, PageTemplate]:
    """What the look data worked out for ``page`` depends on: the forms folder it was loaded from (whose
    ``look.json`` applies) and the page itself (its form id, number and fields). Two folders holding a form
    of the same id each have their own."""
    return (page.forms_dir, page)


_GREY_BORDERED: dict[tuple[Path, PageTemplate], frozenset[str]] = {}


def _grey_bordered_fields(page: PageTemplate) -> frozenset[str]:
    """Fields whose boxes are printed in light grey (``render.page_style``, from the form's ``look.json``).

    Worked out once per page template (``_look_key``). A form without look data has black borders only;
    malformed look data raises ``TemplateError`` (it would silently change which boxes count as covered)."""
    key = _look_key(page)
    if key not in _GREY_BORDERED:
        style = page_style(page)
        _GREY_BORDERED[key] = frozenset(n for n, b in style.boxes.items() if b.border != INK)
    return _GREY_BORDERED[key]


_BORDER_MM: dict[tuple[Path, PageTemplate], dict[str, float]] = {}


def _border_mm(page: PageTemplate) -> dict[str, float]:
    """How wide each field's printed box borders are (mm), from the form's look data; worked out once per
    page template (``_look_key``)."""
    key = _look_key(page)
    if key not in _BORDER_MM:
        _BORDER_MM[key] = {n: b.border_mm for n, b in page_style(page).boxes.items()}
    return _BORDER_MM[key]


def _classifier_crop(crop: np.ndarray, ppm: float, grey_border: bool) -> np.ndarray:
    """What the digit classifier sees of a box crop cut with CROP_MARGIN_MM: all of it, or for a grey-bordered
    box its inside only (``GREY_INSET_MM`` within the box edge)."""
    if not grey_border:
        return crop
    k = int(round((CROP_MARGIN_MM + GREY_INSET_MM) * ppm))
    return crop[k:-k, k:-k] if min(crop.shape) - 2 * k >= 12 else crop


def ink_extent_mm(crop: np.ndarray, ppm: float) -> float:
    """Longest side (mm) of the largest dark mark inside a box crop, printed border and faint guide excluded.

    Blank boxes measure 0 (guide dots are light and tiny); any handwriting, X or dash measures millimetres."""
    c = crop.astype(np.float32)
    inset = int(round((CROP_MARGIN_MM + 1.0) * ppm))
    inner = c[inset:-inset, inset:-inset]
    if inner.size == 0:
        return 0.0
    paper = float(np.percentile(inner, 90))
    contrast = max(paper - float(np.percentile(c, 2)), 30.0)
    mask = (inner < paper - 0.45 * contrast).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return 0.0
    return float(np.max(np.maximum(stats[1:, 2], stats[1:, 3]))) / ppm


class PageReader:
    """Reads photos of form pages. ``classifier``: an object with ``classify(crops) -> (labels, probs)``
    (``inference.digits.DigitClassifier``); ``form``: a form id or ``Form`` (default: every known form);
    ``max_error``: the largest P(some number on the page is wrong) at which a page is ``ok`` (the main bound);
    ``confidence``: the posterior each number needs on its own as well (a per-number floor, on top of
    ``max_error``; it also decides which numbers a ``digit_uncertain`` reason names); ``min_support``: how
    probable, by its boxes alone and relative to their favourite, a value the rules pick must be;
    ``min_support_far``: the same where their favourite is more than 10 away, no plausible slip (at most
    ``min_support``); ``known``: what the kit knows of its TPS before the count (``KNOWN_FACTS``, e.g.
    ``{"dpt": 250}`` from provisioning): a field the form marks as printing that fact and reads otherwise
    sends the page to ``review`` (``known_mismatch``), whatever its confidence."""

    def __init__(
        self,
        *,
        classifier: Classifier,
        form: Form | str | None = None,
        confidence: float = 0.99,
        max_error: float = MAX_ERROR,
        min_support: float = MIN_SUPPORT,
        min_support_far: float = MIN_SUPPORT_FAR,
        min_px_per_mm: float = 2.0,
        known: Mapping[str, int] | None = None,
    ) -> None:
        if not 0.5 < confidence < 1.0:
            raise ValueError(f"confidence must be within (0.5, 1), got {confidence}")
        if not 0.0 < max_error < 0.5:
            raise ValueError(f"max_error must be within (0, 0.5), got {max_error}")
        if not 0.0 <= min_support <= 1.0:
            raise ValueError(f"min_support must be within [0, 1], got {min_support}")
        if not 0.0 <= min_support_far <= 1.0:
            raise ValueError(f"min_support_far must be within [0, 1], got {min_support_far}")
        if not 0.0 < min_px_per_mm < math.inf:
            raise ValueError(f"min_px_per_mm must be a positive number, got {min_px_per_mm}")
        known = {k: v for k, v in (known or {}).items() if v is not None}
        for k, v in known.items():
            if k not in KNOWN_FACTS:
                raise ValueError(f"known fact {k!r} is not one of {', '.join(KNOWN_FACTS)}")
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"known {k} must be a whole number of at least 0, got {v!r}")
        self.classifier = classifier
        self.form = load_form(form) if isinstance(form, str) else form
        for page in self.form.pages.values() if self.form else ():
            _grey_bordered_fields(page)  # bad look data fails here, not on the first photo
        self.confidence = float(confidence)
        self.max_error = float(max_error)
        self.min_support = float(min_support)
        self.min_support_far = min(float(min_support_far), self.min_support)  # never stricter than near
        self.box_misread = BOX_MISREAD
        self.min_px_per_mm = float(min_px_per_mm)
        self.known: Mapping[str, int] = MappingProxyType(known)

    # -- steps ---------------------------------------------------------------------------------------
    def _register(self, image: np.ndarray) -> Registration:
        return register(image, form=self.form, min_px_per_mm=self.min_px_per_mm)

    @staticmethod
    def _crop_ppm(reg: Registration) -> float:
        return float(min(5.0, max(2.5, reg.px_per_mm)))

    def _cut(self, gray: np.ndarray, reg: Registration) -> list[BoxCrop]:
        """Every box with CROP_MARGIN_MM around it, as photographed and, where the light varies across it,
        evened out over its field and SHADE_CONTEXT_MM of page around the field.

        A sheet that does not lie flat moves its fields against the corner markers. A black-bordered field
        whose boxes do not all show their border on all four sides where the markers put them is cut where
        they are seen to lie (``locate``, up to BOX_SEARCH_FAR_MM), each box nudged; one not found there, or
        one that shows its borders but whose neighbours moved (a box cut a row off can show four "sides": its
        own two, a table line, a stroke), is looked for around where the fields nearest it lie. A field in
        light grey (row sums, drawn like the tally grid beside them) that does not show all four sides of
        every box where the markers put it moves as the black-bordered fields nearest to it, each box nudged
        to its own lines (a lens's distortion bows the page by a millimetre or so between the markers, and
        a grey border then reaches into the classifier's crop as a faint stroke); where a side is still not
        seen, the field is also looked for by its own lines and the table's; each box is cut where it shows
        the most sides.
        On a page that lies flat every box is cut where the markers put it."""
        ppm = self._crop_ppm(reg)
        grey = _grey_bordered_fields(reg.page)
        fields = [f for f in reg.page.fields if f.boxes]
        cut: dict[str, list[BoxCrop]] = {}
        regions: dict[str, _FieldRegion] = {}
        seen: dict[str, tuple[tuple[float, float], tuple[int, int]]] = {}  # black-bordered: (where, shift)
        placed = set()  # black-bordered fields whose boxes show where the markers put them
        at_markers: dict[str, list[BoxCrop]] = {}  # grey-bordered fields cut where the markers put them
        for f in fields:
            region = regions[f.name] = self._region(gray, reg, f, ppm, SHADE_CONTEXT_MM)
            crops = [self._cut_box(gray, reg, f, i, (0, 0), region, ppm) for i in range(len(f.boxes))]
            sides = [_box_sides(bc.crop, ppm, grey_border=f.name in grey) for bc in crops]
            for bc, (n, glare) in zip(crops, sides, strict=True):
                bc.seen = (n >= 3, glare)
            if f.name in grey:
                at_markers[f.name] = crops
            if all(n == 4 for n, _ in sides):
                cut[f.name] = crops  # where the markers put it (unless the fields near it moved)
                if f.name not in grey:
                    seen[f.name] = (f.boxes[0].center, (0, 0))
                    placed.add(f.name)
            elif f.name not in grey:
                shift, far = self._locate_field(gray, reg, f, region, ppm, search_mm=BOX_SEARCH_FAR_MM)
                if shift is not None:
                    seen[f.name] = (f.boxes[0].center, shift)
                    cut[f.name] = self._located(gray, reg, f, shift, far, ppm)
        for f in fields:  # black-bordered, not found, or placed where those near it moved: look near them
            if f.name in grey or (f.name in cut and f.name not in placed):
                continue
            shift = _nearest_shift(f.boxes[0].center, [v for k, v in seen.items() if k != f.name])
            if f.name in placed and np.hypot(*shift) <= BOX_NUDGE_MM * ppm:
                continue  # (a border seen on four sides can be a row off: a stroke, a table line)
            own, region = self._locate_field(gray, reg, f, regions[f.name], ppm, around=shift)
            if own is None and f.name in placed:
                continue
            if own is not None:
                shift = (shift[0] + own[0], shift[1] + own[1])
                seen[f.name] = (f.boxes[0].center, shift)
            cut[f.name] = self._located(gray, reg, f, shift, region, ppm)
        for f in [f for f in fields if f.name in grey]:
            shift = _nearest_shift(f.boxes[0].center, list(seen.values()))
            if f.name in cut and np.hypot(*shift) <= BOX_NUDGE_MM * ppm:
                continue
            # Moved as those fields with each box nudged to its lines; where the markers put it (not if it
            # showed every side there while the fields near it moved); and, if a box shows all four sides in
            # neither, looked for by its own lines and the table's. Each box is cut where it shows the most
            # sides (the first of a tie): faint grey lines alone match ink strokes as well as the border.
            tries = [self._located(gray, reg, f, shift, regions[f.name], ppm)]
            if f.name not in cut:
                tries.append(at_markers[f.name])
            shown = _sides_shown(tries, ppm)
            if shown.max(axis=0).min() < 4:
                own, region = self._locate_field(gray, reg, f, regions[f.name], ppm, around=shift,
                                                 search_mm=BOX_NUDGE_MM)
                if own and own != (0, 0):
                    tries.append(self._located(gray, reg, f, (shift[0] + own[0], shift[1] + own[1]), region,
                                               ppm))
                    shown = np.vstack([shown, _sides_shown(tries[-1:], ppm)])
            best = shown.argmax(axis=0)
            cut[f.name] = [tries[k][i] for i, k in enumerate(best)]
        return [bc for f in fields for bc in cut[f.name]]

    @staticmethod
    def _region(gray: np.ndarray, reg: Registration, f: Field, ppm: float, context_mm: float) -> _FieldRegion:
        """A field's boxes with CROP_MARGIN_MM and ``context_mm`` of page around them, rectified."""
        m = CROP_MARGIN_MM + context_mm
        x0, y0 = min(b.x for b in f.boxes) - m, min(b.y for b in f.boxes) - m
        x1, y1 = max(b.x + b.w for b in f.boxes) + m, max(b.y + b.h for b in f.boxes) + m
        wide = rectify(gray, reg.homography, x0, y0, x1 - x0, y1 - y0, ppm)
        bg, paper = _shading(wide, ppm, SHADE_KERNEL_MM)
        return _FieldRegion(x0, y0, x1, y1, wide, bg, paper)

    def _locate_field(self, gray: np.ndarray, reg: Registration, f: Field, region: _FieldRegion, ppm: float,
                      *, around: tuple[int, int] = (0, 0), search_mm: float = BOX_SEARCH_MM,
                      ) -> tuple[tuple[int, int] | None, _FieldRegion]:
        """``locate`` a field's boxes, with the table's printed lines near them, in its evened region (made
        wider for a search further than it holds): (shift or None if not seen, the region searched). A search
        BOX_SEARCH_FAR_MM wide that finds them only at its edge says None: they lie further still."""
        reach = search_mm + max(abs(around[0]), abs(around[1])) / ppm
        if reach > SHADE_CONTEXT_MM + CROP_MARGIN_MM - FRAME_REACH_MM - 0.5:  # more than the region holds
            region = self._region(gray, reg, f, ppm, reach + FRAME_REACH_MM + 0.5)
        shift = self._match_field(reg, f, region, ppm, around, search_mm)
        if shift is not None and search_mm > BOX_SEARCH_MM and max(map(abs, shift)) >= round(search_mm * ppm):
            shift = None
        return shift, region

    @staticmethod
    def _match_field(reg: Registration, f: Field, region: _FieldRegion, ppm: float, around: tuple[int, int],
                     search_mm: float) -> tuple[int, int] | None:
        """``locate`` of the field's box outlines and the table lines near them, ``around`` a shift (px)."""
        x0, y0, x1, y1 = region.x0, region.y0, region.x1, region.y1
        frames = [(fr.x - x0, fr.y - y0, fr.w, fr.h) for fr in reg.page.frames  # those in the region
                  if fr.x < x1 and fr.x + fr.w > x0 and fr.y < y1 and fr.y + fr.h > y0]
        outline, at = _outline([(b.x - x0, b.y - y0, b.w, b.h) for b in f.boxes], ppm,
                               _border_mm(reg.page).get(f.name, 0.8), frames=frames, reach_mm=FRAME_REACH_MM)
        return locate(region.even, outline, (at[0] + around[0], at[1] + around[1]), ppm, search_mm=search_mm)

    def _located(self, gray: np.ndarray, reg: Registration, f: Field, shift: tuple[int, int],
                 region: _FieldRegion, ppm: float) -> list[BoxCrop]:
        """A black-bordered field's boxes moved by ``shift`` (px), each nudged to where its border lies."""
        x0, y0 = region.x0, region.y0
        b0 = f.boxes[0]
        outline, at0 = _outline([(b0.x - x0, b0.y - y0, b0.w, b0.h)], ppm,
                                _border_mm(reg.page).get(f.name, 0.8))  # the field's boxes are alike
        out = []
        for i, b in enumerate(f.boxes):
            at = (at0[0] + int(round((b.x - b0.x) * ppm)) + shift[0],
                  at0[1] + int(round((b.y - b0.y) * ppm)) + shift[1])
            ex, ey = locate(region.even, outline, at, ppm, search_mm=BOX_NUDGE_MM) or (0, 0)
            out.append(self._cut_box(gray, reg, f, i, (shift[0] + ex, shift[1] + ey), region, ppm))
        return out

    @staticmethod
    def _cut_box(gray: np.ndarray, reg: Registration, f: Field, i: int, shift: tuple[int, int],
                 region: _FieldRegion, ppm: float) -> BoxCrop:
        """Box ``i`` of field ``f`` cut from the photo at its own (sub-pixel) place moved by ``shift`` (px),
        its paper level taken from the field's region."""
        x0, y0, bg, paper = region.x0, region.y0, region.bg, region.paper
        b, m = f.boxes[i], CROP_MARGIN_MM
        bx, by = b.x - m + shift[0] / ppm, b.y - m + shift[1] / ppm
        crop = rectify(gray, reg.homography, bx, by, b.w + 2 * m, b.h + 2 * m, ppm)
        h, w = crop.shape
        level = cv2.getRectSubPix(bg, (w, h), ((bx - x0) * ppm + (w - 1) / 2, (by - y0) * ppm + (h - 1) / 2))
        # under even light the classifier reads the box as photographed (its own paper level copes with
        # gradients; a rescaled crop would only move borderline reads at random)
        flat = float(level.min()) >= EVEN_LIGHT_MIN * float(level.max())
        return BoxCrop(f.name, i, crop, crop if flat else _evened(crop, level, paper))

    def box_crops(self, image: np.ndarray) -> list[BoxCrop]:
        """Registration and cutting only: the crops the classifier sees (for the digit benchmark and
        training); RetakeError if the photo is unusable."""
        if not is_image(image, min_side=1):
            raise RetakeError(["not_an_image"])
        gray = to_gray(image)
        reg = self._register(gray)
        ppm, grey = self._crop_ppm(reg), _grey_bordered_fields(reg.page)
        return [BoxCrop(bc.field, bc.box, _classifier_crop(bc.even, ppm, bc.field in grey))
                for bc in self._cut(gray, reg)]

    # -- the whole read ------------------------------------------------------------------------------
    def read(self, image: np.ndarray, *, name: str = "") -> PageReading:
        t0 = time.perf_counter()
        timing: dict[str, float] = {}
        form_id = self.form.form_id if self.form else DEFAULT_FORM

        def lap(key: str, since: float) -> float:
            now = time.perf_counter()
            timing[key] = round((now - since) * 1000, 1)
            return now

        if not is_image(image, min_side=1):
            return PageReading(
                name, form_id, None, "retake", [_reason("not_an_image")], {}, [], {"total": 0.0}
            )
        gray = to_gray(image)
        t = lap("gray", t0)
        try:
            reg = self._register(gray)
        except RetakeError as exc:
            lap("register", t)
            timing["total"] = round((time.perf_counter() - t0) * 1000, 1)
            page = exc.page
            return PageReading(
                name,
                page.form if page else form_id,
                page.page if page else None,
                "retake",
                [_reason(r) for r in exc.reasons],
                {},
                [],
                timing,
            )
        t = lap("register", t)
        page = reg.page
        crops = self._cut(gray, reg)
        ppm = self._crop_ppm(reg)
        hidden, glared = [], []
        grey = _grey_bordered_fields(page)
        for bc in crops:
            vis, gl = bc.seen or _box_visible(bc.crop, ppm, grey_border=bc.field in grey)
            if not vis:  # a box whose printed border cannot be seen: washed out by glare, or covered
                (glared if gl else hidden).append(bc.field)
            elif _object_over(bc.crop, ppm):  # its border seen through, or under, a dark object on the form
                hidden.append(bc.field)
            elif _washed_out(bc.crop, ppm):  # its border seen, the writing inside blown out by a reflection
                glared.append(bc.field)
        t = lap("cut", t)
        if hidden or glared:
            reasons = []
            if hidden and set(hidden) <= grey and reg.metrics.get("paper", 255.0) < BRIGHT_PAPER:
                # only light grey borders lost, in a dim photo: they fade in the dark, nothing lies on them
                reasons.append(_reason("too_dark", fields=sorted(set(hidden))))
            elif hidden:
                reasons.append(_reason("covered", fields=sorted(set(hidden))))
            if glared:
                reasons.append(_reason("glare", fields=sorted(set(glared))))
            timing["total"] = round((time.perf_counter() - t0) * 1000, 1)
            return PageReading(
                name, page.form, page.page, "retake", reasons, {}, [], timing, registration=reg, _gray=gray
            )
        labels, probs = self.classifier.classify([_classifier_crop(bc.even, ppm, bc.field in grey)
                                                  for bc in crops])
        probs = np.array(probs, np.float64)
        probs = (1.0 - self.box_misread) * probs + self.box_misread / probs.shape[1]  # confident misreads
        labels = np.array(labels)
        for i, bc in enumerate(crops):
            # The model is fairly sure of "empty" and no ink is measured: the box is blank, remove the doubt.
            # (Never the other way round: a thin light stroke can escape the ink measure. The classifier
            # gives a faint stroke it cannot read P(empty) ~0.5, so such a box keeps its doubt.)
            if probs[i, EMPTY] >= BLANK_MIN_P and ink_extent_mm(bc.even, ppm) < BLANK_INK_MM:
                probs[i] *= 1e-4
                probs[i, EMPTY] = 1.0 - probs[i].sum() + probs[i, EMPTY]
                labels[i] = EMPTY
        t = lap("classify", t)
        bubbles: dict[str, tuple[int | None, str]] = {}
        for f in page.fields:
            if f.bubbles:
                _, val, state = _read_bubbles(gray, reg.homography, f)
                bubbles[f.name] = (val, state)
        t = lap("bubbles", t)
        fields_out, reasons, checks, status, page_conf, terms = self._decide(
            page, crops, labels, probs, bubbles
        )
        lap("decide", t)
        timing["total"] = round((time.perf_counter() - t0) * 1000, 1)
        evidence = {"boxes": [(bc.field, bc.box) for bc in crops], "probs": probs, "labels": labels,
                    "bubbles": bubbles, "page_confidence": page_conf, "posterior_terms": terms}
        return PageReading(
            name,
            page.form,
            page.page,
            status,
            reasons,
            fields_out,
            checks,
            timing,
            registration=reg,
            evidence=evidence,
            _gray=gray,
        )

    def _decide(
        self,
        page: PageTemplate,
        crops: list[BoxCrop],
        labels: np.ndarray,
        probs: np.ndarray,
        bubbles: dict[str, tuple[int | None, str]],
    ) -> tuple[dict, list, list, str, float, dict]:
        """The page's numbers and status from the box probabilities, the bubbles and the rules.

        The reading shown is the most probable assignment of values that satisfies every printed rule and
        agrees with the bubbles, unless the boxes say clearly that the page as written breaks a rule (a slip:
        then what the boxes say, and ``review``). ``ok`` needs the posterior of the whole page reading, with
        slips and unexplored readings in the denominator, to reach ``1 - max_error`` and every number's
        posterior to reach ``confidence``. Returns (fields, reasons, checks, status, page posterior, what the
        posterior is made of)."""
        per_field: dict[str, list[int]] = {}
        for i, bc in enumerate(crops):
            per_field.setdefault(bc.field, []).append(i)
        cands: list[_Candidates] = []
        reasons: list[dict] = []
        unclear = []
        for f in page.fields:
            b_val, b_state = bubbles.get(f.name, (None, "none"))
            cands.append(_candidates(f, probs[per_field[f.name]], b_val if b_state == "read" else None))
            if b_state == "unclear":
                unclear.append(f.name)
        joint = _joint(list(page.fields), cands, page.rules)
        denom = joint.denominator()
        own_mass = math.prod(c.own_conf for c in cands)
        slip = not joint.best or joint.best_mass < SLIP_ODDS * own_mass
        values: dict[str, int | None] = {}
        conf: dict[str, float] = {}
        for k, (f, c) in enumerate(zip(page.fields, cands, strict=True)):
            if slip:
                values[f.name], conf[f.name] = c.own_best, c.own_conf
            else:  # against this number: other consistent readings, its unexplored readings, its slips
                v = joint.best[k]
                values[f.name] = v
                against = (joint.consistent - joint.marginals[f.name].get(v, 0.0)
                           + joint.unexplored_by_field.get(f.name, 0.0)
                           + joint.slips_by_field.get(f.name, 0.0))
                conf[f.name] = max(0.0, 1.0 - against / denom) if denom > 0 else 0.0
        page_conf = 0.0 if slip else joint.posterior()
        terms = {  # what the page posterior is made of (for the benchmark's explanations)
            "other_readings": (joint.consistent - joint.best_mass) / denom if denom > 0 else 0.0,
            "unexplored": joint.unexplored / denom if denom > 0 else 0.0,
            "slips": joint.slips / denom if denom > 0 else 0.0,
            "slip_shown": slip,
        }
        checks = rules_mod.check(page.rules, values)
        failed = [ch for ch in checks if ch["ok"] is False]
        # empty: nothing written in any of its boxes. A number the boxes hold but that is none the reader
        # can take (2 written in the first of three boxes) is unclear: "fill the boxes, write 0" would have
        # the KPPS make it 200.
        empty = [f.name for f in page.fields if f.required and values[f.name] is None
                 and all(int(labels[i]) == EMPTY for i in per_field[f.name])]
        mismatch = [f.name for f in page.fields
                    if bubbles.get(f.name, (None, ""))[1] == "read" and values[f.name] != bubbles[f.name][0]]
        floor = 1.0 - self.confidence
        if page_conf < 1.0 - self.max_error:  # name the numbers that carry the doubt
            floor = min(floor, max(self.max_error / 4, 1.0 - page_conf) / 4)
        # A rule (or the bubbles) may settle a doubt, never overrule the boxes: the value read must be at
        # least min_support times as probable, by its boxes alone, as what they favour (min_support_far
        # where what they favour is no plausible slip from it).
        unsupported = set() if slip else {
            f.name for f, c in zip(page.fields, cands, strict=True)
            if c.box_p.get(values[f.name], 0.0) < c.own_conf * (
                self.min_support if _slip_odds(c.own_best, values[f.name]) == SLIP_ODDS
                else self.min_support_far)}
        uncertain = [f.name for f, c in zip(page.fields, cands, strict=True)
                     if f.name not in empty and (1.0 - conf[f.name] > floor or c.valid < MIN_VALID
                                                 or f.name in unsupported)]
        terms["unsupported"] = sorted(unsupported)
        if not slip and page_conf < 1.0 - self.max_error and not uncertain:
            uncertain = [min(conf, key=conf.get)]
        if slip and not (failed or empty or mismatch or uncertain):
            uncertain = [f.name for f, c in zip(page.fields, cands, strict=True)
                         if c.own_best is None or not f.min <= c.own_best <= f.max]
            uncertain = uncertain or [min(conf, key=conf.get)]
        if empty:
            reasons.append(_reason("field_empty", page, fields=empty))
        if failed:
            reasons.append(_reason("rule_failed", rules=[ch["label"] for ch in failed]))
        if mismatch:
            reasons.append(_reason("bubble_mismatch", page, fields=mismatch))
        if unclear:
            reasons.append(_reason("bubble_unclear", page, fields=unclear))
        if uncertain:
            reasons.append(_reason("digit_uncertain", page, fields=uncertain))
        reasons += self._against_known(page, values)
        fields_out = {}
        for f in page.fields:
            idx = per_field[f.name]
            fields_out[f.name] = {
                "value": values[f.name],
                "confidence": round(float(conf[f.name]), 6),
                "digits": [None if int(labels[i]) == EMPTY else int(labels[i]) for i in idx],
                "bubbles": bubbles[f.name][0] if f.name in bubbles else None,
            }
        status = "ok" if not reasons else "review"
        return fields_out, reasons, checks, status, page_conf, terms

    def _against_known(self, page: PageTemplate, values: dict[str, int | None]) -> list[dict]:
        """A ``known_mismatch`` reason when a field printing a fact the kit knows (``Field.known``) reads
        another number: a misread (27 read as 227) or a slip the rules cannot see, for a person to check."""
        off = [f for f in page.fields if f.known in self.known
               and values[f.name] is not None and values[f.name] != self.known[f.known]]
        if not off:
            return []
        detail = "; ".join(f"{f.label} tertulis {values[f.name]}, terdaftar {self.known[f.known]}"
                           for f in off)
        return [_reason("known_mismatch", fields=[f.name for f in off], detail=detail)]


# ---------------------------------------------------------------------------------------------- TPS ---
def _page_values(d: dict) -> dict:
    return {k: v.get("value") for k, v in d.get("fields", {}).items()}


def _tps_values(pages: Iterable[dict]) -> dict:
    """The numbers of a TPS's pages as the cross-page rules name them (``p<page>.<field>``; a later reading
    of a page replaces an earlier one)."""
    return {f"p{d['page']}.{k}": v for d in pages for k, v in _page_values(d).items()}


def check_tps(readings: list[PageReading | dict], *, form_id: str = DEFAULT_FORM) -> dict:
    """Cross-page rules of one TPS: ``{"tps": True, "status", "reasons", "checks"}``.

    A page read more than once counts as its last reading (a retake, a review read again); two ``ok``
    readings of it with other numbers make it ``page_not_ok`` (one of them is wrong). A page of another form
    is no page of this TPS."""
    dicts = [r.to_dict() if isinstance(r, PageReading) else r for r in readings]
    mine = [d for d in dicts if d.get("page") is not None and d.get("form", form_id) == form_id]
    by_page = {d["page"]: d for d in mine}
    accepted: dict[int, list[dict]] = {}
    for d in mine:
        if d.get("status") == "ok":
            accepted.setdefault(d["page"], []).append(_page_values(d))
    torn = {p for p, vals in accepted.items() if any(v != vals[0] for v in vals)}
    form = load_form(form_id)
    reasons = []
    missing = [p for p in form.pages if p not in by_page or by_page[p].get("status") == "retake"]
    not_ok = [p for p in form.pages if p in by_page and p not in missing
              and (by_page[p].get("status") == "review" or p in torn)]
    values = _tps_values(by_page.values())
    checks = rules_mod.check_values(rules_mod.load_tps_rules(form_id), values)
    failed = [c for c in checks if c["ok"] is False]
    if missing:
        reasons.append(_reason("page_missing", pages=missing))
    if not_ok:
        reasons.append(_reason("page_not_ok", pages=not_ok))
    if failed:
        reasons.append(_reason("rule_failed", rules=[c["label"] for c in failed]))
    unknown = [c for c in checks if c["ok"] is None]
    if unknown and not missing and not not_ok:
        reasons.append(_reason("digit_uncertain", fields=[c["rule"] for c in unknown]))
    return {
        "tps": True,
        "status": "ok" if not reasons else "review",
        "reasons": reasons,
        "checks": [{"rule": c["rule"], "ok": c["ok"]} for c in checks],
    }


def check_with_other_pages(reading: dict, others: list[dict]) -> dict | None:
    """A ``tps_rule_failed`` reason when ``reading`` (a page's ``to_dict()``) breaks a cross-page rule of its
    form against the other pages of its TPS read before (``others``: the newest reading of each other
    halaman), else None: the kit tells the KPPS while the form is still at hand, not the collector later.
    Only rules that involve this page count (the others were told at their own page); pages of another
    form, retakes and rules with a number not read are left out."""
    page, form = reading.get("page"), reading.get("form", DEFAULT_FORM)
    mine = [o for o in others if o.get("page") not in (None, page) and o.get("form", DEFAULT_FORM) == form
            and o.get("status") != "retake"]
    if page is None or not mine:
        return None
    try:
        rules = [r for r in rules_mod.load_tps_rules(form)
                 if any(f.startswith(f"p{page}.") for f in (*r.left, *r.right))]
    except (TemplateError, OSError, ValueError, KeyError):
        return None
    values = _tps_values([*mine, reading])
    failed = [c for c in rules_mod.check_values(tuple(rules), values) if c["ok"] is False]
    return _reason("tps_rule_failed", rules=[c["label"] for c in failed]) if failed else None


MIXED_FORMS_ADVICE = "Periksa formulir tiap halaman: halaman tiap formulir diperiksa sebagai TPS tersendiri."


def _page_label(d: dict) -> str:
    return d.get("image") or f"halaman {d['page']}"


def tps_form(readings: list[dict], given: str | None = None,
             default: str = DEFAULT_FORM) -> tuple[str | None, str | None]:
    """The form whose cross-page rules apply to ``readings`` (one TPS's pages), and what is wrong if none:
    ``given``, else the form every page read names (``default`` when none names one); pages of different
    forms are no TPS: ``(None, message)`` naming each form's pages."""
    if given:
        return given, None
    by_form: dict[str, list[str]] = {}
    for d in readings:
        if d.get("page") is not None and d.get("form") is not None:
            by_form.setdefault(str(d["form"]), []).append(_page_label(d))
    if len(by_form) <= 1:
        return next(iter(by_form), default), None
    listed = "; ".join(f"formulir {f}: {', '.join(pages)}" for f, pages in sorted(by_form.items()))
    return None, f"Halaman-halaman ini dari formulir yang berbeda ({listed}), bukan satu TPS."


def check_tps_pages(readings: list[PageReading | dict], *, form_id: str | None = None,
                    advice: str = MIXED_FORMS_ADVICE) -> dict:
    """``check_tps`` under the form the pages are of (``form_id`` if given, see ``tps_form``), with that
    form: ``{"tps": True, "form", "status", "reasons", "checks"}``. Pages of different forms are ``review``
    with no checks and one ``mixed_forms`` reason (its message ends with ``advice``), form None."""
    dicts = [r.to_dict() if isinstance(r, PageReading) else r for r in readings]
    form, mixed = tps_form(dicts, form_id)
    if mixed:
        return {"tps": True, "form": None, "status": "review",
                "reasons": [{"code": "mixed_forms", "message": f"{mixed} {advice}".strip()}], "checks": []}
    return {"tps": True, "form": form, **check_tps(dicts, form_id=form)}


# ------------------------------------------------------------------------------------------ annotate ---
def _annotate(r: PageReading, ppm: float = 1.2) -> np.ndarray:
    colors = {"ok": (40, 150, 40), "review": (0, 140, 255), "retake": (0, 0, 220)}
    if r.registration is None or r._gray is None:
        img = np.full((240, 640, 3), 255, np.uint8)
        cv2.putText(img, f"{r.status.upper()}", (10, 50), cv2.FONT_HERSHEY_SIMPLEX, 1.4, colors[r.status], 3)
        for k, reason in enumerate(r.reasons[:4]):
            cv2.putText(img, reason["code"], (10, 100 + 30 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2)
        return img
    page = r.registration.page
    gray = rectify(r._gray, r.registration.homography, 0, 0, page.size_mm[0], page.size_mm[1], ppm)
    img = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    font = cv2.FONT_HERSHEY_SIMPLEX
    flagged = {n for reason in r.reasons for n in reason.get("fields", [])}
    failed_rules = [c for c in r.checks if c["ok"] is False]
    failed_fields = {
        n for c in failed_rules for rule in page.rules if rule.name == c["rule"] for n in rule.fields
    }
    for f in page.fields:
        info = r.fields.get(f.name)
        if info is None:
            continue
        col = (40, 150, 40)
        if f.name in failed_fields:
            col = (0, 0, 220)
        elif f.name in flagged:
            col = (0, 140, 255)
        x0 = int(f.boxes[0].x * ppm)
        y0 = int(f.boxes[0].y * ppm)
        x1 = int((f.boxes[-1].x + f.boxes[-1].w) * ppm)
        y1 = int((f.boxes[-1].y + f.boxes[-1].h) * ppm)
        cv2.rectangle(img, (x0 - 2, y0 - 2), (x1 + 2, y1 + 2), col, 2)
        text = f"{'-' if info['value'] is None else info['value']} {info['confidence']:.2f}"
        if x1 - x0 < 40 * ppm:  # narrow (row sums): write to the left, centred on the boxes
            (tw, th), _ = cv2.getTextSize(text, font, 0.35, 1)
            cv2.putText(img, text, (x0 - tw - 4, (y0 + y1 + th) // 2), font, 0.35, col, 1, cv2.LINE_AA)
        else:
            cv2.putText(img, text, (x0, max(10, y0 - 4)), font, 0.4, col, 1, cv2.LINE_AA)
    cv2.putText(
        img,
        f"{page.form} hal. {page.page}: {r.status.upper()}",
        (10, 25),
        font,
        0.7,
        colors[r.status],
        2,
        cv2.LINE_AA,
    )
    for k, c in enumerate(failed_rules[:6]):
        cv2.putText(
            img, f"X {c.get('label', c['rule'])}", (10, 50 + 18 * k), font, 0.45, (0, 0, 220), 1, cv2.LINE_AA
        )
    return img

