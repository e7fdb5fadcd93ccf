"""Registration: find the page code and the corner markers, map the photo to the template's mm coordinates.

1. Detect the AprilTag page code on a reduced copy (any rotation): it names the form page and gives a first
   homography from its four corners.
2. Find the four double-square corner markers one by one, nearest first, each by template matching in a small
   patch rectified with the current homography (coarse, then fine), and refit the homography after each.
3. Check what makes a photo unusable: markers outside the frame, markers not visible (covered), blur and
   exposure measured on the markers themselves, resolution below ``min_px_per_mm``.
   Without a page code, corner markers found on their own (``find_markers``) still tell a form from no form:
   a page cut by the frame edge is ``not_in_frame`` (its code was cut off), not ``no_form``.

Failures raise ``RetakeError`` with machine reason codes (``REASONS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from capture.quality import SATURATED, is_image, shrink, to_gray
from inference.render import aruco_dictionary
from inference.templates import Form, PageTemplate, available_forms, load_form

__all__ = ["Registration", "RetakeError", "register", "rectify", "find_markers", "REASONS", "WORK_SIDE"]

WORK_SIDE = 1600  # longest side of the reduced copy used to find the tag
COARSE_PPM = 2.0  # px/mm of the coarse marker search patch
FINE_PPM = 6.0
MIN_MARKER_SCORE = 0.55
MAX_EDGE_MM = 1.3  # marker edge 10-90% width above this = blurred
# The page code's corners further than this from where the corner markers put them: a marker is not where
# the page is (mistaken, or lifted off the table by a rolled sheet's end). Closer than that the page reader
# finds each field where it lies (reader.BOX_SEARCH_FAR_MM), so the page is read (it was refused over 3 mm).
MAX_TAG_RESIDUAL_MM = 6.0
MIN_PAPER = 55  # gray level of paper around the markers below this = too dark
# Washed out (over-exposed, or a veil of light over the lens): the paper around the markers blown out, or the
# markers' printed black lighter than half the paper. Handwriting is lighter than the markers and goes first:
# generated pages read right at a marker black of 0.12-0.4 of the paper (0.12-0.14 as photographed), lose
# digits from ~0.5 and read as mostly empty boxes beyond (review "field_empty": "fill in the boxes").
MAX_PAPER = 250
MAX_INK_SHARE = 0.5
BRIGHT_PAPER = 128  # a flat photo with paper darker than this is dim, brighter is washed out

REASONS = {
    "not_in_frame": ("Formulir tidak masuk seluruhnya ke dalam foto. Letakkan formulir di tengah alas, "
                     "lalu foto ulang."),
    "blurred": "Foto kabur. Pastikan kamera fokus dan formulir tidak bergerak, lalu foto ulang.",
    "too_dark": "Foto terlalu gelap. Nyalakan lampu atau pindahkan ke tempat terang, lalu foto ulang.",
    "too_bright": ("Foto terlalu terang atau pucat sehingga tulisan memudar. Kurangi cahaya atau geser lampu "
                   "agar tidak menyorot kamera, bersihkan lensa, lalu foto ulang."),
    "glare": "Ada pantulan cahaya di atas kotak angka atau kode halaman. Ubah posisi lampu, lalu foto ulang.",
    # (also a sheet so far from flat that a box is not where it should be: a fold standing up, a rolled
    # sheet's ends lifting off the table)
    "covered": ("Sebagian formulir tertutup (tangan atau benda lain) atau kertas tidak rata. Singkirkan, "
                "ratakan lipatan dan ujung kertas yang menggulung, lalu foto ulang."),
    "unknown_form": "Formulir ini tidak dikenal. Gunakan formulir C.HASIL resmi dengan kode halaman.",
    "no_form": ("Formulir C.HASIL atau kode halamannya (kotak hitam-putih di kanan atas) tidak terlihat "
                "di foto. "
                "Letakkan seluruh formulir di alas kamera, lalu foto ulang."),
    "low_resolution": "Formulir terlalu kecil di foto. Periksa tinggi kamera pada alas, lalu foto ulang.",
    "not_an_image": "Berkas ini bukan foto yang bisa dibaca. Foto ulang.",
}


class RetakeError(Exception):
    """The photo cannot be read; ``reasons`` are codes of ``REASONS``."""

    def __init__(
        self,
        reasons: list[str] | tuple[str, ...],
        *,
        page: PageTemplate | None = None,
        metrics: dict | None = None,
    ) -> None:
        self.reasons = tuple(reasons)
        self.page = page
        self.metrics = metrics or {}
        super().__init__("; ".join(f"{r}: {REASONS.get(r, r)}" for r in self.reasons))


@dataclass
class Registration:
    page: PageTemplate
    homography: np.ndarray  # page mm -> photo px (3x3)
    px_per_mm: float
    rotation_deg: float  # how the page is turned in the photo (0 = upright along x)
    residual_mm: float  # RMS disagreement of tag corners and markers with the final homography
    metrics: dict[str, float] = field(default_factory=dict)


def _gray(image: np.ndarray) -> np.ndarray:
    return to_gray(image)


def rectify(
    gray: np.ndarray,
    hmm: np.ndarray,
    x_mm: float,
    y_mm: float,
    w_mm: float,
    h_mm: float,
    ppm: float,
    *,
    interpolation: int = cv2.INTER_LINEAR,
    border: int = 255,
) -> np.ndarray:
    """The page region (x, y, w, h) in mm as an upright image at ``ppm`` px/mm, sampled from the photo."""
    out_w, out_h = max(1, int(round(w_mm * ppm))), max(1, int(round(h_mm * ppm)))
    t = np.array([[1 / ppm, 0, x_mm], [0, 1 / ppm, y_mm], [0, 0, 1]], np.float64)
    return cv2.warpPerspective(
        gray,
        hmm @ t,
        (out_w, out_h),
        flags=interpolation | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=border,
    )


def _marker_template(square_mm: float, ppm: float, pad_mm: float) -> np.ndarray:
    size = int(round((2 * square_mm + 2 * pad_mm) * ppm))
    t = np.full((size, size), 255, np.uint8)
    c = size / 2
    q = square_mm * ppm
    sh = 4
    one = 1 << sh
    cv2.rectangle(
        t, (int((c - q) * one), int((c - q) * one)), (int(c * one), int(c * one)), 0, -1, cv2.LINE_AA, sh
    )
    cv2.rectangle(
        t, (int(c * one), int(c * one)), (int((c + q) * one), int((c + q) * one)), 0, -1, cv2.LINE_AA, sh
    )
    return t


def _find_marker(
    gray: np.ndarray,
    hmm: np.ndarray,
    point: tuple[float, float],
    square_mm: float,
    search_mm: float,
    ppm: float,
) -> tuple[tuple[float, float], float, np.ndarray]:
    """Best match of a corner marker near ``point`` (mm): (refined point in mm, score, patch)."""
    pad = 2.0
    tmpl = _marker_template(square_mm, ppm, pad)
    half = square_mm + pad + search_mm
    patch = rectify(gray, hmm, point[0] - half, point[1] - half, 2 * half, 2 * half, ppm, border=128)
    if patch.shape[0] <= tmpl.shape[0] or patch.shape[1] <= tmpl.shape[1]:
        return point, 0.0, patch
    res = cv2.matchTemplate(patch, tmpl, cv2.TM_CCOEFF_NORMED)
    _, score, _, loc = cv2.minMaxLoc(res)
    x, y = float(loc[0]), float(loc[1])
    if 0 < loc[0] < res.shape[1] - 1:  # parabolic sub-pixel refinement
        a, b, c = res[loc[1], loc[0] - 1], res[loc[1], loc[0]], res[loc[1], loc[0] + 1]
        d = a - 2 * b + c
        x += 0.5 * (a - c) / d if d else 0.0
    if 0 < loc[1] < res.shape[0] - 1:
        a, b, c = res[loc[1] - 1, loc[0]], res[loc[1], loc[0]], res[loc[1] + 1, loc[0]]
        d = a - 2 * b + c
        y += 0.5 * (a - c) / d if d else 0.0
    cx = point[0] - half + (x + tmpl.shape[1] / 2) / ppm
    cy = point[1] - half + (y + tmpl.shape[0] / 2) / ppm
    return (cx, cy), float(score), patch


def _edge_width_mm(patch: np.ndarray, ppm: float) -> tuple[float, float, float]:
    """Blur and exposure on a fine marker patch: (edge 10-90% width in mm, paper level, ink level)."""
    p = patch.astype(np.float32)
    paper, ink = float(np.percentile(p, 90)), float(np.percentile(p, 5))
    contrast = max(paper - ink, 1.0)
    gx = np.abs(cv2.Sobel(p, cv2.CV_32F, 1, 0, ksize=3) / 8)
    gy = np.abs(cv2.Sobel(p, cv2.CV_32F, 0, 1, ksize=3) / 8)
    # gray levels per px across the sharpest edges, of the blurrier direction: the patch is upright, so the
    # marker's edges run along x and y, and motion (the page or the stand moving) smears only one of them
    slope = min(float(np.percentile(gx, 99.0)), float(np.percentile(gy, 99.0)))
    width_px = 0.8 * contrast / max(slope, 1e-3)  # a linear ramp from 10% to 90% of the contrast
    return width_px / ppm, paper, ink


def _px_per_mm(hmm: np.ndarray, at: tuple[float, float]) -> float:
    pts = np.float32([[at, (at[0] + 1, at[1]), (at[0], at[1] + 1)]])
    q = cv2.perspectiveTransform(pts, hmm)[0]
    a, b = q[1] - q[0], q[2] - q[0]
    return float(np.sqrt(abs(a[0] * b[1] - a[1] * b[0])))


def _detect_tags(gray: np.ndarray, families: set[str]) -> list[tuple[str, int, np.ndarray]]:
    small, f = shrink(gray, WORK_SIDE)
    found = []
    for fast in (True, False):  # the ArUco3 pipeline is ~50x faster; the classic one is the fallback
        for fam in sorted(families):
            params = cv2.aruco.DetectorParameters()
            params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
            params.minMarkerPerimeterRate = 0.04
            params.maxMarkerPerimeterRate = 0.6
            params.useAruco3Detection = fast
            if not fast:
                params.adaptiveThreshWinSizeMin = 9
                params.adaptiveThreshWinSizeMax = 29
            det = cv2.aruco.ArucoDetector(aruco_dictionary(fam), params)
            corners, ids, _ = det.detectMarkers(small)
            if ids is not None:
                for c, i in zip(corners, ids.ravel(), strict=True):
                    found.append((fam, int(i), c[0].astype(np.float64) / f))
        if found:
            break
    return found


def _inside_frame(m: tuple[float, float, float], shape: tuple[int, ...]) -> bool:
    """A marker (x, y, square side) at least two of its squares away from every image edge."""
    x, y, side = m
    return 2 * side <= x < shape[1] - 2 * side and 2 * side <= y < shape[0] - 2 * side


def find_markers(gray: np.ndarray) -> list[tuple[float, float, float]]:
    """Double-square corner markers found without the page code: ``(x, y, square side)`` in image px (gray or
    BGR image).

    Dark solid squares (against the local paper) are paired when two of a similar size touch at a corner
    (centres one diagonal apart), at any rotation; the pinch where they touch is opened by eroding."""
    gray = _gray(gray)
    small, f = shrink(gray, WORK_SIDE)
    long_side = max(small.shape[:2])
    block = max(31, long_side // 15) | 1
    ink = cv2.adaptiveThreshold(small, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, block, 30)
    found: list[tuple[float, float, float]] = []
    kernel = np.ones((3, 3), np.uint8)
    for erosions in range(3):
        mask = cv2.erode(ink, kernel, iterations=erosions) if erosions else ink
        n, labels, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=4)
        x, y, w, h, area = (stats[1:, k] for k in range(5))
        keep = (
            (area >= 12)
            & (np.maximum(w, h) <= long_side * 0.05)
            & (area >= 0.45 * w * h)
            & (np.maximum(w, h) <= 1.6 * np.minimum(w, h))
        )
        squares = []
        for i in np.flatnonzero(keep) + 1:
            bx, by, bw, bh, a = stats[i]
            pts = np.argwhere(labels[by : by + bh, bx : bx + bw] == i)[:, ::-1].astype(np.float32)
            (_, (rw, rh), _) = cv2.minAreaRect(pts)
            rw, rh = rw + 1, rh + 1  # pixel extents, not centre to centre
            if a >= 0.8 * rw * rh and max(rw, rh) <= 1.35 * min(rw, rh):
                squares.append((*cents[i], float(np.sqrt(a))))
        if len(squares) > 400:  # a texture, not a page
            continue
        for i, a in enumerate(squares):
            for b in squares[i + 1 :]:
                side = (a[2] + b[2]) / 2
                d = float(np.hypot(a[0] - b[0], a[1] - b[1]))
                if abs(a[2] - b[2]) <= 0.3 * side and 1.2 * side <= d <= 1.9 * side:
                    m = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, side + erosions)
                    if all(np.hypot(m[0] - o[0], m[1] - o[1]) > 2 * o[2] for o in found):
                        found.append(m)
    return [(x / f, y / f, side / f) for x, y, side in found]


TAG_GLARE = 0.15  # share of the page code's square blown out: a reflection hides it


def _code_glared(gray: np.ndarray, markers: list[tuple[float, float, float]], forms: list[Form]) -> bool:
    """Four corner markers seen and no page code: is the code's square blown out where the markers put it?

    The markers, in clockwise order, are matched to the page's TL, TR, BR, BL in the two ways that keep its
    short side short (upright or upside down); either place of the code counts."""
    if len(markers) != 4:
        return False
    pts = np.array([m[:2] for m in markers], np.float64)
    c = pts.mean(axis=0)
    pts = pts[np.argsort(np.arctan2(pts[:, 1] - c[1], pts[:, 0] - c[0]))]  # clockwise on the image (y down)
    layouts = {(p.marker_points, p.tag_corners) for f in forms for p in f.pages.values()}
    for marker_points, tag_corners in layouts:
        src = np.array(marker_points, np.float64)
        short_first = np.hypot(*(src[1] - src[0])) < np.hypot(*(src[2] - src[1]))
        for k in range(4):
            dst = np.roll(pts, -k, axis=0)
            if (np.hypot(*(dst[1] - dst[0])) < np.hypot(*(dst[2] - dst[1]))) != short_first:
                continue
            hmm = cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32))
            quad = cv2.perspectiveTransform(np.float64([tag_corners]), hmm)[0]
            x, y, w, h = cv2.boundingRect(np.round(quad).astype(np.int32))
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x + w, gray.shape[1]), min(y + h, gray.shape[0])
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            cv2.fillConvexPoly(mask, np.round(quad - (x0, y0)).astype(np.int32), 1)
            inside = gray[y0:y1, x0:x1][mask > 0]
            if inside.size and np.count_nonzero(inside >= SATURATED) >= TAG_GLARE * inside.size:
                return True
    return False


def register(image: np.ndarray, *, form: Form | None = None, min_px_per_mm: float = 2.0) -> Registration:
    """Register a photo (BGR or gray) to its page template, or raise ``RetakeError``."""
    if not is_image(image, min_side=32):
        raise RetakeError(["not_an_image"])
    gray = _gray(image)
    forms = [form] if form is not None else [load_form(f) for f in available_forms()]
    families = {p.tag_family for f in forms for p in f.pages.values()}
    tags = _detect_tags(gray, families)
    candidates = []  # every page code of a known page in the photo (another sheet's may lie in view too)
    for fam, tag_id, c in tags:
        for f in forms:
            cand = f.page_for_tag(tag_id)
            if cand is not None and cand.tag_family == fam:
                candidates.append((cand, c))
                break
    if not candidates:
        from capture.quality import assess

        q = assess(image)
        bad = [r for r in q.reasons if r in ("blurred", "too_dark", "too_bright")]
        if not bad and not tags:  # no page code: is a form there all the same (its corner markers)?
            markers = find_markers(gray)
            if markers:
                inside = [m for m in markers if _inside_frame(m, gray.shape)]
                # markers cut by the edge, or too few of them: the page is not in the frame; all four well
                # inside: the page is there but its code cannot be seen (covered)
                bad = ["covered"] if len(inside) >= 4 and len(markers) == len(inside) else ["not_in_frame"]
                if bad == ["covered"] and _code_glared(gray, inside, forms):
                    bad = ["glare"]  # a lamp's reflection over the page code: move the lamp, not a hand
                q.metrics["markers_without_tag"] = len(markers)
        raise RetakeError(bad or (["unknown_form"] if tags else ["no_form"]), metrics=q.metrics)
    errors = []
    for page, corners in candidates:  # the page whose corner markers are found where its code puts them
        try:
            return _fit(gray, page, corners, min_px_per_mm)
        except RetakeError as exc:
            errors.append(exc)
    raise max(errors, key=lambda e: len(e.metrics))  # the page that got furthest (its markers measured)


def _fit(gray: np.ndarray, page: PageTemplate, corners: np.ndarray, min_px_per_mm: float) -> Registration:
    """Registration of ``page`` from its code's corners (px) in the photo, or ``RetakeError``."""
    src = np.array(page.tag_corners, np.float64)
    hmm, _ = cv2.findHomography(src, corners)
    h_img, w_img = gray.shape[:2]
    ppm_tag = _px_per_mm(hmm, page.tag_corners[0])
    if ppm_tag < min_px_per_mm * 0.8:
        raise RetakeError(["low_resolution"], page=page, metrics={"px_per_mm": ppm_tag})
    tag_c = np.mean(src, axis=0)
    order = sorted(range(4), key=lambda i: np.hypot(*(np.array(page.marker_points[i]) - tag_c)))
    found: dict[int, tuple[float, float]] = {}  # marker index -> where it is in the photo (px)
    seen: list[tuple[float, float, float]] | None = None  # markers found without the page code, if needed
    scores, edges, papers, inks = [], [], [], []
    fine_ppm = min(FINE_PPM, max(ppm_tag, 3.0))
    for i in order:
        pt = page.marker_points[i]
        img_pt = cv2.perspectiveTransform(np.float64([[pt]]), hmm)[0, 0]
        margin = page.marker_square_mm * ppm_tag
        dist = float(np.hypot(pt[0] - tag_c[0], pt[1] - tag_c[1]))
        search = min(60.0, 12.0 + 0.05 * dist) if found else min(60.0, 15.0 + 0.06 * dist)
        # where the marker should be is only as good as the small page code's extrapolation: refuse at once
        # only when even the search window around it is off the frame; a marker found is checked below
        slack = search * ppm_tag - margin
        if not (-slack <= img_pt[0] < w_img + slack and -slack <= img_pt[1] < h_img + slack):
            raise RetakeError(["not_in_frame"], page=page)
        near_edge = not (margin <= img_pt[0] < w_img - margin and margin <= img_pt[1] < h_img - margin)
        coarse, s1, _ = _find_marker(gray, hmm, pt, page.marker_square_mm, search, COARSE_PPM)
        fine, s2, patch = _find_marker(gray, hmm, coarse, page.marker_square_mm, 2.0, fine_ppm)
        if s2 < MIN_MARKER_SCORE:  # far from the page code and the page in perspective: use a marker seen
            if seen is None:  # anywhere in the photo near where this one should be
                seen = [m for m in find_markers(gray) if _inside_frame(m, gray.shape)]
            near = [m for m in seen if np.hypot(m[0] - img_pt[0], m[1] - img_pt[1]) < 0.2 * dist * ppm_tag
                    and all(np.hypot(m[0] - f[0], m[1] - f[1]) > 4 * m[2] for f in found.values())]
            if near:
                m = min(near, key=lambda m: np.hypot(m[0] - img_pt[0], m[1] - img_pt[1]))
                at = cv2.perspectiveTransform(np.float64([[m[:2]]]), np.linalg.inv(hmm))[0, 0]
                fine2, s3, patch2 = _find_marker(gray, hmm, tuple(at), page.marker_square_mm, 4.0, fine_ppm)
                if s3 > s2:
                    fine, s2, patch = fine2, s3, patch2
        scores.append(s2)
        if s2 < MIN_MARKER_SCORE:  # not there: off the frame if expected at its edge, else covered
            raise RetakeError(["not_in_frame" if near_edge else "covered"], page=page,
                              metrics={"marker_score": s2})
        edge, paper, ink = _edge_width_mm(patch, fine_ppm)
        edges.append(edge)
        papers.append(paper)
        inks.append(ink)
        # the marker found at `fine` under hmm is really at `pt`: refit with everything known
        found[i] = tuple(cv2.perspectiveTransform(np.float64([[fine]]), hmm)[0, 0])
        fx, fy = found[i]
        if not (margin <= fx < w_img - margin and margin <= fy < h_img - margin):  # the marker is cut
            raise RetakeError(["not_in_frame"], page=page)
        mm_pts = np.array([page.tag_corners[k] for k in range(4)] + [page.marker_points[k] for k in found])
        px_pts = np.vstack([corners, np.array([found[k] for k in found])])
        if len(found) >= 4:  # markers only: far apart, most precise
            hmm, _ = cv2.findHomography(mm_pts[4:], px_pts[4:])
        else:  # too few far points for a stable perspective fit: affine, least squares
            a = np.hstack([mm_pts, np.ones((len(mm_pts), 1))])
            aff = np.linalg.lstsq(a, px_pts, rcond=None)[0].T
            hmm = np.vstack([aff, [0, 0, 1]])
    pred = cv2.perspectiveTransform(np.float64([page.tag_corners]), hmm)[0]
    ppm = _px_per_mm(hmm, (page.size_mm[0] / 2, page.size_mm[1] / 2))
    residual = float(np.sqrt(np.mean(np.sum((pred - corners) ** 2, axis=1)))) / ppm
    edge_mm = float(np.median(edges))
    metrics = {
        "px_per_mm": round(ppm, 3),
        "edge_mm": round(edge_mm, 3),
        "paper": round(float(np.median(papers)), 1),
        "ink": round(float(np.median(inks)), 1),
        "marker_score": round(min(scores), 3),
        "tag_residual_mm": round(residual, 3),
    }
    reasons = []
    paper, ink = metrics["paper"], metrics["ink"]
    washed_out = paper >= MAX_PAPER or ink > MAX_INK_SHARE * paper
    if paper < MIN_PAPER or (paper - ink < 30 or washed_out) and paper < BRIGHT_PAPER:
        reasons.append("too_dark")
    elif washed_out:
        reasons.append("too_bright")
    elif edge_mm > MAX_EDGE_MM:
        reasons.append("blurred")
    if ppm < min_px_per_mm:
        reasons.append("low_resolution")
    if residual > MAX_TAG_RESIDUAL_MM:
        reasons.append("covered")
    if reasons:
        raise RetakeError(reasons, page=page, metrics=metrics)
    x_axis = cv2.perspectiveTransform(np.float64([[(0, 0), (100, 0)]]), hmm)[0]
    rot = float(np.degrees(np.arctan2(*(x_axis[1] - x_axis[0])[::-1])))
    return Registration(
        page=page, homography=hmm, px_per_mm=ppm, rotation_deg=rot, residual_mm=residual, metrics=metrics
    )
