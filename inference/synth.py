"""Generator of realistic test photos of filled C.HASIL pages (deterministic by seed).

1. ``make_tps``: consistent numbers for one TPS (at most 300 voters, every printed rule holds), optionally
  with
   one KPPS arithmetic slip (a written number that breaks a rule, or bubbles that disagree with the boxes).
2. ``fill_page``: the rendered blank page with the numbers handwritten into the boxes
   (``inference.handwriting``: writer styles, blank / X / dash / 0 in leading boxes, blue or black ballpoint),
   matching blackened bubbles, and the tally marks of the count in the tally grids (``draw_tallies``: groups
   of five as turus — four strokes crossed by a fifth — or as a square with its diagonal), in the same pen.
3. ``photograph``: the page on a stand under the camera (4608x2592 sensor, ``scale`` shrinks it for tests):
   wobble (perspective, small rotation, sometimes upside down), uneven light, shadow, glare, focus blur,
   noise, JPEG. Conditions ``clean``, ``field``, ``hard`` (the default mix); also ``sun`` (sharp-edged
   shadows), ``folded`` (the sheet's fold lines stand up) and ``curled`` (a rolled sheet's ends lift off the
   table), both ``_lift``.
4. ``spoil``: unusable photos (``blurred``, ``dark``, ``cut_off``, ``hand``, ``no_form``; also ``pen``, a pen
   left lying across the boxes).

``make_sample`` chains these; the result carries what was written (the truth for the reader).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from inference import handwriting
from inference.render import Tally, page_style, render_page
from inference.templates import PageTemplate, load_form

__all__ = [
    "CONDITIONS",
    "EXTRA_CONDITIONS",
    "SPOILS",
    "EXTRA_SPOILS",
    "Sample",
    "make_tps",
    "fill_page",
    "draw_tallies",
    "tally_counts",
    "photograph",
    "spoil",
    "make_sample",
    "SENSOR",
]

SENSOR = (4608, 2592)  # Raspberry Pi Camera Module 3, full-resolution still (w, h)
CONDITIONS = ("clean", "field", "hard")  # the mix the tests, benchmarks and training data cycle through
# also available: "sun", field conditions under a sharp-edged shadow (sun through a gap in a tent, a pole);
# "folded", field conditions on a plano sheet that does not lie flat (its fold lines stand up: the middle of
# the page moves by millimetres against the corner markers, and the slopes take the light differently);
# "curled", the same for a sheet that was rolled: its ends lift off the table, corner markers and all;
# "lens", field conditions through a lens with radial distortion (straight lines bow: what a homography from
# the corner markers cannot undo)
EXTRA_CONDITIONS = ("sun", "folded", "curled", "lens")
SPOILS = ("blurred", "dark", "cut_off", "hand", "no_form")  # the mix the benchmark cycles through
EXTRA_SPOILS = ("pen",)  # also: a ballpoint pen left lying across the boxes
INKS = {"blue": (150, 60, 25), "black": (35, 35, 40)}  # BGR


@dataclass
class Sample:
    """One generated photo and its truth."""

    image: np.ndarray  # BGR photo
    jpeg: bytes
    page: int | None  # page number shown (None for no_form)
    written: dict[str, int | None]  # what the KPPS wrote in the boxes (None = left blank)
    bubbles: dict[str, int | None] = field(default_factory=dict)  # value blackened in the bubbles
    condition: str = "clean"
    spoiled: str | None = None
    slip: str | None = None  # the rule the KPPS broke, if any
    homography: np.ndarray | None = None  # page mm -> photo px
    px_per_mm: float = 0.0


def _split(total: int, n: int, rng: np.random.Generator, cap: int | None = None) -> list[int]:
    w = rng.dirichlet(np.ones(n))
    parts = np.floor(w * total).astype(int)
    parts[int(rng.integers(n))] += total - parts.sum()
    if cap is not None:
        for _ in range(50):
            over = np.argmax(parts)
            if parts[over] <= cap:
                break
            under = np.argmin(parts)
            move = min(parts[over] - cap, cap - parts[under])
            parts[over] -= move
            parts[under] += move
    return [int(p) for p in parts]


def _tally_rows(votes: int, per_row: int = 60, rows: int = 5) -> list[int | None]:
    """Row sums of a tally grid filled row by row (12 cells of 5 strokes = 60 per row), unused rows empty."""
    out: list[int | None] = []
    left = votes
    for k in range(rows):
        if left <= 0 and k > 0:
            out.append(None)
            continue
        take = min(per_row, left) if k < rows - 1 else left
        out.append(take)
        left -= take
    return out


def make_tps(
    rng: np.random.Generator, *, slip: bool = False, row_sums: float = 0.5
) -> tuple[dict[int, dict[str, int | None]], dict[str, int | None], str | None]:
    """Numbers of one TPS: ``(pages {1,2,3: {field: value}}, bubbles {field: value}, slip rule or None)``."""
    dpt = int(rng.integers(120, 301))
    dpt_l = int(rng.binomial(dpt, 0.5))
    v: dict[str, int | None] = {"dpt_l": dpt_l, "dpt_p": dpt - dpt_l, "dpt_jml": dpt}
    turnout = rng.uniform(0.6, 0.9)
    for part in ("l", "p"):
        v[f"pengguna_dpt_{part}"] = int(rng.binomial(v[f"dpt_{part}"], turnout))
        v[f"pengguna_dptb_{part}"] = int(rng.integers(0, 6)) if rng.random() < 0.6 else 0
        v[f"pengguna_dpk_{part}"] = int(rng.integers(0, 6)) if rng.random() < 0.6 else 0
        v[f"pengguna_total_{part}"] = sum(v[f"pengguna_{s}_{part}"] for s in ("dpt", "dptb", "dpk"))
        v[f"disabilitas_{part}"] = int(rng.integers(0, 4))
    for base in ("pengguna_dpt", "pengguna_dptb", "pengguna_dpk", "pengguna_total", "disabilitas"):
        v[f"{base}_jml"] = v[f"{base}_l"] + v[f"{base}_p"]
    used = v["pengguna_total_jml"]
    received = dpt + int(np.ceil(dpt * 0.02))
    returned = int(rng.integers(0, 4))
    received = max(received, used + returned)
    v.update(
        surat_diterima=received,
        surat_digunakan=used,
        surat_dikembalikan=returned,
        surat_tidak_digunakan=received - used - returned,
    )
    invalid = int(rng.integers(0, 9))
    valid = used - invalid
    pas = _split(valid, 3, rng)
    p2: dict[str, int | None] = {}
    for n, votes in enumerate(pas, start=1):
        p2[f"paslon_{n}"] = votes
        rows = _tally_rows(votes) if rng.random() < row_sums else [None] * 5
        for k, r in enumerate(rows, start=1):
            p2[f"paslon_{n}_baris_{k}"] = r
    p3: dict[str, int | None] = {
        "suara_sah": valid,
        "suara_tidak_sah": invalid,
        "total_suara": used,
        "tanggal": int(rng.choice([14, 14, 15])),
        "bulan": 2,
        "tahun": 2024,
    }
    rows = _tally_rows(invalid) if rng.random() < row_sums else [None] * 5
    for k, r in enumerate(rows, start=1):
        p3[f"suara_tidak_sah_baris_{k}"] = r
    bubbles: dict[str, int | None] = {f"paslon_{n}": p2[f"paslon_{n}"] for n in (1, 2, 3)}
    if rng.random() < 0.08:
        bubbles[f"paslon_{int(rng.integers(1, 4))}"] = None  # KPPS forgot to blacken them
    pages = {1: v, 2: p2, 3: p3}
    rule = None
    if slip:
        kind = int(rng.integers(0, 6))
        delta = int(rng.choice([-10, -2, -1, 1, 2, 10]))

        def bump(page: int, name: str) -> None:
            old = pages[page][name] or 0
            pages[page][name] = old + delta if 0 <= old + delta <= 999 else old - delta

        if kind == 0:
            bump(1, "dpt_jml")
            rule = "dpt_l + dpt_p = dpt_jml"
        elif kind == 1:
            bump(1, "pengguna_total_jml")
            rule = "pengguna_dpt_jml + pengguna_dptb_jml + pengguna_dpk_jml = pengguna_total_jml"
        elif kind == 2:
            bump(1, "surat_tidak_digunakan")
            rule = "surat_digunakan + surat_dikembalikan + surat_tidak_digunakan = surat_diterima"
        elif kind == 3:
            bump(3, "total_suara")
            rule = "suara_sah + suara_tidak_sah = total_suara"
        elif kind == 4:  # a paslon total that no longer adds up to V.A (caught across pages)
            n = int(rng.integers(1, 4))
            bump(2, f"paslon_{n}")
            bubbles[f"paslon_{n}"] = pages[2][f"paslon_{n}"]
            for k in range(1, 6):
                pages[2][f"paslon_{n}_baris_{k}"] = None
            rule = "suara_sah = paslon_1 + paslon_2 + paslon_3"
        else:  # bubbles blackened for another number than the boxes
            n = int(rng.integers(1, 4))
            old = pages[2][f"paslon_{n}"] or 0
            bubbles[f"paslon_{n}"] = old + delta if 0 <= old + delta <= 999 else old - delta
            rule = f"paslon_{n} kotak = bulatan"
    return pages, bubbles, rule


def _blend_ink(img: np.ndarray, x: int, y: int, cov: np.ndarray, ink: tuple[int, int, int]) -> None:
    """Multiply ink coverage (0..1) into the BGR image at (x, y), clipped to the image."""
    h, w = cov.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, img.shape[1]), min(y + h, img.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    c = cov[y0 - y : y1 - y, x0 - x : x1 - x, None]
    region = img[y0:y1, x0:x1].astype(np.float32)
    inkf = np.asarray(ink, np.float32)
    region = region * (1 - c) + np.minimum(region, inkf) * c
    img[y0:y1, x0:x1] = np.clip(region, 0, 255).astype(np.uint8)


TALLY_STYLES = ("turus", "kotak")


def tally_counts(tally: Tally, written: dict[str, int | None]) -> list[int]:
    """Strokes per grid row: the written row sums, or the written total filled row by row where the KPPS left
    the row sums blank (the count itself is always tallied)."""
    rows = [written.get(n) for n in tally.row_fields]
    per_row = tally.cols * tally.per_cell
    if any(r is not None for r in rows) and len(rows) == tally.rows:
        counts = [int(r or 0) for r in rows]
    else:
        total = written.get(tally.total)
        counts = [int(r or 0) for r in _tally_rows(int(total or 0), per_row=per_row, rows=tally.rows)]
    return [min(max(c, 0), per_row) for c in counts]


def _stroke(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, bend: float) -> np.ndarray:
    """A slightly bowed pen stroke from a to b (mm), 7 points."""
    t = np.linspace(0, 1, 7)[:, None]
    d = b - a
    normal = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-6)
    bow = rng.normal(0, bend) * np.sin(np.pi * t)
    return a + d * t + bow * normal


def _cell_strokes(
    n: int, cx: float, cy: float, w: float, h: float, rng: np.random.Generator, style: str, slant: float
) -> list[np.ndarray]:
    """Strokes (mm) of one tally group of ``n`` <= 5 centred at (cx, cy) in a cell of w x h mm."""
    hh = h * rng.uniform(0.5, 0.72) / 2
    j = 0.06 * h  # endpoint jitter
    out = []
    if style == "kotak":  # square: left, top, right, bottom, then the diagonal
        hw = min(w * 0.3, hh * rng.uniform(0.9, 1.15))
        c = np.array([[cx - hw, cy + hh], [cx - hw, cy - hh], [cx + hw, cy - hh], [cx + hw, cy + hh]])
        sides = [(0, 1), (1, 2), (2, 3), (3, 0), (0, 2)]
        for k in range(n):
            i0, i1 = sides[k]
            a, b = c[i0] + rng.normal(0, j, 2), c[i1] + rng.normal(0, j, 2)
            out.append(_stroke(a, b, rng, 0.03 * h))
        return out
    gap = min(w * 0.17, hh * rng.uniform(0.45, 0.6))  # turus: four strokes, the fifth across them
    x0 = cx - 1.5 * gap
    for k in range(min(n, 4)):
        x = x0 + k * gap + rng.normal(0, 0.08 * gap)
        top = np.array([x + slant * hh, cy - hh]) + rng.normal(0, j, 2)
        bot = np.array([x - slant * hh, cy + hh]) + rng.normal(0, j, 2)
        out.append(_stroke(top, bot, rng, 0.03 * h))
    if n == 5:
        a = np.array([x0 - gap * rng.uniform(0.3, 0.8), cy + hh * rng.uniform(0.2, 0.7)])
        b = np.array([x0 + 3 * gap + gap * rng.uniform(0.3, 0.8), cy - hh * rng.uniform(0.2, 0.7)])
        out.append(_stroke(a + rng.normal(0, j, 2), b + rng.normal(0, j, 2), rng, 0.04 * h))
    return out


def draw_tallies(
    img: np.ndarray,
    page: PageTemplate,
    written: dict[str, int | None],
    *,
    px_per_mm: float,
    rng: np.random.Generator,
    color: tuple[int, int, int],
    pen_mm: float = 0.5,
    style: str | None = None,
) -> None:
    """Handwrite the tally marks of every tally grid of ``page`` (``tally_counts``) into ``img`` (BGR)."""
    s = px_per_mm
    f = max(2, int(np.ceil(8.0 / s)))  # supersampling factor: strokes drawn at >= 8 px/mm
    style = style or str(rng.choice(TALLY_STYLES, p=[0.75, 0.25]))
    slant = float(rng.normal(0.05, 0.08))
    for tally in page_style(page).tallies:
        counts = tally_counts(tally, written)
        if not any(counts):
            continue
        g = tally.grid
        x0, y0 = int(np.floor((g.x - 2) * s)), int(np.floor((g.y - 2) * s))
        x1, y1 = int(np.ceil((g.x + g.w + 2) * s)), int(np.ceil((g.y + g.h + 2) * s))
        cov = np.zeros(((y1 - y0) * f, (x1 - x0) * f), np.float32)
        r = s * f  # px per mm on the canvas
        paths = []
        for row, n in enumerate(counts):
            for col in range(int(np.ceil(n / tally.per_cell))):
                c = tally.cell(row, col)
                k = min(tally.per_cell, n - col * tally.per_cell)
                cx = c.x + c.w / 2 + rng.normal(0, 0.05 * c.w)
                cy = c.y + c.h / 2 + rng.normal(0, 0.05 * c.h)
                paths += _cell_strokes(k, cx, cy, c.w, c.h, rng, style, slant)
        shift = 4
        pts = [
            np.round(((p - (x0 / s, y0 / s)) * r) * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
            for p in paths
        ]
        cv2.polylines(cov, pts, False, 1.0, max(1, int(round(pen_mm * r))), cv2.LINE_AA, shift)
        cov = cv2.resize(cov, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        _blend_ink(img, x0, y0, np.clip(cov, 0, 1) * rng.uniform(0.8, 1.0), color)


def _child(rng: np.random.Generator) -> np.random.Generator:
    """``rng.spawn(1)[0]`` (numpy >= 1.25), also on numpy 1.24 (Raspberry Pi OS bookworm's apt numpy): the
    same child stream, from the generator's seed sequence."""
    if hasattr(rng, "spawn"):
        return rng.spawn(1)[0]
    bits = rng.bit_generator
    return np.random.Generator(type(bits)(bits._seed_seq.spawn(1)[0]))


def fill_page(
    page: PageTemplate,
    written: dict[str, int | None],
    *,
    px_per_mm: float,
    rng: np.random.Generator,
    bubbles: dict[str, int | None] | None = None,
    ink: str | None = None,
    style: str | None = None,
    leading: str | None = None,
    tallies: bool = True,
) -> np.ndarray:
    """The blank page (BGR) with ``written`` numbers handwritten in their boxes, ``bubbles`` blackened and
    (``tallies``) the count tallied in the tally grids."""
    s = px_per_mm
    gray = render_page(page, px_per_mm=s)
    img = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    tint = np.array([rng.uniform(225, 245), rng.uniform(238, 250), rng.uniform(240, 252)], np.float32) / 255
    img = (img.astype(np.float32) * tint).astype(np.uint8)
    ink_name = ink or str(rng.choice(list(INKS)))
    color = INKS[ink_name]
    writer = handwriting.Writer.random(rng, style=style)
    lead = leading or str(rng.choice(["blank", "blank", "x", "dash", "zero", "zero"]))
    for f in page.fields:
        value = written.get(f.name)
        if value is None:
            continue
        bh = f.boxes[0].h
        height = max(8, int(round(bh * s * rng.uniform(0.5, 0.72))))
        glyphs = handwriting.render_number(
            int(value), len(f.boxes), height_px=height, rng=rng, writer=writer, leading=lead
        )
        for b, g in zip(f.boxes, glyphs, strict=True):
            if g is None:
                continue
            cx = (b.x + b.w / 2 + rng.normal(0, 0.08) * b.w) * s
            cy = (b.y + b.h / 2 + rng.normal(0, 0.06) * b.h) * s
            _blend_ink(
                img, int(cx - g.shape[1] / 2), int(cy - g.shape[0] / 2), g * rng.uniform(0.8, 1.0), color
            )
    for name, value in (bubbles or {}).items():
        f = page.by_name.get(name)
        if f is None or value is None or not f.bubbles:
            continue
        digits = str(int(value)).zfill(len(f.boxes))
        for col, ch in zip(f.bubbles, digits, strict=True):
            bb = col[int(ch)]
            r = bb.r * s
            size = int(2 * r + 6)
            cov = np.zeros((size, size), np.float32)
            cv2.ellipse(
                cov,
                (size // 2, size // 2),
                (int(r * rng.uniform(0.75, 1.0)), int(r * rng.uniform(0.75, 1.0))),
                rng.uniform(0, 180),
                0,
                360,
                1.0,
                -1,
                cv2.LINE_AA,
            )
            cov *= rng.uniform(0.75, 0.95)
            ox, oy = rng.normal(0, 0.08 * r, 2)
            _blend_ink(img, int(bb.cx * s - size / 2 + ox), int(bb.cy * s - size / 2 + oy), cov, color)
    if tallies:  # own child generator: the rest of the photo is drawn from the same stream as without tallies
        pen = float(np.clip(writer.thickness_frac * 12.0, 0.35, 1.0))
        draw_tallies(img, page, written, px_per_mm=s, rng=_child(rng), color=color, pen_mm=pen)
    return img


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A table top: brownish or grey with a soft grain."""
    base = np.array(rng.choice([(70, 100, 140), (90, 90, 95), (60, 80, 110), (120, 130, 140)]), np.float32)
    small = rng.normal(0, 12, (max(2, h // 64), max(2, w // 64), 1)).astype(np.float32)
    grain = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
    return np.clip(base + grain, 0, 255).astype(np.uint8)


_COND = {  # wobble, rotation sd (deg), light, shadow p, glare p, blur sigma (mm), noise sd, jpeg quality
    "clean": dict(persp=0.004, rot=0.8, light=0.05, shadow=0.0, glare=0.0, blur=0.0, noise=1.5, q=(92, 95)),
    "field": dict(
        persp=0.012, rot=2.0, light=0.18, shadow=0.35, glare=0.15, blur=0.08, noise=3.0, q=(80, 92)
    ),
    "hard": dict(persp=0.018, rot=2.5, light=0.3, shadow=0.6, glare=0.35, blur=0.16, noise=5.0, q=(70, 85)),
    "sun": dict(
        persp=0.012, rot=2.0, light=0.18, shadow=0.0, glare=0.15, blur=0.08, noise=3.0, q=(80, 92), sun=1.0
    ),
    "folded": dict(
        persp=0.012, rot=2.0, light=0.18, shadow=0.35, glare=0.15, blur=0.08, noise=3.0, q=(80, 92),
        lift="folded"
    ),
    "curled": dict(
        persp=0.012, rot=2.0, light=0.18, shadow=0.35, glare=0.15, blur=0.08, noise=3.0, q=(80, 92),
        lift="curled"
    ),
    "lens": dict(
        persp=0.012, rot=2.0, light=0.18, shadow=0.35, glare=0.15, blur=0.08, noise=3.0, q=(80, 92),
        lens=(-0.06, 0.03)
    ),
}
LENS_HFOV_DEG = 66.0  # Camera Module 3 (standard lens), horizontal field of view
STAND_HEIGHT_MM = 750.0  # camera above the table: a 66-degree lens sees the 900 mm page at fill 0.92


def page_homography(
    page: PageTemplate,
    *,
    sensor: tuple[int, int],
    rng: np.random.Generator,
    persp: float,
    rot_deg: float,
    upside_down: bool,
    fill: float = 0.92,
    shift: tuple[float, float] = (0, 0),
) -> np.ndarray:
    """Page mm -> photo px: page turned to lie along the sensor's long side, wobbled."""
    w, h = sensor
    pw, ph = page.size_mm
    ppm = min(w / ph, h / pw) * fill  # px per mm: the page's long side along the sensor's width
    ang = np.deg2rad((90 if not upside_down else -90) + rng.normal(0, rot_deg))
    c, s_ = np.cos(ang), np.sin(ang)
    corners = np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], np.float64) - (pw / 2, ph / 2)
    pts = corners @ np.array([[c, s_], [-s_, c]]) * ppm + (w / 2 + shift[0] * w, h / 2 + shift[1] * h)
    pts += rng.normal(0, persp * ppm * max(pw, ph) / 2, pts.shape)
    src = np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], np.float32)
    return cv2.getPerspectiveTransform(src, pts.astype(np.float32))


def _light(
    img: np.ndarray,
    rng: np.random.Generator,
    *,
    amount: float,
    shadow: float,
    glare: float,
    sun: float = 0.0,
) -> np.ndarray:
    h, w = img.shape[:2]
    out = img.astype(np.float32)
    gy, gx = np.mgrid[0:8, 0:8].astype(np.float32) / 7
    a, b = rng.normal(0, amount, 2)
    field_ = (
        1
        + a * (gx - 0.5)
        + b * (gy - 0.5)
        - amount * 0.5 * ((gx - rng.random()) ** 2 + (gy - rng.random()) ** 2)
    )
    field_ = field_ / field_.max() * rng.uniform(0.82, 0.97)  # auto exposure keeps the paper below white
    gain = cv2.resize(field_.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    out *= gain[..., None]
    if rng.random() < shadow:  # the KPPS member's shadow or the stand's arm
        mask = np.zeros((h // 8, w // 8), np.float32)
        x0 = int(rng.uniform(0, w // 8))
        pts = np.array(
            [
                [x0, 0],
                [x0 + rng.uniform(20, w // 16), 0],
                [x0 + rng.uniform(-20, 40), h // 8],
                [x0 - rng.uniform(0, 30), h // 8],
            ],
            np.int32,
        )
        cv2.fillPoly(mask, [pts], 1.0)
        mask = cv2.GaussianBlur(mask, (0, 0), 6)
        mask = cv2.resize(mask, (w, h))
        out *= (1 - rng.uniform(0.2, 0.45) * mask)[..., None]
    if sun and rng.random() < sun:  # sunlight through a gap: straight edges, a penumbra of a few px
        a = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        d = np.cos(a) * (xx - rng.uniform(0.2, 0.8) * w) + np.sin(a) * (yy - rng.uniform(0.2, 0.8) * h)
        pen = rng.uniform(1.0, 8.0)
        mask = np.clip(0.5 + d / pen, 0.0, 1.0)
        if rng.random() < 0.5:  # a band of shade (a pole, a rope) rather than a half
            mask = np.minimum(mask, np.clip(0.5 + (rng.uniform(40, 300) - d) / pen, 0.0, 1.0))
        out *= (1 - rng.uniform(0.3, 0.5) * mask)[..., None]
    if rng.random() < glare:  # a soft specular spot
        mask = np.zeros((h // 8, w // 8), np.float32)
        cv2.circle(
            mask, (int(rng.uniform(0, w // 8)), int(rng.uniform(0, h // 8))), int(rng.uniform(8, 25)), 1.0, -1
        )
        mask = cv2.GaussianBlur(mask, (0, 0), 8)
        mask = cv2.resize(mask, (w, h))
        out += (rng.uniform(40, 90) * mask)[..., None]
    return out


def _lift(photo: np.ndarray, hmm: np.ndarray, page: PageTemplate, rng: np.random.Generator, *,
          curl: bool = False) -> np.ndarray:
    """The page as a plano sheet that does not lie flat. Folded for transport (``curl`` False): fold lines
    (across the long side at its half and often its quarters, sometimes across the short side at its half)
    stand up as ridges 3-12 mm high and 60-160 mm wide, the corners stay on the table. Rolled (``curl``):
    the ends of the roll (the short edges, both or one) lift 8-30 mm, the lift fading out over 50-140 mm, so
    the corner markers themselves stand off the table. A point at height z is seen (pinhole camera
    STAND_HEIGHT_MM above the table, over the photo's centre) moved away from the centre by z / (H - z) of
    its distance, and a slope facing the light is brighter than one facing away."""
    h, w = photo.shape[:2]
    pw, ph = page.size_mm
    step = 4  # the height map is smooth: work on a coarse grid, resize
    gy, gx = np.mgrid[0:h:step, 0:w:step].astype(np.float32)
    mm = cv2.perspectiveTransform(np.dstack([gx, gy]).reshape(-1, 1, 2).astype(np.float64),
                                  np.linalg.inv(hmm)).reshape(gx.shape + (2,))
    x, y = mm[..., 0], mm[..., 1]
    z = np.zeros_like(gx)
    (long, n_long), (short, n_short) = ((x, pw), (y, ph)) if pw > ph else ((y, ph), (x, pw))
    if curl:
        ends = [long, n_long - long]  # distance from each short edge
        if rng.random() >= 0.7:
            ends = [ends[int(rng.integers(2))]]
        for d in ends:
            height, width = rng.uniform(8.0, 30.0), rng.uniform(50.0, 140.0)
            z = np.maximum(z, height * np.clip(1.0 - d / width, 0.0, 1.0) ** 2)
    else:
        folds = [(long, n_long * 0.5)] + [(long, n_long * f) for f in (0.25, 0.75) if rng.random() < 0.6]
        if rng.random() < 0.5:
            folds.append((short, n_short * 0.5))
        for coord, at in folds:
            height, width = rng.uniform(3.0, 12.0), rng.uniform(60.0, 160.0)
            z = np.maximum(z, height * np.clip(1.0 - np.abs(coord - at) / (width / 2), 0.0, 1.0) ** 1.5)
    on_page = (x >= 0) & (x <= pw) & (y >= 0) & (y <= ph)
    z = np.where(on_page, z, 0.0).astype(np.float32)
    cx, cy = w / 2, h / 2
    k = (STAND_HEIGHT_MM - z) / STAND_HEIGHT_MM  # where the point seen at q lies on the table plane
    map_x = cv2.resize(cx + (gx - cx) * k, (w, h), interpolation=cv2.INTER_LINEAR)
    map_y = cv2.resize(cy + (gy - cy) * k, (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.remap(photo, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    ppm = float(np.sqrt(abs(np.linalg.det(hmm[:2, :2]))))
    dzy, dzx = np.gradient(z, step / ppm)  # slope (mm per mm) in photo directions
    a = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.5, 1.5) * (np.cos(a) * dzx + np.sin(a) * dzy)
    light = cv2.resize(np.clip(light, 0.6, 1.3).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(out.astype(np.float32) * (light[..., None] if out.ndim == 3 else light), 0, 255).astype(
        np.uint8)


def _lens(photo: np.ndarray, k1: float) -> np.ndarray:
    """The photo through a lens with radial distortion ``k1`` (Brown's model, r_d = r (1 + k1 r^2), r in
    focal lengths from the centre; negative: barrel). At the frame's corner (r = 0.75 for LENS_HFOV_DEG) a
    point moves by k1 * 0.56 of its distance: -0.06 is 3.4% inward, a cheap wide lens; +0.03 1.7% outward."""
    h, w = photo.shape[:2]
    f = (w / 2) / np.tan(np.deg2rad(LENS_HFOV_DEG / 2))
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    xd, yd = (gx - w / 2) / f, (gy - h / 2) / f
    rd2 = xd * xd + yd * yd
    s = np.ones_like(rd2)  # r_u = r_d / (1 + k1 r_u^2): a few fixed-point steps
    for _ in range(5):
        s = 1.0 / (1.0 + k1 * rd2 * s * s)
    map_x, map_y = (w / 2 + xd * s * f).astype(np.float32), (h / 2 + yd * s * f).astype(np.float32)
    return cv2.remap(photo, map_x, map_y, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def photograph(
    page_img: np.ndarray,
    page: PageTemplate,
    *,
    src_px_per_mm: float,
    rng: np.random.Generator,
    condition: str = "field",
    scale: float = 1.0,
    upside_down: bool | None = None,
    homography: np.ndarray | None = None,
) -> tuple[np.ndarray, bytes, np.ndarray]:
    """Photograph a filled page: returns ``(BGR photo, JPEG bytes, homography page mm -> photo px)``."""
    if condition not in _COND:
        raise ValueError(f"condition must be one of {CONDITIONS + EXTRA_CONDITIONS}, got {condition!r}")
    c = _COND[condition]
    w, h = int(SENSOR[0] * scale), int(SENSOR[1] * scale)
    if upside_down is None:
        upside_down = bool(rng.random() < 0.25)
    hmm = (
        homography
        if homography is not None
        else page_homography(
            page, sensor=(w, h), rng=rng, persp=c["persp"], rot_deg=c["rot"], upside_down=upside_down
        )
    )
    to_src = np.diag([src_px_per_mm, src_px_per_mm, 1.0])
    hpx = hmm @ np.linalg.inv(to_src)
    bg = _background(h, w, rng)
    photo = cv2.warpPerspective(
        page_img, hpx, (w, h), dst=bg, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_TRANSPARENT
    )
    if c.get("lift"):
        photo = _lift(photo, hmm, page, rng, curl=c["lift"] == "curled")
    if c.get("lens"):
        photo = _lens(photo, float(rng.uniform(*c["lens"])))
    out = _light(photo, rng, amount=c["light"], shadow=c["shadow"], glare=c["glare"], sun=c.get("sun", 0.0))
    ppm = float(np.sqrt(abs(np.linalg.det(hmm[:2, :2]))))
    blur = c["blur"] * ppm * rng.uniform(0.3, 1.0) if c["blur"] else 0.0
    if blur > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), blur)
    if c["noise"]:
        out += rng.standard_normal(out.shape, dtype=np.float32) * c["noise"]
    photo = np.clip(out, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(*c["q"]))])
    jpeg = buf.tobytes()
    return cv2.imdecode(buf, cv2.IMREAD_COLOR), jpeg, hmm


def _hand(img: np.ndarray, rng: np.random.Generator, hmm: np.ndarray, page: PageTemplate) -> None:
    """A hand (palm and fingers, skin tone) over the boxes."""
    f = page.fields[int(rng.integers(len(page.fields)))]
    b = f.boxes[0]
    cx, cy = cv2.perspectiveTransform(np.float32([[b.center]]), hmm)[0, 0]
    ppm = float(np.sqrt(abs(np.linalg.det(hmm[:2, :2]))))
    skin = tuple(int(v) for v in rng.choice([(90, 130, 190), (70, 110, 160), (120, 160, 215)]))
    ang = rng.uniform(0, 360)
    cv2.ellipse(img, (int(cx), int(cy)), (int(60 * ppm), int(45 * ppm)), ang, 0, 360, skin, -1, cv2.LINE_AA)
    for k in range(4):
        a = np.deg2rad(ang - 30 + 20 * k)
        x2, y2 = cx + np.cos(a) * 120 * ppm, cy + np.sin(a) * 120 * ppm
        cv2.line(img, (int(cx), int(cy)), (int(x2), int(y2)), skin, int(18 * ppm), cv2.LINE_AA)


def _pen(img: np.ndarray, rng: np.random.Generator, hmm: np.ndarray, page: PageTemplate) -> None:
    """A ballpoint pen (dark barrel 7-10 mm wide, 130-150 mm long, a lighter highlight along it) left lying
    across a box."""
    f = [f for f in page.fields if f.boxes][int(rng.integers(sum(1 for f in page.fields if f.boxes)))]
    b = f.boxes[int(rng.integers(len(f.boxes)))]
    c = np.array([b.x + rng.uniform(0.2, 0.8) * b.w, b.y + rng.uniform(0.2, 0.8) * b.h])
    a = rng.uniform(0, np.pi)
    along, across = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    length, width = rng.uniform(130, 150), rng.uniform(7, 10)
    body = tuple(int(v) for v in rng.choice([(120, 40, 20), (30, 30, 30), (110, 35, 35)]))  # BGR: blue, black

    def band(w0: float, w1: float) -> np.ndarray:
        pts = [c - along * length / 2 + across * w0, c + along * length / 2 + across * w0,
               c + along * length / 2 + across * w1, c - along * length / 2 + across * w1]
        return cv2.perspectiveTransform(np.float64([pts]), hmm)[0].astype(np.int32)

    cv2.fillConvexPoly(img, band(-width / 2, width / 2), body, cv2.LINE_AA)
    shine = tuple(min(255, int(v * 1.6) + 30) for v in body)
    cv2.fillConvexPoly(img, band(-width * 0.25, -width * 0.1), shine, cv2.LINE_AA)


def _cuts_a_marker(hmm: np.ndarray, page: PageTemplate, size: tuple[int, int]) -> bool:
    """Some corner marker lies within one marker square of the photo's edge, or beyond it."""
    pts = cv2.perspectiveTransform(np.float64([page.marker_points]), hmm)[0]
    m = page.marker_square_mm * float(np.sqrt(abs(np.linalg.det(hmm[:2, :2]))))
    return bool(((pts < m) | (pts >= np.array(size) - m)).any())


def spoil(
    kind: str,
    page_img: np.ndarray,
    page: PageTemplate,
    *,
    src_px_per_mm: float,
    rng: np.random.Generator,
    scale: float = 1.0,
) -> tuple[np.ndarray, bytes]:
    """An unusable photo of kind ``blurred``, ``dark``, ``cut_off``, ``hand``, ``no_form`` or ``pen``."""
    if kind not in SPOILS + EXTRA_SPOILS:
        raise ValueError(f"spoil kind must be one of {SPOILS + EXTRA_SPOILS}, got {kind!r}")
    w, h = int(SENSOR[0] * scale), int(SENSOR[1] * scale)
    if kind == "no_form":
        img = _background(h, w, rng)
        for _ in range(int(rng.integers(1, 4))):  # some other paper on the table
            x, y = int(rng.uniform(0, w * 0.7)), int(rng.uniform(0, h * 0.7))
            cv2.rectangle(img, (x, y), (x + int(w * 0.3), y + int(h * 0.3)), (235, 240, 240), -1)
            for k in range(8):
                cv2.line(
                    img, (x + 10, y + 15 + 12 * k), (x + int(w * 0.25), y + 15 + 12 * k), (60, 60, 60), 2
                )
        img = cv2.GaussianBlur(img, (0, 0), 1.0)
    else:
        shift = (0.0, 0.0)
        if kind == "cut_off":
            side = rng.choice([-1, 1])
            shift = (
                (float(side * rng.uniform(0.12, 0.25)), 0.0)
                if rng.random() < 0.5
                else (0.0, float(side * rng.uniform(0.1, 0.2)))
            )
        upside_down = bool(rng.random() < 0.3)
        state = rng.bit_generator.state
        for _ in range(10):
            rng.bit_generator.state = state  # the same wobble, a larger shift
            hmm = page_homography(
                page, sensor=(w, h), rng=rng, persp=0.01, rot_deg=1.5, upside_down=upside_down, shift=shift
            )
            if kind != "cut_off" or _cuts_a_marker(hmm, page, (w, h)):
                break  # a cut-off photo always loses a corner marker (a cut margin alone is still readable)
            shift = (shift[0] * 1.2, shift[1] * 1.2)
        img, _, hmm = photograph(
            page_img,
            page,
            src_px_per_mm=src_px_per_mm,
            rng=rng,
            condition="clean",
            scale=scale,
            homography=hmm,
        )
        if kind == "blurred":
            ppm = float(np.sqrt(abs(np.linalg.det(hmm[:2, :2]))))
            img = cv2.GaussianBlur(img, (0, 0), ppm * rng.uniform(1.5, 3.0))
        elif kind == "dark":
            img = np.clip(
                img.astype(np.float32) * rng.uniform(0.03, 0.08) + rng.normal(0, 1.5, img.shape), 0, 255
            ).astype(np.uint8)
        elif kind == "hand":
            _hand(img, rng, hmm, page)
        elif kind == "pen":
            _pen(img, rng, hmm, page)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR), buf.tobytes()


def box_label(written: int | None, n_boxes: int, box: int) -> int | None:
    """The true class of one box of a generated number: its digit, 10 (empty) for a number left blank, or
    None for an unused leading box (the generator may have written blank, X, dash or 0 there)."""
    if written is None:
        return 10  # inference.digits.EMPTY
    text = str(int(written))
    lead = n_boxes - len(text)
    return None if box < lead else int(text[box - lead])


def make_sample(
    seed: int,
    page_no: int,
    *,
    condition: str = "field",
    scale: float = 0.6,
    tps: tuple[dict, dict, str | None] | None = None,
    spoiled: str | None = None,
    slip: bool = False,
    form_id: str = "C.HASIL-PPWP-2024",
    upside_down: bool | None = None,
) -> Sample:
    """One photo of page ``page_no`` of a generated TPS (``tps`` from ``make_tps`` to share numbers)."""
    rng = np.random.default_rng(seed)
    page = load_form(form_id).pages[page_no]
    pages, bubbles, rule = tps if tps is not None else make_tps(np.random.default_rng(seed + 7), slip=slip)
    written = dict(pages[page_no])
    bub = {k: v for k, v in bubbles.items() if k in page.by_name}
    ppm_photo = min(SENSOR[0] * scale / page.size_mm[1], SENSOR[1] * scale / page.size_mm[0]) * 0.92
    src = min(8.0, max(2.0, ppm_photo * 1.3))
    img = fill_page(page, written, px_per_mm=src, rng=rng, bubbles=bub)
    if spoiled:
        photo, jpeg = spoil(spoiled, img, page, src_px_per_mm=src, rng=rng, scale=scale)
        return Sample(
            image=photo,
            jpeg=jpeg,
            page=None if spoiled == "no_form" else page_no,
            written=written,
            bubbles=bub,
            condition=condition,
            spoiled=spoiled,
            slip=rule,
            px_per_mm=ppm_photo,
        )
    photo, jpeg, hmm = photograph(
        img, page, src_px_per_mm=src, rng=rng, condition=condition, scale=scale, upside_down=upside_down
    )
    return Sample(
        image=photo,
        jpeg=jpeg,
        page=page_no,
        written=written,
        bubbles=bub,
        condition=condition,
        slip=rule,
        homography=hmm,
        px_per_mm=ppm_photo,
    )
