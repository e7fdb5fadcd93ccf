"""Registration on generated photos: accuracy against the generator's true homography, and retake reasons."""

import cv2
import numpy as np
import pytest

from inference.register import RetakeError, register
from inference.synth import make_sample, make_tps

SCALE = 0.5  # ~2 px/mm on the page: small and fast
TPS = make_tps(np.random.default_rng(3))


@pytest.mark.parametrize("page,condition,upside_down", [(1, "clean", False), (2, "field", True),
                                                         (3, "hard", False), (1, "hard", True)])
def test_registration_maps_boxes_within_half_a_millimetre(page, condition, upside_down):
    s = make_sample(40 + page, page, condition=condition, scale=SCALE, tps=TPS, upside_down=upside_down)
    reg = register(s.image, min_px_per_mm=1.5)
    assert reg.page.page == page
    pts = np.float64([[b.center for f in reg.page.fields for b in f.boxes]])
    got = cv2.perspectiveTransform(pts, reg.homography)[0]
    true = cv2.perspectiveTransform(pts, s.homography)[0]
    err_mm = np.hypot(*(got - true).T).max() / reg.px_per_mm
    assert err_mm < 0.5
    assert abs(abs(reg.rotation_deg) - 90) < 10  # the page lies along the sensor's long side
    assert (reg.rotation_deg < 0) == upside_down


@pytest.mark.parametrize("kind,expected", [("blurred", {"blurred"}), ("dark", {"too_dark"}),
                                           ("cut_off", {"not_in_frame"}), ("no_form", {"no_form"})])
def test_spoiled_photos_are_refused_with_a_reason(kind, expected):
    s = make_sample(7, 2, scale=SCALE, tps=TPS, spoiled=kind)
    with pytest.raises(RetakeError) as exc:
        register(s.image, min_px_per_mm=1.5)
    assert set(exc.value.reasons) & expected, exc.value.reasons


def test_low_resolution_and_garbage_are_refused():
    s = make_sample(8, 3, scale=SCALE, tps=TPS, condition="clean")
    with pytest.raises(RetakeError) as exc:
        register(s.image, min_px_per_mm=4.0)
    assert "low_resolution" in exc.value.reasons
    with pytest.raises(RetakeError) as exc:
        register(np.zeros((10, 10), np.float32))
    assert exc.value.reasons == ("not_an_image",)


def test_generator_is_deterministic():
    a = make_sample(5, 1, scale=0.3, tps=TPS)
    b = make_sample(5, 1, scale=0.3, tps=TPS)
    assert a.jpeg == b.jpeg and a.written == b.written


def test_any_rotation_of_the_page_is_registered():
    s = make_sample(9, 3, condition="clean", scale=SCALE, tps=TPS)
    im = cv2.copyMakeBorder(s.image, 500, 500, 0, 0, cv2.BORDER_CONSTANT, value=(90, 90, 90))
    h, w = im.shape[:2]
    for angle in (45, 200):
        rot = cv2.warpAffine(im, cv2.getRotationMatrix2D((w / 2, h / 2), angle, 0.8), (w, h),
                             borderValue=(90, 90, 90))
        reg = register(rot, min_px_per_mm=1.0)
        assert reg.page.page == 3 and reg.residual_mm < 1.0
