import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.render import render_page
from inference.templates import load_form

PDF = Path(__file__).resolve().parents[1] / ".." / "shared" / "forms" / "C.HASIL-PPWP-2024.pdf"
S = 3.0  # px per mm


def _pdf_page(n: int, tmp_path: Path) -> np.ndarray:
    dpi = S * 25.4
    subprocess.run(
        [
            "pdftoppm",
            "-r",
            f"{dpi}",
            "-f",
            str(n),
            "-l",
            str(n),
            "-gray",
            "-png",
            str(PDF),
            str(tmp_path / "p"),
        ],
        check=True,
        timeout=60,
    )
    img = cv2.imread(str(next(tmp_path.glob("p*.png"))), cv2.IMREAD_GRAYSCALE)
    for f in tmp_path.glob("p*.png"):
        f.unlink()
    return img


def test_render_page_draws_markers_tag_boxes_and_bubbles():
    form = load_form()
    det = cv2.aruco.ArucoDetector(cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_APRILTAG_36h10))
    for page in form.pages.values():
        img = render_page(page, px_per_mm=S)
        assert img.dtype == np.uint8 and img.shape == (2700, 1800)
        corners, ids, _ = det.detectMarkers(img)
        assert ids is not None and list(ids.ravel()) == [page.tag_id]
        assert np.allclose(corners[0][0] / S, page.tag_corners, atol=1.0)
        for mx, my in page.marker_points:  # the two squares of each marker are black
            assert img[int((my - 3.6) * S), int((mx - 3.6) * S)] < 80
            assert img[int((my + 3.6) * S), int((mx + 3.6) * S)] < 80
        box = page.fields[0].boxes[0]
        assert img[int((box.y + box.h / 2) * S), int(box.x * S)] < 100  # left border
    with pytest.raises(ValueError):
        render_page(form.pages[1], px_per_mm=0.1)


@pytest.mark.skipif(not PDF.is_file(), reason="official PDF ../shared/forms/C.HASIL-PPWP-2024.pdf is absent")
@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="pdftoppm (poppler-utils) not installed")
def test_rendered_boxes_sit_where_the_official_pdf_has_them(tmp_path):
    """Align each box of our rendering with the official page: offsets below 0.8 mm.

    (Page 2 boxes carry a grey inner frame that shifts the correlation a little.)"""
    for n, page in load_form().pages.items():
        ours = render_page(page, px_per_mm=S, guides=False, clutter=False).astype(np.float32)
        theirs = _pdf_page(n, tmp_path).astype(np.float32)
        assert abs(theirs.shape[0] - ours.shape[0]) <= 2 and abs(theirs.shape[1] - ours.shape[1]) <= 2
        offsets = []
        for f in page.fields:
            for b in f.boxes:
                x0, y0 = int((b.x - 4) * S), int((b.y - 4) * S)
                x1, y1 = int((b.x + b.w + 4) * S), int((b.y + b.h + 4) * S)
                a, c = 255 - ours[y0:y1, x0:x1], 255 - theirs[y0:y1, x0:x1]
                (dx, dy), resp = cv2.phaseCorrelate(a, c)
                offsets.append(np.hypot(dx, dy) / S)
        assert max(offsets) < 0.8, f"page {n}: box offsets up to {max(offsets):.2f} mm"
