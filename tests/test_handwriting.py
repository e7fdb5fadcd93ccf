"""Synthetic handwriting: shapes, ranges, determinism, styles and marks."""

import numpy as np
import pytest

from inference import handwriting as hw


@pytest.mark.parametrize("digit", range(10))
def test_every_variant_renders_ink_at_the_requested_height(digit):
    for variant in hw.VARIANTS[digit]:
        img = hw.render_digit(digit, height_px=40, rng=np.random.default_rng(digit), style=variant)
        assert img.dtype == np.float32
        assert 0.0 <= img.min() and img.max() <= 1.0
        assert img.max() > 0.5
        rows = np.flatnonzero(img.max(axis=1) > 0.2)
        assert 32 <= rows[-1] - rows[0] + 1 <= 46
        assert img.shape[0] <= 40 + 12


def test_same_seed_same_image_and_writer_styles():
    a = hw.render_digit(7, height_px=30, rng=np.random.default_rng(5), style="formal_id")
    b = hw.render_digit(7, height_px=30, rng=np.random.default_rng(5), style="formal_id")
    np.testing.assert_array_equal(a, b)
    for style in hw.STYLES:
        writer = hw.Writer.random(np.random.default_rng(1), style=style)
        boxes = hw.render_number(1207, 3 + 1, height_px=30, rng=np.random.default_rng(2), writer=writer)
        assert len(boxes) == 4 and all(b is not None for b in boxes)


def test_marks_and_leading_boxes():
    rng = np.random.default_rng(3)
    for kind in hw.MARKS:
        img = hw.render_mark(kind, height_px=40, rng=rng)
        assert img.dtype == np.float32 and img.max() > 0.5
    dash = hw.render_mark("dash", height_px=40, rng=rng)
    assert dash.shape[0] >= 36  # a dash sits mid-height in a digit-sized image
    boxes = hw.render_number(27, 3, height_px=30, rng=rng, leading="blank")
    assert boxes[0] is None and boxes[1] is not None


def test_bad_input_is_rejected():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        hw.render_digit(10, height_px=30, rng=rng)
    with pytest.raises(ValueError):
        hw.render_digit(3, height_px=30, rng=rng, style="gothic")
    with pytest.raises(ValueError):
        hw.render_mark("tick", height_px=30, rng=rng)
    with pytest.raises(ValueError):
        hw.render_number(1234, 3, height_px=30, rng=rng)


def test_render_box_is_a_photographed_box_crop():
    rng = np.random.default_rng(4)
    ink = hw.render_digit(7, height_px=48, rng=rng, style="crossed")
    for guide in (True, "outline", False):
        crop = hw.render_box(ink, px_per_mm=3.0, rng=rng, guide=guide, cut_mm=(1.0, 1.0, 1.0, 1.0))
        assert crop.dtype == np.uint8 and crop.shape == (63, 63)  # (19 + 2) mm at 3 px/mm
        assert crop.min() < 100  # border and ink are dark
        assert np.median(crop) > 150  # mostly paper
    blank = hw.render_box(None, px_per_mm=4.0, rng=rng, cut_mm=(-1.0, -1.0, -1.0, -1.0), noise=0.0, light=0.0)
    assert blank.shape == (68, 68) and blank.min() > 120  # border cut off: only paper and faint guide dots
    with pytest.raises(ValueError):
        hw.render_box(None, px_per_mm=3.0, rng=rng, guide="stars")
