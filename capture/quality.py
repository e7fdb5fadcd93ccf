"""Photo-quality check (pure function): sharpness, exposure and glare of a whole photo.

Used by the page reader (to say *why* a page could not be found), by the appliance and by
``tpskit calibrate``.
Measured on a reduced copy (longest side ``WORK_SIDE``) so it costs a few milliseconds on a Pi.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ["Quality", "assess", "WORK_SIDE", "MESSAGES", "is_image", "to_gray", "shrink"]

WORK_SIDE = 1200
MIN_SHARPNESS = (
    0.22  # max edge slope / contrast per work pixel; a sharp print edge is ~0.5, heavy blur < 0.15
)
MIN_BRIGHTNESS = 60  # 95th percentile of gray: paper under light is far above this
SATURATED = 250  # gray level of a blown-out pixel
MAX_SATURATED = 0.04  # share of blown-out pixels

MESSAGES = {
    "blurred": "Foto kabur. Pastikan kamera fokus dan formulir tidak bergerak, lalu foto ulang.",
    "too_dark": "Foto terlalu gelap. Nyalakan lampu atau pindahkan ke tempat terang, lalu foto ulang.",
    "glare": "Ada pantulan cahaya yang menutupi formulir. Ubah posisi lampu, lalu foto ulang.",
    "too_bright": ("Foto terlalu terang atau pucat sehingga tulisan memudar. Kurangi cahaya atau geser lampu "
                   "agar tidak menyorot kamera, bersihkan lensa, lalu foto ulang."),
    "blank": ("Foto polos: tidak ada formulir yang terlihat. Letakkan halaman C.HASIL di alas kamera dan "
              "pastikan lensa bersih, lalu foto ulang."),
    "not_an_image": "Berkas ini bukan foto yang bisa dibaca.",
}


@dataclass(frozen=True)
class Quality:
    ok: bool
    reasons: tuple[str, ...]
    metrics: dict[str, float] = field(default_factory=dict)

    def messages(self) -> list[str]:
        return [MESSAGES[r] for r in self.reasons if r in MESSAGES]


def is_image(image: object, *, min_side: int) -> bool:
    """uint8 gray (H, W) or (H, W, 1), BGR (H, W, 3) or BGRA (H, W, 4), at least min_side px each way."""
    return (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and (image.ndim == 2 or image.ndim == 3 and image.shape[2] in (1, 3, 4))
        and min(image.shape[:2]) >= min_side
    )


def to_gray(image: np.ndarray) -> np.ndarray:
    """Gray (H, W) of an image ``is_image`` accepts."""
    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return image[:, :, 0]
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)


def shrink(gray: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """A copy whose longest side is at most ``side`` (never under 1 px across) and its scale factor."""
    h, w = gray.shape[:2]
    f = min(1.0, side / max(h, w))
    if f == 1.0:
        return gray, f
    if min(h, w) * f >= 1:
        return cv2.resize(gray, None, fx=f, fy=f, interpolation=cv2.INTER_AREA), f
    # a strip so long and thin that scaling it would leave no row (or column): OpenCV asserts on that
    return cv2.resize(gray, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA), f


def _work_gray(image: np.ndarray) -> np.ndarray:
    return shrink(to_gray(image), WORK_SIDE)[0]


def assess(
    image: np.ndarray,
    *,
    min_sharpness: float = MIN_SHARPNESS,
    min_brightness: float = MIN_BRIGHTNESS,
    max_saturated: float = MAX_SATURATED,
) -> Quality:
    """Judge a photo (BGR or gray uint8): ``Quality(ok, reasons, metrics)``; reasons in ``MESSAGES``."""
    if not is_image(image, min_side=16):
        return Quality(False, ("not_an_image",), {})
    gray = _work_gray(image)
    p5, p50, p95 = (float(v) for v in np.percentile(gray, (5, 50, 95)))
    saturated = float(np.count_nonzero(gray >= SATURATED)) / gray.size
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3) / 8
    mag = cv2.magnitude(gx, gy)
    contrast = max(p95 - p5, 1.0)
    sharpness = float(np.percentile(mag, 99.7)) / contrast
    metrics = {
        "sharpness": round(sharpness, 4),
        "brightness_p50": p50,
        "brightness_p95": p95,
        "contrast": round(contrast, 1),
        "saturated": round(saturated, 4),
    }
    reasons = []
    if contrast < 25 and p50 >= SATURATED:  # white all over: blown out, not dark
        reasons.append("too_bright")
    elif p95 < min_brightness:
        reasons.append("too_dark")
    elif contrast < 25:  # lit, but nothing in it: the empty stand, a fogged lens (not "turn on the light")
        reasons.append("blank")
    elif sharpness < min_sharpness:
        reasons.append("blurred")
    if saturated > max_saturated and "too_bright" not in reasons:
        reasons.append("glare")
    return Quality(not reasons, tuple(reasons), metrics)
