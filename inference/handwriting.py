"""Synthetic ballpoint handwriting for digits and box marks (pure numpy + OpenCV).

Every digit has a few stroke skeletons ("variants") in a unit box (x right, y down, height 1). A skeleton is a
list of strokes; a stroke is a list of smooth pieces (Catmull-Rom through the points) joined at sharp corners.
Rendering jitters the control points, applies an elastic wobble and a random affine (slant, rotation, aspect),
then draws the strokes supersampled with a pen whose width and ink vary a little, and area-downsamples.

The variants cover the ways KPPS write digits: 1 as a plain bar, with a flag, with a flag and a foot; 7 plain,
crossed or hooked; 4 open or closed; 9 with a straight or curved stem; 0 round or pointed; 2 with or without a
loop; 3 round or flat-topped; 8 as one S-loop or two circles.

A *writer style* (``STYLES``) fixes the variant of every digit, as one person would write a whole form;
``style=None`` picks the variant at random. ``style`` may also name a single variant (e.g. ``"flag_foot"``).
Output is float32 ink coverage in 0..1 (1 = full ink), about ``height_px`` tall with a small margin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "STYLES",
    "VARIANTS",
    "MARKS",
    "Writer",
    "render_digit",
    "render_mark",
    "render_number",
    "render_box",
    "shadow_edge",
    "BOX_MM",
]

Piece = list[tuple[float, float]]
Stroke = list[Piece]


def _ellipse(cx: float, cy: float, rx: float, ry: float, start_deg: float, sweep_deg: float, n: int) -> Piece:
    """Points on an ellipse (screen coordinates, y down); negative sweep runs counter-clockwise on screen."""
    t = np.radians(start_deg + np.linspace(0.0, sweep_deg, n))
    return [(cx + rx * float(np.cos(a)), cy + ry * float(np.sin(a))) for a in t]


_LOOP9: Piece = [(0.53, 0.2), (0.4, 0.02), (0.15, 0.04), (0.03, 0.22), (0.15, 0.42), (0.4, 0.42),
                 (0.53, 0.24)]

# digit -> variant -> strokes (unit box, y down, height 1, width about 0.6)
_SKELETONS: dict[int, dict[str, list[Stroke]]] = {
    0: {
        "round": [[_ellipse(0.3, 0.5, 0.28, 0.5, 270, -385, 16)]],
        "pointed": [[[(0.33, 0.0), (0.12, 0.22), (0.03, 0.6), (0.2, 0.97), (0.45, 0.92), (0.58, 0.55),
                      (0.5, 0.2), (0.35, 0.02)]]],
    },
    1: {
        "bar": [[[(0.3, 0.0), (0.29, 0.5), (0.3, 1.0)]]],
        "flag": [[[(0.06, 0.3), (0.3, 0.0)], [(0.3, 0.0), (0.3, 0.5), (0.3, 1.0)]]],
        "flag_foot": [[[(0.06, 0.3), (0.3, 0.0)], [(0.3, 0.0), (0.3, 0.5), (0.3, 1.0)]],
                      [[(0.1, 1.0), (0.52, 0.99)]]],
    },
    2: {
        "curve": [[[(0.04, 0.25), (0.15, 0.05), (0.35, 0.0), (0.55, 0.12), (0.55, 0.35), (0.35, 0.65),
                    (0.02, 1.0)], [(0.02, 1.0), (0.62, 0.98)]]],
        "loop": [[[(0.04, 0.25), (0.15, 0.05), (0.35, 0.0), (0.55, 0.12), (0.55, 0.35), (0.3, 0.7),
                   (0.08, 0.95), (0.06, 0.83), (0.18, 0.84), (0.32, 0.97), (0.62, 0.98)]]],
    },
    3: {
        "round": [[[(0.05, 0.12), (0.25, 0.0), (0.5, 0.05), (0.52, 0.25), (0.25, 0.45)],
                   [(0.25, 0.45), (0.52, 0.6), (0.55, 0.85), (0.35, 1.0), (0.1, 0.97), (0.0, 0.85)]]],
        "flat": [[[(0.05, 0.0), (0.57, 0.0)], [(0.57, 0.0), (0.25, 0.42)],
                  [(0.25, 0.42), (0.5, 0.52), (0.58, 0.78), (0.4, 1.0), (0.1, 0.97), (0.0, 0.85)]]],
    },
    4: {
        "open": [[[(0.16, 0.0), (0.05, 0.62)], [(0.05, 0.62), (0.64, 0.62)]],
                 [[(0.46, 0.04), (0.46, 0.5), (0.45, 1.0)]]],
        "closed": [[[(0.42, 0.0), (0.0, 0.66)], [(0.0, 0.66), (0.64, 0.66)]],
                   [[(0.44, 0.0), (0.45, 0.5), (0.44, 1.0)]]],
    },
    5: {
        "standard": [[[(0.12, 0.02), (0.08, 0.45)],
                      [(0.08, 0.45), (0.3, 0.38), (0.52, 0.5), (0.56, 0.75), (0.4, 0.97), (0.15, 0.98),
                       (0.0, 0.85)]],
                     [[(0.12, 0.02), (0.58, 0.0)]]],
        "one_stroke": [[[(0.58, 0.0), (0.12, 0.02)], [(0.12, 0.02), (0.08, 0.45)],
                        [(0.08, 0.45), (0.3, 0.38), (0.52, 0.5), (0.56, 0.75), (0.4, 0.97), (0.15, 0.98),
                         (0.0, 0.85)]]],
    },
    6: {
        "round": [[[(0.52, 0.03), (0.3, 0.1), (0.1, 0.4), (0.05, 0.7), (0.2, 0.98), (0.45, 0.95),
                    (0.56, 0.75), (0.45, 0.55), (0.2, 0.55), (0.07, 0.7)]]],
        "straight": [[[(0.45, 0.0), (0.15, 0.45), (0.05, 0.75), (0.2, 0.98), (0.45, 0.95), (0.56, 0.75),
                       (0.4, 0.55), (0.15, 0.6)]]],
    },
    7: {
        "plain": [[[(0.0, 0.05), (0.62, 0.03)], [(0.62, 0.03), (0.38, 0.5), (0.22, 1.0)]]],
        "crossed": [[[(0.0, 0.05), (0.62, 0.03)], [(0.62, 0.03), (0.38, 0.5), (0.22, 1.0)]],
                    [[(0.14, 0.52), (0.6, 0.5)]]],
        "hooked": [[[(0.0, 0.2), (0.02, 0.03)], [(0.02, 0.03), (0.62, 0.03)],
                    [(0.62, 0.03), (0.38, 0.5), (0.22, 1.0)]]],
    },
    8: {
        "s_loop": [[[(0.5, 0.1), (0.3, 0.0), (0.08, 0.1), (0.1, 0.3), (0.3, 0.48), (0.52, 0.65), (0.55, 0.88),
                     (0.3, 1.0), (0.05, 0.88), (0.08, 0.65), (0.3, 0.48), (0.5, 0.3), (0.52, 0.12),
                     (0.4, 0.02)]]],
        "two_circles": [[_ellipse(0.3, 0.24, 0.22, 0.24, 90, 370, 12)],
                        [_ellipse(0.3, 0.73, 0.28, 0.27, 270, 370, 12)]],
    },
    9: {
        "straight": [[_LOOP9, [(0.53, 0.24), (0.52, 0.6), (0.5, 1.0)]]],
        "curved": [[_LOOP9, [(0.53, 0.24), (0.52, 0.65), (0.38, 0.96), (0.12, 0.94)]]],
    },
}

VARIANTS: dict[int, tuple[str, ...]] = {d: tuple(v) for d, v in _SKELETONS.items()}

# writer style -> variant per digit (missing digits: random variant)
_STYLE_TABLE: dict[str, dict[int, str]] = {
    "formal_id": {0: "pointed", 1: "flag_foot", 2: "curve", 3: "round", 4: "open", 5: "standard", 6: "round",
                  7: "crossed", 8: "s_loop", 9: "straight"},
    "casual_id": {0: "round", 1: "flag", 2: "curve", 3: "round", 4: "open", 5: "one_stroke", 6: "straight",
                  7: "crossed", 8: "two_circles", 9: "straight"},
    "school": {0: "round", 1: "flag", 2: "loop", 3: "flat", 4: "closed", 5: "standard", 6: "round",
               7: "plain", 8: "s_loop", 9: "curved"},
    "plain": {0: "round", 1: "bar", 2: "curve", 3: "round", 4: "closed", 5: "standard", 6: "round",
              7: "plain", 8: "s_loop", 9: "curved"},
    "mixed": {},
}
STYLES: tuple[str, ...] = tuple(_STYLE_TABLE)
MARKS: tuple[str, ...] = ("x", "dash", "scribble")

_SS = 4  # supersampling factor
_SHIFT = 3  # fractional bits for cv2 coordinates


@dataclass(frozen=True)
class Writer:
    """One person's hand: digit variants, slant, pen width and letter width, kept across a whole form."""

    style: str
    slant: float  # shear, x += slant * (0.5 - y); positive leans right
    thickness_frac: float  # pen width as a fraction of the digit height
    width_scale: float

    @classmethod
    def random(cls, rng: np.random.Generator, *, style: str | None = None) -> Writer:
        if style is None:
            style = str(rng.choice(STYLES))
        if style not in _STYLE_TABLE:
            raise ValueError(f"unknown writer style {style!r}; choose one of {STYLES}")
        return cls(style=style, slant=float(rng.normal(0.12, 0.12)),
                   thickness_frac=float(rng.uniform(0.035, 0.1)), width_scale=float(rng.uniform(0.8, 1.2)))

    def variant(self, digit: int, rng: np.random.Generator) -> str:
        table = _STYLE_TABLE[self.style]
        if digit in table and rng.random() > 0.05:  # people are not perfectly consistent
            return table[digit]
        return str(rng.choice(VARIANTS[digit]))


def _catmull_rom(points: np.ndarray, per_seg: int) -> np.ndarray:
    """Smooth curve through points (centripetal-free uniform Catmull-Rom, end points duplicated)."""
    if len(points) < 3:
        t = np.linspace(0.0, 1.0, per_seg + 1)[:, None]
        return points[0] * (1 - t) + points[-1] * t
    p = np.vstack([points[:1], points, points[-1:]])
    t = np.linspace(0.0, 1.0, per_seg, endpoint=False)[:, None]
    t2, t3 = t * t, t * t * t
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t3))
    out.append(points[-1:])
    return np.vstack(out)


def _stroke_path(stroke: Stroke, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """Sampled path of one stroke; corners stay sharp, control points are jittered consistently."""
    cache: dict[tuple[float, float], np.ndarray] = {}
    parts = []
    for piece in stroke:
        pts = []
        for xy in piece:
            if xy not in cache:  # shared corner points move together
                cache[xy] = np.asarray(xy, dtype=np.float64) + rng.normal(0.0, jitter, 2)
            pts.append(cache[xy])
        arr = np.asarray(pts)
        per_seg = 6 if len(arr) > 2 else 8
        parts.append(_catmull_rom(arr, per_seg))
    return np.vstack(parts)


def _tail(path: np.ndarray, rng: np.random.Generator, size: float) -> np.ndarray:
    """A small ballpoint exit flick at the end of a stroke (sometimes)."""
    if rng.random() > 0.3 or len(path) < 2:
        return path
    d = path[-1] - path[-2]
    n = np.hypot(*d)
    if n < 1e-9:
        return path
    d = d / n
    ang = rng.uniform(-1.2, 1.2)
    c, s = np.cos(ang), np.sin(ang)
    flick = np.array([c * d[0] - s * d[1], s * d[0] + c * d[1]]) * size * rng.uniform(0.3, 1.0)
    return np.vstack([path, path[-1] + flick])


def _draw(paths: Sequence[np.ndarray], *, height_px: int, thickness_px: float, rng: np.random.Generator,
          margin_px: int | None = None,
          fixed_box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Rasterise unit-box paths so their height is about ``height_px``; returns float32 coverage 0..1."""
    allp = np.vstack(paths)
    if fixed_box is None:
        x0, y0 = allp.min(axis=0)
        x1, y1 = allp.max(axis=0)
    else:
        x0, y0, x1, y1 = fixed_box
    span = max(y1 - y0, 1e-3)
    scale = max(height_px - thickness_px, 2.0) / span
    margin = margin_px if margin_px is not None else int(np.ceil(thickness_px / 2 + 1.5))
    w = int(np.ceil((x1 - x0) * scale + 2 * margin))
    h = int(np.ceil((y1 - y0) * scale + 2 * margin))
    w, h = max(w, 3), max(h, 3)
    canvas = np.zeros((h * _SS, w * _SS), np.uint8)
    k = _SS * (1 << _SHIFT)
    for path in paths:
        px = ((path - (x0, y0)) * scale + margin) * k
        ink = int(rng.uniform(0.78, 1.0) * 255)
        # pen width varies a little along the stroke (pressure); draw in chunks
        n = len(px)
        chunk = max(4, n // 3)
        for i in range(0, n - 1, chunk):
            seg = np.round(px[i:min(i + chunk + 1, n)]).astype(np.int32)
            t = max(1, int(round(thickness_px * _SS * rng.uniform(0.85, 1.12))))
            cv2.polylines(canvas, [seg], False, ink, thickness=t, lineType=cv2.LINE_AA, shift=_SHIFT)
    out = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) * (1.0 / 255.0)
    return out


def _transform(paths: list[np.ndarray], rng: np.random.Generator, *, slant: float, width_scale: float,
               rot_sd_deg: float = 4.0, elastic: float = 0.02) -> list[np.ndarray]:
    """Affine (aspect, slant, rotation) plus a smooth elastic wobble, in unit-box coordinates."""
    ang = np.radians(rng.normal(0.0, rot_sd_deg))
    c, s = np.cos(ang), np.sin(ang)
    sx = width_scale * rng.uniform(0.9, 1.1)
    fx, fy = rng.uniform(1.5, 4.0, 2)
    phx, phy = rng.uniform(0, 2 * np.pi, 2)
    ax, ay = rng.normal(0.0, elastic, 2)
    out = []
    for p in paths:
        x = (p[:, 0] - 0.3) * sx
        y = p[:, 1] - 0.5
        x = x + slant * (-y)
        x = x + ax * np.sin(fy * y * np.pi + phx)
        y = y + ay * np.sin(fx * x * np.pi + phy)
        out.append(np.stack([c * x - s * y, s * x + c * y], axis=1))
    return out


def render_digit(digit: int, *, height_px: int, rng: np.random.Generator, style: str | None = None,
                 thickness_px: float | None = None, writer: Writer | None = None) -> np.ndarray:
    """One handwritten digit as float32 ink coverage (0..1), about ``height_px`` tall plus a small margin.

    ``style``: a writer style from ``STYLES``, a variant name of this digit (``VARIANTS[digit]``), or None
    (random variant). ``writer`` (optional) keeps slant/pen/variants consistent across a form.
    """
    if not isinstance(digit, int | np.integer) or not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be an int 0..9, got {digit!r}")
    if height_px < 4:
        raise ValueError(f"height_px must be >= 4, got {height_px}")
    digit = int(digit)
    if writer is None:
        writer = Writer.random(rng, style=style if style in _STYLE_TABLE else "mixed")
    if style is not None and style in VARIANTS[digit]:
        variant = style
    elif style is not None and style not in _STYLE_TABLE:
        raise ValueError(f"unknown style {style!r} for digit {digit}; "
                         f"use one of {STYLES} or {VARIANTS[digit]}")
    else:
        variant = writer.variant(digit, rng)
    if thickness_px is None:
        thickness_px = max(0.8, writer.thickness_frac * height_px * rng.uniform(0.85, 1.15))
    strokes = _SKELETONS[digit][variant]
    paths = [_tail(_stroke_path(st, rng, jitter=0.025), rng, 0.06) for st in strokes]
    paths = _transform(paths, rng, slant=writer.slant + rng.normal(0, 0.04), width_scale=writer.width_scale)
    return _draw(paths, height_px=height_px, thickness_px=thickness_px, rng=rng)


def render_mark(kind: str, *, height_px: int, rng: np.random.Generator,
                thickness_px: float | None = None) -> np.ndarray:
    """A mark KPPS put in unused boxes: ``"x"``, ``"dash"`` (short bar) or ``"scribble"`` (crossed out)."""
    if kind not in MARKS:
        raise ValueError(f"unknown mark {kind!r}; choose one of {MARKS}")
    if height_px < 4:
        raise ValueError(f"height_px must be >= 4, got {height_px}")
    if thickness_px is None:
        thickness_px = max(0.8, rng.uniform(0.035, 0.1) * height_px)
    j = lambda: rng.normal(0.0, 0.04, 2)  # noqa: E731
    if kind == "x":
        w = rng.uniform(0.5, 1.0)
        paths = [np.array([(0, 0) + j(), (w, 1) + j()]), np.array([(w, 0) + j(), (0, 1) + j()])]
        paths = [_catmull_rom(p, 8) for p in paths]
        box = None
    elif kind == "dash":
        w = rng.uniform(0.35, 0.8)
        tilt = rng.normal(0.0, 0.06)
        mid = (w / 2, 0.5 + tilt / 2 + rng.normal(0, 0.01))
        paths = [_catmull_rom(np.array([(0, 0.5), mid, (w, 0.5 + tilt)]), 6)]
        box = True  # a dash is short: place it mid-height in a digit-sized image
    else:
        n = int(rng.integers(6, 12))
        w = rng.uniform(0.5, 0.9)
        ys = np.linspace(0.0, 1.0, n) + rng.normal(0, 0.04, n)
        xs = np.where(np.arange(n) % 2 == 0, 0.0, w) + rng.normal(0, 0.05, n)
        paths = [_catmull_rom(np.stack([xs, ys], axis=1), 4)]
        if rng.random() < 0.5:  # scribbled over a digit: add a loop or two
            paths.append(_catmull_rom(np.array(_ellipse(w / 2, 0.5, w / 2, 0.45, 0, 400, 10)), 4))
        box = None
    paths = _transform(paths, rng, slant=rng.normal(0.05, 0.08), width_scale=1.0, rot_sd_deg=6.0,
                       elastic=0.015)
    fixed = None
    if box:
        allp = np.vstack(paths)
        fixed = (float(allp[:, 0].min()), -0.5, float(allp[:, 0].max()), 0.5)
    return _draw(paths, height_px=height_px, thickness_px=thickness_px, rng=rng, fixed_box=fixed)


def render_number(value: int, n_boxes: int, *, height_px: int, rng: np.random.Generator,
                  writer: Writer | None = None, leading: str = "blank") -> list[np.ndarray | None]:
    """Images for a number written right-aligned into ``n_boxes`` boxes (one per box, left to right).

    ``leading`` says what goes into unused leading boxes: ``"blank"`` (None), ``"zero"`` (digit 0),
    ``"x"``/``"dash"`` (that mark) or ``"random"``.
    """
    text = str(int(value))
    if value < 0 or len(text) > n_boxes:
        raise ValueError(f"{value} does not fit into {n_boxes} boxes")
    if writer is None:
        writer = Writer.random(rng)
    if leading == "random":
        leading = str(rng.choice(["blank", "blank", "zero", "x", "dash"]))
    if leading not in ("blank", "zero", "x", "dash"):
        raise ValueError(f"unknown leading {leading!r}; use blank, zero, x, dash or random")
    out: list[np.ndarray | None] = []
    for _ in range(n_boxes - len(text)):
        if leading == "blank":
            out.append(None)
        elif leading == "zero":
            out.append(render_digit(0, height_px=height_px, rng=rng, writer=writer))
        else:
            out.append(render_mark(leading, height_px=height_px, rng=rng))
    for ch in text:
        out.append(render_digit(int(ch), height_px=height_px, rng=rng, writer=writer))
    return out


# ------------------------------------------------------------------------------------------- boxes (training)

# The 2024 C.HASIL number box, measured on the official PDF: inner 19 mm square, ~1 mm black border, 2.6 mm
# between neighbouring boxes; the writing guide is 0.7 mm gray squares (~20% darkness) in 5 columns x 9 rows
# (2.07 mm x 1.67 mm pitch), columns 0, 2, 4 full height, columns 1 and 3 only in rows 0, 4 and 8.
BOX_MM = 19.0
_GUIDE_PITCH = (2.07, 1.67)
_GUIDE_DOTS = tuple((c, r) for c in range(5) for r in range(9) if c % 2 == 0 or r in (0, 4, 8))
GUIDES = ("official", "outline")


def _guide_dots(kind: str) -> list[tuple[float, float, float]]:
    """(x_mm, y_mm, dot_mm) of a writing guide, relative to the inner box's top-left corner."""
    if kind == "official":
        gx0 = (BOX_MM - 4 * _GUIDE_PITCH[0]) / 2
        gy0 = (BOX_MM - 8 * _GUIDE_PITCH[1]) / 2
        return [(gx0 + c * _GUIDE_PITCH[0], gy0 + r * _GUIDE_PITCH[1], 0.7) for c, r in _GUIDE_DOTS]
    if kind == "outline":
        x0, x1 = 0.28 * BOX_MM, 0.72 * BOX_MM
        y0, ym, y1 = 0.17 * BOX_MM, 0.5 * BOX_MM, 0.83 * BOX_MM
        segs = [((x0, y0), (x1, y0)), ((x0, ym), (x1, ym)), ((x0, y1), (x1, y1)), ((x0, y0), (x0, ym)),
                ((x1, y0), (x1, ym)), ((x0, ym), (x0, y1)), ((x1, ym), (x1, y1))]
        pts = []
        step = BOX_MM / 14
        for (ax, ay), (bx, by) in segs:
            n = max(2, int(np.hypot(bx - ax, by - ay) / step))
            pts += [(ax + (bx - ax) * k / n, ay + (by - ay) * k / n, 0.44) for k in range(n + 1)]
        return pts
    raise ValueError(f"unknown guide {kind!r}; choose one of {GUIDES}")


def render_box(content: np.ndarray | None, *, px_per_mm: float, rng: np.random.Generator,
               height_mm: float = 12.0, center_mm: tuple[float, float] = (0.0, 0.0),
               ink_darkness: float = 0.75, guide: bool | str = True, neighbours: bool = True,
               light: float = 0.2, blur_px: float = 0.5, noise: float = 3.0, jpeg_quality: int = 85,
               cut_mm: tuple[float, float, float, float] | None = None,
               angle_deg: float = 0.0, spill: np.ndarray | None = None) -> np.ndarray:
    """A photographed box crop (uint8 gray, dark ink on light paper) like the page reader cuts.

    ``content``: ink coverage 0..1 of any size (or None for a blank box), scaled to ``height_mm`` and placed
    at ``center_mm`` from the box centre. ``cut_mm``: how far the crop extends beyond the inner box edge
    (left, top, right, bottom; negative cuts into the box); default random in -1..2 mm. ``spill``: ink of a
    neighbouring box's digit, drawn just right of this box.
    """
    r = max(2.0 * px_per_mm, 8.0)  # drawing resolution (px/mm), downsampled to px_per_mm afterwards
    margin = 5.0
    side_mm = BOX_MM + 2 * margin
    n = int(round(side_mm * r))
    paper = float(rng.uniform(175, 245))
    img = np.full((n, n), 1.0, np.float32)  # transmittance; 1 = paper
    c0 = margin * r  # inner box top-left in px
    bw = rng.uniform(0.6, 1.1)
    dark = float(rng.uniform(0.75, 0.95))

    def rect(x0_mm: float, y0_mm: float, x1_mm: float, y1_mm: float) -> None:
        t = max(1, int(round(bw * r)))
        p0 = (int(round(c0 + x0_mm * r - t / 2)), int(round(c0 + y0_mm * r - t / 2)))
        p1 = (int(round(c0 + x1_mm * r + t / 2)), int(round(c0 + y1_mm * r + t / 2)))
        cv2.rectangle(img, p0, p1, 1.0 - dark, thickness=t)

    off = bw / 2
    rect(-off, -off, BOX_MM + off, BOX_MM + off)
    if neighbours:
        gap = 2.6 + bw
        for side in (-1, 1):
            if rng.random() < 0.7:
                x0 = side * (BOX_MM + gap)
                rect(x0 - off, -off, x0 + BOX_MM + off, BOX_MM + off)
    if guide:
        g_dark = float(rng.uniform(0.1, 0.28))
        for x, y, d in _guide_dots("official" if guide is True else str(guide)):
            px, py, dd = c0 + x * r, c0 + y * r, max(0.5, d * r / 2)
            if d >= 0.6:  # square dots (official form)
                p0, p1 = (int(px - dd), int(py - dd)), (int(px + dd), int(py + dd))
                cv2.rectangle(img, p0, p1, 1.0 - g_dark, -1)
            else:
                cv2.circle(img, (int(px), int(py)), int(round(dd)), 1.0 - g_dark, -1, cv2.LINE_AA)

    def place(cov: np.ndarray, h_mm: float, cx_mm: float, cy_mm: float, darkness: float) -> None:
        h_px = max(2, int(round(h_mm * r)))
        s = h_px / cov.shape[0]
        w_px = max(1, int(round(cov.shape[1] * s)))
        cov = cv2.resize(cov, (w_px, h_px), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        x0 = int(round(c0 + (BOX_MM / 2 + cx_mm) * r - w_px / 2))
        y0 = int(round(c0 + (BOX_MM / 2 + cy_mm) * r - h_px / 2))
        xa, ya = max(x0, 0), max(y0, 0)
        xb, yb = min(x0 + w_px, n), min(y0 + h_px, n)
        if xb <= xa or yb <= ya:
            return
        sub = cov[ya - y0:yb - y0, xa - x0:xb - x0]
        img[ya:yb, xa:xb] *= 1.0 - darkness * np.clip(sub, 0.0, 1.0)

    if content is not None:
        place(content, height_mm, center_mm[0], center_mm[1], ink_darkness)
    if spill is not None:
        place(spill, height_mm * rng.uniform(0.8, 1.2), BOX_MM / 2 + 2.6 + rng.uniform(1.0, 6.0),
              rng.normal(0, 1.0), ink_darkness)
    if angle_deg:
        m = cv2.getRotationMatrix2D((c0 + BOX_MM * r / 2, c0 + BOX_MM * r / 2), angle_deg, 1.0)
        img = cv2.warpAffine(img, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # camera sampling
    m_px = int(round(side_mm * px_per_mm))
    img = cv2.resize(img, (m_px, m_px), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[0:m_px, 0:m_px].astype(np.float32) / m_px
    a = rng.uniform(0, 2 * np.pi)
    shade = 1.0 - light * (0.5 + 0.5 * (np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5)) * 2) / 2
    img = img * paper * shade
    if blur_px > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), blur_px)
    if noise > 0:
        img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if cut_mm is None:
        cut_mm = tuple(rng.uniform(-1.0, 2.0, 4))
    left, top, right, bottom = cut_mm
    x0 = int(round((margin - left) * px_per_mm))
    y0 = int(round((margin - top) * px_per_mm))
    x1 = int(round((margin + BOX_MM + right) * px_per_mm))
    y1 = int(round((margin + BOX_MM + bottom) * px_per_mm))
    crop = np.ascontiguousarray(img[max(y0, 0):y1, max(x0, 0):x1])
    if jpeg_quality < 100:
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        crop = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return crop


def shadow_edge(crop: np.ndarray, *, depth: float, penumbra_px: float, angle_deg: float,
                offset_px: float = 0.0) -> np.ndarray:
    """``crop`` (uint8 gray) with a straight shadow edge: sun through a gap in a tent, a hand, the stand.

    The edge passes ``offset_px`` from the crop's centre, its normal at ``angle_deg``; the shadowed side is
    ``depth`` (0..1) darker; ``penumbra_px`` is the width of the soft transition (a sun shadow's is about
    1% of the distance from the object to the paper).
    """
    h, w = crop.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.deg2rad(angle_deg)
    d = np.cos(a) * (xx - w / 2) + np.sin(a) * (yy - h / 2) - offset_px
    shade = 1.0 - depth * np.clip(0.5 + d / max(penumbra_px, 1e-3), 0.0, 1.0)
    return np.clip(np.rint(crop * shade), 0, 255).astype(np.uint8)
