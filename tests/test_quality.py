import numpy as np

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
