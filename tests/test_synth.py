"""The generator: ground truth for box crops (used by the digit bench and training) and tally marks."""

import cv2
import numpy as np

from inference.digits import EMPTY
from inference.render import page_style
from inference.synth import box_label, fill_page, tally_counts
from inference.templates import load_form


def test_box_label_digits_blank_and_unused_leading_boxes():
    assert [box_label(27, 3, b) for b in range(3)] == [None, 2, 7]
    assert [box_label(105, 3, b) for b in range(3)] == [1, 0, 5]
    assert [box_label(None, 3, b) for b in range(3)] == [EMPTY] * 3
    assert [box_label(0, 2, b) for b in range(2)] == [None, 0]


def _tally_ink_cells(img: np.ndarray, tally, s: float) -> list[int]:
    """Cells with pen ink in each row of a tally grid (dark pixels inside the cell, grid lines excluded)."""
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    out = []
    for r in range(tally.rows):
        n = 0
        for c in range(tally.cols):
            b = tally.cell(r, c)
            y0, y1 = int((b.y + 0.8) * s), int((b.y + b.h - 0.8) * s)
            inner = gray[y0:y1, int((b.x + 0.8) * s) : int((b.x + b.w - 0.8) * s)]
            n += int((inner < 150).sum() > 3)
        out.append(n)
    return out


def test_tally_marks_match_the_row_sums_and_leave_the_rest_of_the_page_alone():
    page = load_form().pages[2]
    written = {"paslon_1": 134, "paslon_1_baris_1": 60, "paslon_1_baris_2": 60, "paslon_1_baris_3": 14,
               "paslon_2": 7, "paslon_3": 0}  # paslon 2: row sums left blank, the count is tallied anyway
    tallies = {t.total: t for t in page_style(page).tallies}
    assert tally_counts(tallies["paslon_1"], written) == [60, 60, 14, 0, 0]
    assert tally_counts(tallies["paslon_2"], written) == [7, 0, 0, 0, 0]
    s = 3.0
    for seed in (1, 2):
        a = fill_page(page, written, px_per_mm=s, rng=np.random.default_rng(seed))
        assert _tally_ink_cells(a, tallies["paslon_1"], s) == [12, 12, 3, 0, 0]
        assert _tally_ink_cells(a, tallies["paslon_2"], s) == [2, 0, 0, 0, 0]
        assert _tally_ink_cells(a, tallies["paslon_3"], s) == [0] * 5
        b = fill_page(page, written, px_per_mm=s, rng=np.random.default_rng(seed), tallies=False)
        assert _tally_ink_cells(b, tallies["paslon_1"], s) == [0] * 5
        diff = np.argwhere((a != b).any(axis=2))  # same stream: only the grids differ
        for y, x in diff[:: max(1, len(diff) // 500)]:
            assert any(t.grid.x - 3 <= x / s <= t.grid.x + t.grid.w + 3
                       and t.grid.y - 3 <= y / s <= t.grid.y + t.grid.h + 3 for t in tallies.values())
        c = fill_page(page, written, px_per_mm=s, rng=np.random.default_rng(seed))
        assert np.array_equal(a, c)


def test_page3_tallies_the_invalid_votes():
    page = load_form().pages[3]
    (tally,) = page_style(page).tallies
    assert tally.total == "suara_tidak_sah" and tally.rows == 5 and tally.cols == 12
    img = fill_page(page, {"suara_tidak_sah": 9}, px_per_mm=3.0, rng=np.random.default_rng(4))
    assert _tally_ink_cells(img, tally, 3.0) == [2, 0, 0, 0, 0]


def test_a_rolled_sheet_lifts_its_corner_markers_away_from_the_camera_axis():
    """"curled": the ends of a rolled sheet stand off the table, so the pinhole camera sees the corner markers
    there moved outward, away from the photo's centre, by millimetres; a flat page's markers lie where the
    page's homography puts them."""
    from inference.register import register
    from inference.synth import make_sample

    page = load_form().pages[1]

    def marker_moves(s) -> list[float]:
        """How far (mm) each marker is seen (registration) off where the generator put the flat page's,
        outward > 0."""
        pts = np.float64([page.marker_points])
        seen = cv2.perspectiveTransform(pts, register(s.image).homography)[0]
        flat = cv2.perspectiveTransform(pts, s.homography)[0]
        centre = np.array(s.image.shape[1::-1]) / 2
        return [float(np.dot(a - b, (b - centre) / np.linalg.norm(b - centre))) / s.px_per_mm
                for a, b in zip(seen, flat, strict=True)]

    flat = marker_moves(make_sample(907, 1, condition="field", scale=0.6))
    rolled = marker_moves(make_sample(907, 1, condition="curled", scale=0.6))
    assert max(abs(v) for v in flat) < 1.0
    assert max(rolled) > 3.0 and min(rolled) > -1.0


def test_a_lens_bows_straight_lines_about_the_photo_centre():
    """"lens": radial distortion about the photo's centre. The centre stays put; a straight line off centre
    bows (barrel, k1 < 0: its middle lies further out than its ends, seen from the centre) by about k1 r^2
    of its distance; k1 = 0 changes nothing."""
    from inference.synth import _lens

    h, w = 600, 1000
    img = np.full((h, w), 255, np.uint8)
    img[h // 2, :] = 0  # a line through the centre stays straight
    img[100, :] = 0  # one 200 px above the centre bows
    assert np.array_equal(_lens(img, 0.0), img)
    out = _lens(img, -0.06)

    def row_of_line(col: int) -> float:
        c = 255.0 - out[: h // 2 - 50, col].astype(np.float64)
        return float((c * np.arange(c.size)).sum() / c.sum())

    assert out[h // 2, ::50].max() < 128  # the centre line is still there, on its row
    middle, end = row_of_line(w // 2), row_of_line(20)
    assert abs(middle - 100) < 1.5  # (on the vertical axis through the centre: moved by 200 k1 r^2 ~ 0.8 px)
    assert end - middle > 3.0  # towards the centre at the ends: the line bows
