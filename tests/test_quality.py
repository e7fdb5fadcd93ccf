import cv2
import numpy as np
import pytest

from capture.quality import assess
from inference.synth import make_sample, make_tps

TPS = make_tps(np.random.default_rng(1))


def test_good_photo_passes_and_spoiled_ones_fail():
    good = assess(make_sample(1, 3, condition="clean", scale=0.5, tps=TPS).image)
    assert good.ok and good.reasons == () and good.metrics["sharpness"] > 0.3
    blurred = assess(make_sample(2, 3, scale=0.5, tps=TPS, spoiled="blurred").image)
    assert not blurred.ok and "blurred" in blurred.reasons
    dark = assess(make_sample(3, 3, scale=0.5, tps=TPS, spoiled="dark").image)
    assert not dark.ok and "too_dark" in dark.reasons
    assert dark.messages() and "gelap" in dark.messages()[0]


def test_glare_and_non_images():
    img = np.full((400, 600, 3), 200, np.uint8)
    img[:, :300] = 255
    q = assess(img)
    assert "glare" in q.reasons
    assert assess(np.zeros((5, 5), np.uint8)).reasons == ("not_an_image",)
    assert assess("not an array").reasons == ("not_an_image",)


def test_gray_with_a_channel_axis_odd_channel_counts_and_thin_strips_do_not_crash():
    photo = make_sample(1, 3, condition="clean", scale=0.5, tps=TPS).image
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    q = assess(gray)
    assert assess(gray[:, :, None]) == q  # (H, W, 1) is gray, as PIL/numpy conversions give it
    assert assess(cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA)).ok  # BGRA
    for bad in (np.dstack([gray, gray]), np.dstack([photo, gray, gray])):  # 2 or 5 channels: not a photo
        assert assess(bad).reasons == ("not_an_image",)
    for shape in ((16, 100_000), (40, 100_000), (100_000, 20)):  # a strip: shrunk to nothing before
        assert not assess(np.full(shape, 200, np.uint8)).ok


def test_a_white_frame_is_too_bright_not_too_dark():
    white = assess(np.full((600, 900, 3), 255, np.uint8))
    assert white.reasons == ("too_bright",) and "terang" in white.messages()[0]
    photo = make_sample(1, 3, condition="clean", scale=0.5, tps=TPS).image.astype(np.float32)
    assert assess(np.clip(photo * 6, 0, 255).astype(np.uint8)).reasons == ("too_bright",)  # over-exposed
    assert assess(np.zeros((600, 900), np.uint8)).reasons == ("too_dark",)


def test_an_empty_lit_stand_is_blank_not_too_dark():
    from inference.register import RetakeError, register

    rng = np.random.default_rng(0)
    h, w = 1200, 1800
    for level in (70, 140, 200):  # a plain table under the lamp, nothing on it: the button pressed too early
        table = level + 10 * np.arange(w)[None, :] / w + rng.normal(0, 2, (h, w))
        table = cv2.GaussianBlur(table.clip(0, 255).astype(np.uint8), (0, 0), 3)
        q = assess(table)
        assert q.reasons == ("blank",) and "formulir" in q.messages()[0]
        with pytest.raises(RetakeError) as exc:
            register(table)
        assert exc.value.reasons == ("no_form",)  # was "too_dark": turn on the light
