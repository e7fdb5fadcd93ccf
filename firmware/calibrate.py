"""Calibration of the stand and camera: is a page under the camera readable, and with which settings?

``measure(image)`` (pure) finds the page code and corner markers (``inference.register``), the resolution in
px/mm at every box, focus, exposure and glare over the boxes; ``evaluate`` turns that into a verdict with
what to adjust; ``annotate`` draws it; ``choose_settings`` fixes exposure, gain, white balance and focus
from the camera's automatic result (Camera Module 3 via picamera2), so every page is photographed alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Camera Module 3 (standard lens): 66° x 41° field of view, 4608 x 2592 stills.
HFOV_DEG = 66.0
VFOV_DEG = 41.0
SENSOR_PX = (4608, 2592)
PAGE_MM = (600.0, 900.0)
GOOD_PX_PER_MM = 3.0  # comfortable: an 18 mm box is >= 54 px
MAX_GLARE = 0.002  # share of blown-out pixels inside the boxes
SATURATED = 250
MAX_EXPOSURE_US = 50_000  # the page lies still; longer risks hand shake of the stand
# Lamps on Indonesia's 50 Hz mains (PLN) flicker at 100 Hz: an exposure of whole 10 ms periods takes in the
# same light on every row of the rolling shutter, where another length shows dark bands across the page
FLICKER_PERIOD_US = 10_000
TARGET_PAPER = 200  # gray level of paper we aim for


def stand_height_mm(page_mm: tuple[float, float] = PAGE_MM, *, hfov_deg: float = HFOV_DEG,
                    vfov_deg: float = VFOV_DEG, margin: float = 0.05) -> float:
    """Lens-to-page distance that fits the page (plus *margin* on each side), long side along the sensor's."""
    short, long = sorted(page_mm)
    need_h = long * (1 + 2 * margin) / 2 / math.tan(math.radians(hfov_deg / 2))
    need_v = short * (1 + 2 * margin) / 2 / math.tan(math.radians(vfov_deg / 2))
    return max(need_h, need_v)


def px_per_mm_at(height_mm: float, *, hfov_deg: float = HFOV_DEG, width_px: int = SENSOR_PX[0]) -> float:
    """Resolution on the page at *height_mm* (lens to page)."""
    return width_px / (2 * height_mm * math.tan(math.radians(hfov_deg / 2)))


@dataclass
class Measurement:
    found: bool
    reasons: tuple[str, ...] = ()
    page: int | None = None
    px_per_mm_min: float | None = None  # at the worst box
    px_per_mm_median: float | None = None
    edge_mm: float | None = None  # marker edge width: focus
    paper: float | None = None  # gray level of paper at the markers: exposure
    ink: float | None = None
    glare: float | None = None  # share of blown-out pixels over the boxes
    coverage: float | None = None  # share of the photo the page covers
    rotation_deg: float | None = None
    quality: dict = field(default_factory=dict)
    homography: np.ndarray | None = None
    boxes_px: list[np.ndarray] = field(default_factory=list)
    box_ppm: list[float] = field(default_factory=list)
    page_px: np.ndarray | None = None


def _local_ppm(hmm: np.ndarray, x: float, y: float) -> float:
    import cv2

    pts = cv2.perspectiveTransform(np.float64([[(x, y), (x + 1, y), (x, y + 1)]]), hmm)[0]
    return float(math.sqrt(np.linalg.norm(pts[1] - pts[0]) * np.linalg.norm(pts[2] - pts[0])))


def measure(image: np.ndarray, *, min_px_per_mm: float = 2.0) -> Measurement:
    """Everything calibration needs from one photo (pure)."""
    import cv2

    from capture.quality import assess
    from inference.register import RetakeError, register

    q = assess(image)
    try:
        reg = register(image, min_px_per_mm=min_px_per_mm * 0.5)
    except RetakeError as exc:
        m = Measurement(False, exc.reasons, page=exc.page.page if exc.page else None, quality=q.metrics)
        m.px_per_mm_min = exc.metrics.get("px_per_mm")
        m.edge_mm = exc.metrics.get("edge_mm")
        m.paper = exc.metrics.get("paper")
        return m
    page, hmm = reg.page, reg.homography
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    h, w = gray.shape[:2]
    boxes_px, ppms = [], []
    mask = np.zeros((h, w), np.uint8)
    for f in page.fields:
        for b in f.boxes:
            corners = [(b.x, b.y), (b.x + b.w, b.y), (b.x + b.w, b.y + b.h), (b.x, b.y + b.h)]
            quad = cv2.perspectiveTransform(np.float64([corners]), hmm)[0]
            boxes_px.append(quad)
            ppms.append(_local_ppm(hmm, b.x + b.w / 2, b.y + b.h / 2))
            cv2.fillConvexPoly(mask, np.round(quad).astype(np.int32), 255)
    in_boxes = mask > 0
    bright = (image.min(axis=2) if image.ndim == 3 else image) >= SATURATED
    glare = float(np.count_nonzero(bright & in_boxes) / max(1, np.count_nonzero(in_boxes)))
    pw, ph = page.size_mm
    page_px = cv2.perspectiveTransform(np.float64([[(0, 0), (pw, 0), (pw, ph), (0, ph)]]), hmm)[0]
    coverage = float(cv2.contourArea(page_px.astype(np.float32)) / (w * h))
    reasons = []
    if min(ppms) < min_px_per_mm:
        reasons.append("low_resolution")
    if glare > MAX_GLARE:
        reasons.append("glare")
    return Measurement(
        True, tuple(reasons), page=page.page, px_per_mm_min=round(min(ppms), 3),
        px_per_mm_median=round(float(np.median(ppms)), 3), edge_mm=reg.metrics.get("edge_mm"),
        paper=reg.metrics.get("paper"), ink=reg.metrics.get("ink"), glare=round(glare, 5),
        coverage=round(coverage, 3), rotation_deg=round(reg.rotation_deg, 1), quality=q.metrics,
        homography=hmm, boxes_px=boxes_px, box_ppm=ppms, page_px=page_px)


@dataclass
class Item:
    name: str
    ok: bool
    value: str
    advice: str = ""


ADVICE = {
    "no_form": "Letakkan halaman C.HASIL di tengah alas, menghadap ke atas, di bawah kamera.",
    "unknown_form": "Pakai formulir C.HASIL resmi yang memiliki kode halaman (kotak hitam-putih).",
    "not_in_frame": "Halaman tidak masuk seluruhnya: geser ke tengah alas atau naikkan kamera.",
    "covered": ("Sebagian halaman tertutup atau tidak rata: singkirkan tangan/benda dari atas halaman, "
                "ratakan lipatan dan ujung kertas yang menggulung."),
    "blurred": "Foto kabur: periksa fokus (lensa) dan pastikan tiang kamera tidak goyang.",
    "too_dark": "Terlalu gelap: nyalakan lampu di atas alas atau pindah ke tempat terang.",
    "too_bright": ("Terlalu terang atau pucat: kurangi cahaya langsung, jangan sorot lensa, bersihkan lensa, "
                   "lalu jalankan ulang kalibrasi."),
    "glare": "Ada pantulan di atas kotak angka: geser lampu ke samping (45°), jangan tepat di atas halaman.",
    "low_resolution": "Halaman terlalu kecil di foto: turunkan kamera (lihat tinggi di panduan).",
    "not_an_image": "Kamera tidak memberi foto: periksa kabel kamera.",
}


def evaluate(m: Measurement, *, min_px_per_mm: float = 2.0) -> list[Item]:
    """The verdict items, each with what to adjust (Bahasa Indonesia)."""
    items: list[Item] = []
    ideal = stand_height_mm()
    if not m.found:
        items.append(Item("page", False, "halaman/penanda tidak ditemukan (" + ", ".join(m.reasons) + ")",
                          " ".join(ADVICE.get(r, r) for r in m.reasons)))
        return items
    items.append(Item("page", True, f"halaman {m.page}: kode halaman dan 4 penanda sudut ditemukan"))
    ppm = m.px_per_mm_min or 0.0
    res_ok = ppm >= min_px_per_mm
    advice = ""
    if not res_ok:
        advice = f"{ADVICE['low_resolution']} Tinggi lensa ideal ≈ {ideal / 10:.0f} cm."
    elif ppm < GOOD_PX_PER_MM:
        advice = (f"Cukup, tetapi lebih baik ≥ {GOOD_PX_PER_MM} px/mm: turunkan kamera sedikit "
                  "bila halaman masih muat.")
    items.append(Item("resolution", res_ok, f"{ppm:.2f} px/mm di kotak terkecil (minimum {min_px_per_mm}, "
                                            f"baik ≥ {GOOD_PX_PER_MM})", advice))
    if m.coverage is not None and m.coverage < 0.35:
        items.append(Item("framing", True, f"halaman hanya {m.coverage:.0%} dari foto",
                          f"Kamera terlalu tinggi: turunkan ke ≈ {ideal / 10:.0f} cm di atas halaman."))
    focus_ok = m.edge_mm is not None and m.edge_mm <= 1.0
    items.append(Item("focus", focus_ok, f"tepi penanda {m.edge_mm} mm" if m.edge_mm is not None else "?",
                      "" if focus_ok else ADVICE["blurred"]))
    paper = m.paper or 0.0
    expo_ok = 90 <= paper <= 245 and paper - (m.ink or 0) >= 60
    expo_advice = ""
    if not expo_ok:
        expo_advice = ADVICE["too_dark"] if paper < 90 or paper - (m.ink or 0) < 60 else \
            "Terlalu terang: kurangi cahaya langsung atau jalankan ulang kalibrasi."
    items.append(Item("exposure", expo_ok, f"kertas {paper:.0f}/255, tinta {m.ink or 0:.0f}/255",
                      expo_advice))
    glare_ok = (m.glare or 0.0) <= MAX_GLARE
    items.append(Item("glare", glare_ok, f"{(m.glare or 0) * 100:.2f}% piksel silau di kotak",
                      "" if glare_ok else ADVICE["glare"]))
    return items


def annotate(image: np.ndarray, m: Measurement, items: list[Item], *,
             min_px_per_mm: float = 2.0) -> np.ndarray:
    """A copy of the photo with the page outline, boxes coloured by resolution, glare and the verdict."""
    import cv2

    out = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    scale = max(1.0, max(out.shape[:2]) / 1500)
    thick = max(1, int(round(2 * scale)))
    if m.page_px is not None:
        cv2.polylines(out, [np.round(m.page_px).astype(np.int32)], True, (255, 160, 0), thick * 2)
    for quad, ppm in zip(m.boxes_px, m.box_ppm, strict=False):
        color = ((0, 200, 0) if ppm >= GOOD_PX_PER_MM else (0, 200, 255) if ppm >= min_px_per_mm
                 else (0, 0, 255))
        cv2.polylines(out, [np.round(quad).astype(np.int32)], True, color, thick)
    bright = (out.min(axis=2) >= SATURATED)
    out[bright] = (255, 0, 255)
    ok = all(i.ok for i in items)
    lines = [("SIAP / OK" if ok else "ATUR ULANG / ADJUST", (0, 160, 0) if ok else (0, 0, 230))]
    lines += [(f"{'OK ' if i.ok else 'X  '}{i.name}: {i.value}", (0, 120, 0) if i.ok else (0, 0, 200))
              for i in items]
    ascii_only = str.maketrans({"≥": ">=", "≤": "<=", "×": "x", "→": "->", "≈": "~"})
    lines = [(t.translate(ascii_only).encode("ascii", "replace").decode(), c) for t, c in lines]
    fs = 0.6 * scale
    y = int(30 * scale)
    for text, color in lines:
        cv2.putText(out, text, (int(10 * scale), y), cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 255), thick + 3)
        cv2.putText(out, text, (int(10 * scale), y), cv2.FONT_HERSHEY_SIMPLEX, fs, color, thick)
        y += int(28 * scale)
    return out


def choose_settings(meta: dict | None, m: Measurement) -> dict:
    """Fixed camera settings from the automatic result (picamera2 metadata), corrected by the measurement.

    Returns the ``[camera]`` keys to store (empty without metadata, e.g. the folder camera).
    """
    if not meta:
        return {}
    out: dict = {}
    exposure = meta.get("ExposureTime")
    gain = meta.get("AnalogueGain")
    if exposure and gain:
        total = float(exposure) * float(gain)
        if m.found and m.paper:
            if (m.glare or 0) > MAX_GLARE or m.paper > 245:
                total *= 0.7  # darker: pull the paper out of saturation
            elif m.paper < 150:
                total *= min(2.0, TARGET_PAPER / max(m.paper, 1.0))
        exposure_us = min(MAX_EXPOSURE_US, max(100, int(total / 1.0)))
        if exposure_us >= FLICKER_PERIOD_US:  # shorter: a bright scene (daylight), and no whole period fits
            exposure_us -= exposure_us % FLICKER_PERIOD_US
        gain_out = max(1.0, min(16.0, total / exposure_us))  # prefer exposure time to gain (less noise)
        out["exposure_us"] = int(exposure_us)
        out["analogue_gain"] = round(gain_out, 2)
    if meta.get("LensPosition") is not None:
        out["lens_position"] = round(float(meta["LensPosition"]), 3)
    gains = meta.get("ColourGains")
    if gains and len(gains) == 2:
        out["awb_gains"] = [round(float(gains[0]), 3), round(float(gains[1]), 3)]
    return out


def camera_metadata(camera) -> dict | None:
    """picamera2 metadata (ExposureTime, AnalogueGain, LensPosition, ColourGains) of the last frame."""
    fn = getattr(camera, "metadata", None)
    if callable(fn):
        return fn()
    cam = getattr(camera, "_cam", None)
    if cam is not None and hasattr(cam, "capture_metadata"):
        return dict(cam.capture_metadata())
    return None
