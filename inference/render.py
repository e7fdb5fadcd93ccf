"""The project's own renderer of blank form pages (from the templates) at any resolution.

Draws what the reader relies on — border frames, corner markers, the page code (AprilTag), writing boxes with
their writing guide, OMR bubbles with digits — plus the grey tally grids and some text-like clutter, as a
uint8 gray image. Used by the generator of test photos, the tests and the demo; the official PDF is not
needed at run time.

How each box looks is template data, read here (``page_style``) from the form's ``look.json`` next to the page
templates (the loader in ``inference.templates`` does not need it): per page or field ``guide`` (``"none"``:
plain box, as pages 1 and 3 of the 2024 PPWP form; ``"grey8"``: the official grey 5x9 square-dot "8" of page
2; ``"dots"``: a round-dot 8-segment outline, the default without look data), ``border`` (``"ink"`` or
``"grey"``) and ``border_mm``; per page ``tallies``: the tally grids (``grid_mm``, ``cols``, ``rows``,
``per_cell`` strokes per cell, the ``total`` field and its ``row_fields``).
"""

from __future__ import annotations

import copy
import fnmatch
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from inference.templates import FORMS_DIR, Box, PageTemplate, TemplateError

__all__ = [
    "render_page",
    "draw_box",
    "tag_image",
    "page_style",
    "load_look",
    "BoxStyle",
    "Tally",
    "PageStyle",
    "GUIDES",
    "INK",
    "GUIDE",
    "GREY",
]

INK = 35  # printed black (the PDF's dark brown-black)
GUIDE = 185  # the light round-dot guide ("dots")
GREY = 201  # the official light grey (0.79) of the "grey8" guide, the tally grid and the row-sum cells
GUIDES = ("none", "grey8", "dots")
BORDERS = {"ink": INK, "grey": GREY}
_BOX_KEYS = ("guide", "border", "border_mm")  # look data of a page or field
_TALLY_KEYS = ("total", "grid_mm", "cols", "rows", "per_cell", "row_fields")
# "grey8", measured on the official PDF (page 2, 20 mm boxes): 0.67 x 0.69 mm grey squares in 5 columns x
# 9 rows at 2.067 x 1.66 mm pitch, centred in the box; columns 0, 2, 4 full, columns 1, 3 in rows 0, 4, 8
_GREY8_PITCH = (2.067, 1.66)
_GREY8_DOT = (0.667, 0.689)
_GREY8_CELLS = tuple((c, r) for c in range(5) for r in range(9) if c % 2 == 0 or r in (0, 4, 8))
_SHIFT = 4
_ONE = 1 << _SHIFT

_ARUCO = {
    "apriltag_36h10": "DICT_APRILTAG_36h10",
    "apriltag_36h11": "DICT_APRILTAG_36h11",
    "aruco_4x4_50": "DICT_4X4_50",
}


def aruco_dictionary(family: str):
    return cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, _ARUCO[family]))


def _p(x: float, y: float, s: float) -> tuple[int, int]:
    return (int(round(x * s * _ONE)), int(round(y * s * _ONE)))


def _rect(img: np.ndarray, b: Box, s: float, *, color: int, line_mm: float) -> None:
    t = max(1, int(round(line_mm * s)))
    cv2.rectangle(img, _p(b.x, b.y, s), _p(b.x + b.w, b.y + b.h, s), color, t, cv2.LINE_AA, _SHIFT)


def _cover(a: float, b: float, n: int) -> tuple[int, np.ndarray]:
    """Pixels (centre i covers [i - 0.5, i + 0.5]) touched by the interval [a, b] px: (first, coverage)."""
    i0, i1 = max(0, int(np.floor(a + 0.5))), min(n - 1, int(np.floor(b + 0.5)))
    if i1 < i0:
        return 0, np.zeros(0, np.float32)
    i = np.arange(i0, i1 + 1, dtype=np.float32)
    return i0, np.clip(np.minimum(i + 0.5, b) - np.maximum(i - 0.5, a), 0, 1)


def _band(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, s: float, color: int) -> None:
    """An axis-aligned filled rectangle (mm) with exact area coverage at its edges."""
    cx0, cx = _cover(x0 * s, x1 * s, img.shape[1])
    cy0, cy = _cover(y0 * s, y1 * s, img.shape[0])
    if not cx.size or not cy.size:
        return
    cov = cy[:, None] * cx[None, :]
    region = img[cy0 : cy0 + cy.size, cx0 : cx0 + cx.size]
    region[:] = np.round(region * (1 - cov) + np.minimum(region, color) * cov).astype(np.uint8)


def _border(img: np.ndarray, b: Box, s: float, *, color: int, line_mm: float) -> None:
    """A rectangle outline of exactly ``line_mm`` centred on the box edges (four bands, exact coverage)."""
    h = line_mm / 2
    x0, y0, x1, y1 = b.x - h, b.y - h, b.x + b.w + h, b.y + b.h + h
    _band(img, x0, y0, x1, y0 + line_mm, s, color)
    _band(img, x0, y1 - line_mm, x1, y1, s, color)
    _band(img, x0, y0 + line_mm, x0 + line_mm, y1 - line_mm, s, color)
    _band(img, x1 - line_mm, y0 + line_mm, x1, y1 - line_mm, s, color)


def _guide_points(b: Box) -> list[tuple[float, float]]:
    """Dots of an 8-segment writing guide (the outline of an '8' with a diagonal-free middle bar)."""
    x0, x1 = b.x + 0.28 * b.w, b.x + 0.72 * b.w
    y0, ym, y1 = b.y + 0.17 * b.h, b.y + 0.5 * b.h, b.y + 0.83 * b.h
    segs = [
        ((x0, y0), (x1, y0)),
        ((x0, ym), (x1, ym)),
        ((x0, y1), (x1, y1)),
        ((x0, y0), (x0, ym)),
        ((x1, y0), (x1, ym)),
        ((x0, ym), (x0, y1)),
        ((x1, ym), (x1, y1)),
        ((x0, y1), (x1, y0)),
    ]
    pts = []
    step = max(1.0, b.h / 14)
    for (ax, ay), (bx, by) in segs[:7]:
        n = max(2, int(np.hypot(bx - ax, by - ay) / step))
        pts += [(ax + (bx - ax) * k / n, ay + (by - ay) * k / n) for k in range(n + 1)]
    return pts


def _grey8(img: np.ndarray, b: Box, s: float) -> None:
    k = min(b.w, b.h) / 20.0  # measured on 20 mm boxes
    (px, py), (dw, dh) = _GREY8_PITCH, _GREY8_DOT
    cx, cy = b.x + b.w / 2 - 2 * px * k, b.y + b.h / 2 - 4 * py * k
    for c, r in _GREY8_CELLS:
        x, y = cx + c * px * k, cy + r * py * k
        _band(img, x - dw * k / 2, y - dh * k / 2, x + dw * k / 2, y + dh * k / 2, s, GREY)


def draw_box(
    img: np.ndarray,
    b: Box,
    s: float,
    *,
    guide: bool | str = True,
    line_mm: float = 0.8,
    color: int = INK,
) -> None:
    """One writing box: its border and writing guide (``GUIDES``; True = ``"dots"``, False = ``"none"``)."""
    kind = "dots" if guide is True else "none" if guide is False else guide
    if kind == "dots":
        r = max(1, int(round(0.22 * s * _ONE)))
        for x, y in _guide_points(b):
            cv2.circle(img, _p(x, y, s), r, GUIDE, -1, cv2.LINE_AA, _SHIFT)
    elif kind == "grey8":
        _grey8(img, b, s)
    elif kind != "none":
        raise ValueError(f"guide must be one of {GUIDES} (or True/False), got {guide!r}")
    _border(img, b, s, color=color, line_mm=line_mm)


@dataclass(frozen=True)
class BoxStyle:
    guide: str = "dots"
    border: int = INK  # gray level of the printed border
    border_mm: float = 0.8


@dataclass(frozen=True)
class Tally:
    """A tally grid: ``per_cell`` strokes per cell, filled row by row; ``row_fields`` hold the row sums."""

    total: str
    grid: Box
    cols: int
    rows: int
    per_cell: int
    row_fields: tuple[str, ...]

    def cell(self, row: int, col: int) -> Box:
        w, h = self.grid.w / self.cols, self.grid.h / self.rows
        return Box(self.grid.x + col * w, self.grid.y + row * h, w, h)


@dataclass(frozen=True)
class PageStyle:
    boxes: dict[str, BoxStyle]  # by field name
    tallies: tuple[Tally, ...] = ()


def _default_line_mm(b: Box) -> float:
    return 1.0 if b.w >= 19.5 else 0.8 if b.w >= 15 else 0.5


@lru_cache(maxsize=32)
def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise TemplateError(f"{path} is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise TemplateError(f"{path} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise TemplateError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: expected a JSON object")
    return data


def load_look(form_id: str, forms_dir: Path | str = FORMS_DIR) -> dict:
    """The form's ``look.json`` (how boxes and tally grids are printed), ``{}`` if the form has none.

    A copy: the parsed file is cached, and a caller editing what it gets must not change it for others."""
    return copy.deepcopy(_read_json(Path(forms_dir) / form_id / "look.json") or {})


def page_style(
    page: PageTemplate, look: dict | None = None, *, forms_dir: Path | str | None = None
) -> PageStyle:
    """How the page's boxes and tally grids look.

    From ``look`` (the form's look data, default its ``look.json`` in ``forms_dir``, by default the forms
    folder the page was loaded from): per page defaults (``guide``, ``border``,
    ``border_mm``), per-field overrides under ``fields`` (names or ``fnmatch`` patterns, later wins) and
    ``tallies``. Without look data: round-dot guide, ink border, no tally grid (the renderer's old look)."""
    where = f"{page.form} look, page {page.page}"
    if look is None:
        look = load_look(page.form, page.forms_dir if forms_dir is None else forms_dir)
    pages = look.get("pages") or {}
    if not isinstance(pages, dict):
        raise TemplateError(f"{where}: 'pages' must be a JSON object by page number, got {pages!r}")
    pl = pages.get(str(page.page)) or {}
    if not isinstance(pl, dict):
        raise TemplateError(f"{where}: expected a JSON object, got {pl!r}")
    bad = set(pl) - {*_BOX_KEYS, "fields", "tallies"}
    if bad:
        known = [*_BOX_KEYS, "fields", "tallies"]
        raise TemplateError(f"{where}: unknown keys {sorted(bad)} (known: {known})")
    overrides = pl.get("fields") or {}
    if not isinstance(overrides, dict):
        raise TemplateError(f"{where}: 'fields' must be a JSON object of field names or patterns, "
                            f"got {overrides!r}")
    for pattern, o in overrides.items():
        if not isinstance(o, dict):
            raise TemplateError(f"{where}, fields['{pattern}']: must be a JSON object, got {o!r}")
    unmatched = [p for p in overrides if not any(fnmatch.fnmatchcase(f.name, p) for f in page.fields)]
    if unmatched:
        raise TemplateError(f"{where}, fields: {unmatched} match no field of the page")
    boxes = {}
    for f in page.fields:
        d = {k: pl[k] for k in _BOX_KEYS if k in pl}
        for pattern, o in overrides.items():
            if fnmatch.fnmatchcase(f.name, pattern):
                bad = set(o) - set(_BOX_KEYS)
                if bad:
                    raise TemplateError(f"{where}, fields['{pattern}']: unknown keys {sorted(bad)}")
                d.update(o)
        guide = d.get("guide", "dots")
        if guide not in GUIDES:
            raise TemplateError(f"{where} ('{f.name}'): guide must be one of {GUIDES}, got {guide!r}")
        border = d.get("border", "ink")
        if not isinstance(border, str) or border not in BORDERS:
            raise TemplateError(
                f"{where} ('{f.name}'): border must be one of {tuple(BORDERS)}, got {border!r}"
            )
        line = d.get("border_mm", _default_line_mm(f.boxes[0]))
        if not isinstance(line, int | float) or isinstance(line, bool) or not 0.05 <= line <= 3:
            raise TemplateError(
                f"{where} ('{f.name}'): border_mm must be a number within 0.05..3, got {line!r}"
            )
        boxes[f.name] = BoxStyle(guide=guide, border=BORDERS[border], border_mm=float(line))
    tallies = []
    for i, t in enumerate(pl.get("tallies", [])):
        bad = set(t) - set(_TALLY_KEYS) if isinstance(t, dict) else set()
        if bad:
            raise TemplateError(f"{where}, tallies[{i}]: unknown keys {sorted(bad)} (known: {_TALLY_KEYS})")
        try:
            ints = [t[k] for k in ("cols", "rows", "per_cell") if k in t]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
                raise TypeError(f"cols, rows and per_cell must be integers, got {ints}")
            x, y, w, h = (float(v) for v in t["grid_mm"])
            tally = Tally(
                total=str(t["total"]),
                grid=Box(x, y, w, h),
                cols=int(t["cols"]),
                rows=int(t["rows"]),
                per_cell=int(t.get("per_cell", 5)),
                row_fields=tuple(str(n) for n in t.get("row_fields", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TemplateError(
                f"{where}, tallies[{i}]: needs total, grid_mm [x, y, w, h], cols, rows ({exc})"
            ) from None
        unknown = [n for n in (tally.total, *tally.row_fields) if n not in page.by_name]
        if unknown or tally.cols < 1 or tally.rows < 1 or tally.per_cell < 1:
            raise TemplateError(f"{where}, tallies[{i}]: unknown fields {unknown} or empty grid")
        tallies.append(tally)
    return PageStyle(boxes=boxes, tallies=tuple(tallies))


def tag_image(family: str, tag_id: int, cells_px: int = 8) -> np.ndarray:
    """The page code as a binary image (1-cell black border), 8 cells wide for the 36h10 family."""
    d = aruco_dictionary(family)
    n = d.markerSize + 2
    return cv2.aruco.generateImageMarker(d, tag_id, n * cells_px, borderBits=1)


def _paste_tag(img: np.ndarray, page: PageTemplate, s: float) -> None:
    tag = tag_image(page.tag_family, page.tag_id, cells_px=16)
    n = tag.shape[0]
    src = np.float32([[0, 0], [n, 0], [n, n]])
    dst = np.float32([[x * s, y * s] for x, y in page.tag_corners[:3]])
    m = cv2.getAffineTransform(src, dst)
    xs = [c[0] * s for c in page.tag_corners]
    ys = [c[1] * s for c in page.tag_corners]
    x0, y0 = max(0, int(min(xs)) - 2), max(0, int(min(ys)) - 2)
    x1, y1 = min(img.shape[1], int(max(xs)) + 3), min(img.shape[0], int(max(ys)) + 3)
    m[:, 2] -= (x0, y0)
    warped = cv2.warpAffine(tag, m, (x1 - x0, y1 - y0), flags=cv2.INTER_AREA, borderValue=255)
    region = img[y0:y1, x0:x1]
    np.minimum(region, np.maximum(warped, INK).astype(np.uint8), out=region)


def _clutter(img: np.ndarray, page: PageTemplate, s: float, style: PageStyle) -> None:
    """Text-like grey bars (headings, labels, signature lines): deterministic per page."""
    rng = np.random.default_rng(1000 + page.page)
    h = max(1, int(round(2.2 * s)))

    def words(x: float, y: float, width: float) -> None:
        cx = x
        while cx < x + width:
            w = rng.uniform(4, 14)
            cv2.rectangle(
                img, _p(cx, y, s), _p(min(cx + w, x + width), y + 2.2, s), 90, -1, cv2.LINE_AA, _SHIFT
            )
            cx += w + 1.8

    for k in range(4):  # title block
        words(170 + 10 * k, 100 + 7 * k, 260 - 20 * k)
    grids = [t.grid for t in style.tallies]

    def stop(y: float, end: float) -> float:  # clutter stops before a tally grid
        return min([end] + [g.x - 5 for g in grids if g.y - 3 < y < g.y + g.h + 1])

    for k in range(3):  # Provinsi / Kabupaten / TPS lines
        words(80, 165 + 10 * k, 60)
        y = 168 + 10 * k
        cv2.line(img, _p(160, y, s), _p(stop(y, 290), y, s), 120, 1, cv2.LINE_AA, _SHIFT)
    for f in page.fields:
        b = f.boxes[0]
        if b.x > 150:
            y = b.y + b.h / 2 - 1.1
            words(80, y, stop(y, min(230.0, b.x - 20)) - 80)
    for fr in page.frames:
        if fr.h < 20:
            words(fr.x + 4, fr.y + fr.h / 2 - 1.1, min(80.0, fr.w / 3))
    del h
    words(40, 890, 90)  # footer


def render_page(
    page: PageTemplate,
    *,
    px_per_mm: float = 4.0,
    guides: bool = True,
    clutter: bool = True,
    style: PageStyle | None = None,
) -> np.ndarray:
    """A blank page as uint8 gray (white paper 255, print dark), ``size_mm * px_per_mm`` pixels.

    ``style``: how boxes and tally grids look (default ``page_style(page)``); ``guides=False`` drops the
    writing guides."""
    if not 0.5 <= px_per_mm <= 20:
        raise ValueError(f"px_per_mm must be within 0.5..20, got {px_per_mm}")
    s = float(px_per_mm)
    w, h = int(round(page.size_mm[0] * s)), int(round(page.size_mm[1] * s))
    img = np.full((h, w), 255, np.uint8)
    style = style or page_style(page)
    for t in style.tallies:  # the light grey cells of the tally grids
        for r in range(t.rows):
            for c in range(t.cols):
                _border(img, t.cell(r, c), s, color=GREY, line_mm=0.53)
    for fr in page.frames:
        _rect(img, fr, s, color=60, line_mm=0.3)
    if clutter:
        _clutter(img, page, s, style)
    q = page.marker_square_mm
    for mx, my in page.marker_points:
        for x, y in ((mx - q, my - q), (mx, my)):
            cv2.rectangle(img, _p(x, y, s), _p(x + q, y + q, s), INK, -1, cv2.LINE_AA, _SHIFT)
    _paste_tag(img, page, s)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for f in page.fields:
        st = style.boxes[f.name]
        for b in f.boxes:
            draw_box(img, b, s, guide=st.guide if guides else "none", line_mm=st.border_mm, color=st.border)
        for col in f.bubbles:
            for digit, bb in enumerate(col):
                cv2.circle(
                    img,
                    _p(bb.cx, bb.cy, s),
                    int(round(bb.r * s * _ONE)),
                    INK,
                    max(1, int(round(0.25 * s))),
                    cv2.LINE_AA,
                    _SHIFT,
                )
                scale = 0.045 * bb.r * s
                (tw, th), _ = cv2.getTextSize(str(digit), font, scale, 1)
                cv2.putText(
                    img,
                    str(digit),
                    (int(bb.cx * s - tw / 2), int(bb.cy * s + th / 2)),
                    font,
                    scale,
                    80,
                    max(1, int(round(0.2 * s))),
                    cv2.LINE_AA,
                )
    return img
