"""The project's own renderer of blank form pages (from the templates) at any resolution.

Draws what the reader relies on — border frames, corner markers, the page code (AprilTag), writing boxes with
their dotted 8-segment guide, OMR bubbles with digits — plus some text-like clutter, as a uint8 gray image.
Used by the generator of test photos, the tests and the demo; the official PDF is not needed at run time.
"""

from __future__ import annotations

import cv2
import numpy as np

from inference.templates import Box, PageTemplate

__all__ = ["render_page", "draw_box", "tag_image", "INK", "GUIDE"]

INK = 35  # printed black (the PDF's dark brown-black)
GUIDE = 185  # the light dotted writing guide
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


def draw_box(img: np.ndarray, b: Box, s: float, *, guide: bool = True, line_mm: float = 0.8) -> None:
    """One writing box: dark border and (optionally) the faint dotted 8-segment guide."""
    if guide:
        r = max(1, int(round(0.22 * s * _ONE)))
        for x, y in _guide_points(b):
            cv2.circle(img, _p(x, y, s), r, GUIDE, -1, cv2.LINE_AA, _SHIFT)
    _rect(img, b, s, color=INK, line_mm=line_mm)


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


def _clutter(img: np.ndarray, page: PageTemplate, s: float) -> None:
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
    for k in range(3):  # Provinsi / Kabupaten / TPS lines
        words(80, 165 + 10 * k, 60)
        cv2.line(img, _p(160, 168 + 10 * k, s), _p(290, 168 + 10 * k, s), 120, 1, cv2.LINE_AA, _SHIFT)
    for f in page.fields:
        b = f.boxes[0]
        if b.x > 150:
            words(80, b.y + b.h / 2 - 1.1, min(150.0, b.x - 100))
    for fr in page.frames:
        if fr.h < 20:
            words(fr.x + 4, fr.y + fr.h / 2 - 1.1, min(80.0, fr.w / 3))
    del h
    words(40, 890, 90)  # footer


def render_page(
    page: PageTemplate, *, px_per_mm: float = 4.0, guides: bool = True, clutter: bool = True
) -> np.ndarray:
    """A blank page as uint8 gray (white paper 255, print dark), ``size_mm * px_per_mm`` pixels."""
    if not 0.5 <= px_per_mm <= 20:
        raise ValueError(f"px_per_mm must be within 0.5..20, got {px_per_mm}")
    s = float(px_per_mm)
    w, h = int(round(page.size_mm[0] * s)), int(round(page.size_mm[1] * s))
    img = np.full((h, w), 255, np.uint8)
    for fr in page.frames:
        _rect(img, fr, s, color=60, line_mm=0.3)
    if clutter:
        _clutter(img, page, s)
    q = page.marker_square_mm
    for mx, my in page.marker_points:
        for x, y in ((mx - q, my - q), (mx, my)):
            cv2.rectangle(img, _p(x, y, s), _p(x + q, y + q, s), INK, -1, cv2.LINE_AA, _SHIFT)
    _paste_tag(img, page, s)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for f in page.fields:
        line = 1.0 if f.boxes[0].w >= 19.5 else 0.8 if f.boxes[0].w >= 15 else 0.5
        for b in f.boxes:
            draw_box(img, b, s, guide=guides, line_mm=line)
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
