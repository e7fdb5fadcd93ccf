"""scripts/train_digits.py without TensorFlow (usage errors, model card), scripts/digit_errors.py and the
usage errors of scripts/bench_digits.py and scripts/bench_reader.py.

Training itself stays out of CI (it needs TensorFlow and ~50 min); the shipped model is tested in test_digits.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _script(name: str):
    """scripts/<name>.py imported as a module (once)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def train_digits():
    return _script("train_digits")


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("train_digits", ["--epochs", "0"], "nothing to train"),
        ("train_digits", ["--swa-epochs", "-1"], "must be 0 or more"),
        ("train_digits", ["--first-epoch", "-3"], "must be 0 or more"),
        ("train_digits", ["--init-from", "/nonexistent/model.keras"], "no such model file"),
        ("train_digits", ["--first-epoch", "40"], "give that run's model with --init-from"),
        ("train_digits", ["--swa-epochs", "8", "--swa-lr", "0"], "--swa-lr must be above 0"),
        ("train_digits", ["--mnist-per-epoch", "0"], "--mnist-per-epoch must be at least 1"),
        ("train_digits", ["--mnist-variants", "-1"], "--mnist-variants must be 0"),
        ("train_digits", ["--batch", "0"], "--batch must be at least 1"),
        ("train_digits", ["--p-mnist", "1.5"], "--p-mnist is a share from 0 to 1"),
        ("train_digits", ["--p-shadow", "-0.1"], "--p-shadow is a share from 0 to 1"),
        ("train_digits", ["--init-seed", "-1"], "--seed and --init-seed must be 0 or more"),
        ("train_digits", ["--seed", "-5"], "--seed and --init-seed must be 0 or more"),
        ("train_digits", ["--qat-epochs", "-1"], "must be 0 or more"),
        ("train_digits", ["--qat-epochs", "2", "--qat-lr", "0"], "--qat-lr must be above 0"),
        ("train_digits", ["--epochs", "0", "--qat-epochs", "2"], "--qat-epochs alone fine-tunes a trained"),
        ("train_digits", ["--qat-distil"], "--qat-distil shapes the quantisation-aware epochs"),
        ("train_digits", ["--teacher", "/nonexistent/model.keras"], "--teacher: no such model file"),
        ("train_digits", ["--epochs", "0", "--qat-epochs", "2", "--init-from", __file__,
                          "--teacher", __file__], "--teacher shapes the training epochs"),
        ("train_digits", ["--teacher", __file__, "--distil-weight", "0"], "--distil-weight must be in"),
        ("train_digits", ["--teacher", __file__, "--distil-temp", "-1"], "--distil-temp above 0"),
        ("train_digits", ["--distil-temp", "2"], "--distil-weight and --distil-temp shape distillation"),
        ("bench_reader", ["--conditions", "clean,rain"], "give names from clean, field, hard, sun"),
        ("bench_reader", ["--conditions", ","], "--conditions: give names from"),
        ("bench_reader", ["--tps", "0"], "--tps must be at least 1"),
        ("bench_reader", ["--scale", "0"], "--scale above 0"),
        ("bench_reader", ["--model", "/nonexistent/digits.tflite"], "--model: no such model file"),
        ("bench_digits", ["--tesseract-n", "-1"], "--tesseract-n and --reader-pages must be 0 or more"),
        ("bench_digits", ["--reader-pages", "-2"], "--tesseract-n and --reader-pages must be 0 or more"),
        ("bench_digits", ["--synthetic-per-class", "0"], "--synthetic-per-class and --page-boxes at least 1"),
        ("bench_digits", ["--page-boxes", "0"], "--synthetic-per-class and --page-boxes at least 1"),
        ("bench_digits", ["--threshold", "1.5"], "--threshold is a confidence above 0 and at most 1"),
        ("bench_digits", ["--model", "/nonexistent/digits.tflite"], "--model: no such model file"),
    ],
)
def test_bad_arguments_are_usage_errors(capsys, script, argv, message):
    with pytest.raises(SystemExit) as exc:
        _script(script).main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def _card(train_digits, tmp_path: Path, **changes) -> str:
    meta = json.loads((ROOT / "inference" / "models" / "digits.json").read_text())
    meta.update(changes)
    blank = [[0] * 11 for _ in range(11)]
    figures = {name: dict(f, confusion=blank) for name, f in meta["figures"].items()}
    path = tmp_path / "card.md"
    train_digits.write_card(path, meta, figures)
    return path.read_text()


def test_card_names_the_starting_model_and_weight_averaging(train_digits, tmp_path):
    plain = _card(train_digits, tmp_path)
    assert "weight averaging" not in plain and "Started from" not in plain
    assert "40 epochs, batch 128" in _card(train_digits, tmp_path, epochs=40)
    assert "40 epochs, batch 256" in _card(train_digits, tmp_path, epochs=40, batch=256), "the batch that ran"
    swa = _card(train_digits, tmp_path, init_from="digits-wide-seed2024-1.keras", first_epoch=40, epochs=0,
                swa_epochs=8, swa_lr=5e-4)
    assert "0 epochs, batch" not in swa, "no cosine stage is described when it did not run"
    assert "Started from the float model `digits-wide-seed2024-1.keras`" in swa
    assert "epoch 40" in swa
    assert "8 epochs at the constant LR 0.0005" in swa
    assert "stochastic weight averaging" in swa
    stage = swa[swa.index("  Started from"):swa.index("weight averaging).")]
    assert all(len(line) <= 110 for line in stage.splitlines()), "the stage text is wrapped like the card"


def test_card_describes_quantisation_aware_fine_tuning(train_digits, tmp_path):
    assert "quantisation-aware" not in _card(train_digits, tmp_path, qat_epochs=0)
    card = _card(train_digits, tmp_path, epochs=40, qat_epochs=3, qat_lr=1e-4)
    stage = " ".join(card[card.index("  40 epochs"):card.index("## Results")].split())
    assert "batch norms folded into the convs and 3 epochs of quantisation-aware fine-tuning" in stage
    assert "peak LR 0.0001, cosine decay to 0" in stage
    assert "float model's own logits" not in stage
    card = _card(train_digits, tmp_path, epochs=0, init_from="digits-wide-seed2024-1.keras", first_epoch=40,
                 qat_epochs=6, qat_lr=3e-4, qat_distil=True)
    stage = " ".join(card[card.index("  Started from"):card.index("## Results")].split())
    assert "6 epochs of quantisation-aware fine-tuning" in stage
    assert "peak LR 0.0003, cosine decay to 0; fitted to the float model's own logits, not the labels)" \
        in stage


def test_card_compares_the_int8_model_with_its_float_model(train_digits, tmp_path):
    meta = json.loads((ROOT / "inference" / "models" / "digits.json").read_text())
    figures = {name: dict(f, confusion=[[0] * 11 for _ in range(11)]) for name, f in meta["figures"].items()}
    figures["mnist_test_raw"].update(float_accuracy=0.997, reads_unlike_float=3)
    figures["calibration"].pop("float_accuracy", None)  # a run from before the float columns
    figures["calibration"].pop("reads_unlike_float", None)
    path = tmp_path / "card.md"
    train_digits.write_card(path, meta, figures)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in path.read_text().splitlines()
            if line.startswith("| ")}
    assert rows["set"][-2:] == ["float model", "int8 ≠ float |"]
    assert rows["mnist_test_raw"][-2:] == ["99.70%", "3 |"]
    assert rows["calibration"][-2:] == ["—", "— |"]


def test_card_describes_knowledge_distillation(train_digits, tmp_path):
    assert "distillation" not in _card(train_digits, tmp_path, epochs=40, teacher=None)
    card = _card(train_digits, tmp_path, epochs=40, teacher="digits-wide-seed2024-1.keras", distil_weight=0.5,
                 distil_temp=4.0)
    stage = " ".join(card[card.index("  40 epochs"):card.index("## Results")].split())
    assert "Knowledge distillation from the float model `digits-wide-seed2024-1.keras`" in stage
    assert "0.5 x cross-entropy with the labels + 0.5 x T² x cross-entropy with the teacher's" in stage
    assert "T = 4." in stage


def test_card_names_a_replicate_runs_initialisation_seed(train_digits, tmp_path):
    assert "(seed 2024)." in _card(train_digits, tmp_path, seed=2024, init_seed=2024)
    assert "(seed 2024, initialisation seed 7)." in _card(train_digits, tmp_path, seed=2024, init_seed=7)


def test_card_states_the_mnist_share_of_the_training_boxes(train_digits, tmp_path):
    share = "% of the training\n  boxes' digits are MNIST digits"
    assert "50" + share in _card(train_digits, tmp_path, p_mnist=0.5)
    assert "100" + share in _card(train_digits, tmp_path, p_mnist=1.0)


def test_pooled_grid_follows_the_network(train_digits, tmp_path):
    assert train_digits.head_grid("wide") == 3, "valid pooling: 28 -> 14 -> 7 -> 3"
    assert train_digits.head_grid("wide-4x4") == 4, "same pooling keeps the 7th row and column: 7 -> 4"
    assert "the 576 pooled 3×3 features straight into dense 11" in _card(train_digits, tmp_path)
    assert "the 1024 pooled 4×4 features straight into dense 11" in _card(train_digits, tmp_path,
                                                                          arch="wide-4x4")


@pytest.fixture(scope="module")
def digit_errors():
    return _script("digit_errors")


def test_digit_errors_refuses_a_missing_model(digit_errors, capsys):
    with pytest.raises(SystemExit) as exc:
        digit_errors.main(["--model", "/nonexistent/digits.tflite"])
    assert exc.value.code == 2
    assert "digit model not found: /nonexistent/digits.tflite" in capsys.readouterr().err


@pytest.mark.parametrize("sheet", ["/nonexistent/errors.png", "errors.jpg.txt"])
def test_digit_errors_refuses_a_sheet_it_cannot_write(digit_errors, capsys, sheet):
    with pytest.raises(SystemExit) as exc:
        digit_errors.main(["--sheet", sheet])
    assert exc.value.code == 2
    assert "--sheet: give a .png file in an existing folder" in capsys.readouterr().err


def test_contact_sheet_fills_whole_rows(digit_errors):
    import numpy as np

    crops = [np.full((28, 28), 255, np.uint8)] * 13
    sheet = digit_errors.contact_sheet(crops, [f"#{i}: 3>5" for i in range(13)], per_row=10)
    tile_h, tile_w = digit_errors.TILE + 28, digit_errors.TILE + 12
    assert sheet.shape == (2 * tile_h, 10 * tile_w)
    assert sheet.dtype == np.uint8 and (sheet < 255).any(), "captions are drawn"


def test_digit_errors_refuses_a_missing_keras_model(digit_errors, capsys):
    with pytest.raises(SystemExit) as exc:
        digit_errors.main(["--keras", "/nonexistent/digits.keras"])
    assert exc.value.code == 2
    assert "--keras: no such model file /nonexistent/digits.keras" in capsys.readouterr().err


def test_digit_errors_keras_without_tensorflow_is_a_usage_error(digit_errors, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorflow(name, *args, **kwargs):
        if name == "tensorflow":
            raise ImportError("No module named 'tensorflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorflow)
    with pytest.raises(SystemExit) as exc:
        digit_errors.main(["--keras", str(ROOT / "README.md")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--keras needs TensorFlow: run this script with the training venv's Python" in err


def test_read_all_marks_top_two_ties(digit_errors):
    import numpy as np

    class Fixed:
        """Probabilities as an int8 model gives them: equal where the quantised logits tie."""

        def classify(self, crops):
            p = np.array([[0.5, 0.5] + [0.0] * 9, [0.1, 0.9] + [0.0] * 9])[:len(crops)]
            return p.argmax(axis=1), p

    labels, confs, ties = digit_errors.read_all([Fixed()], [np.zeros((28, 28), np.uint8)] * 2)
    assert labels.tolist() == [[0, 1]], "a tie reads as the lower class"
    assert confs.tolist() == [[0.5, 0.9]]
    assert ties.tolist() == [[True, False]]


def test_card_states_what_a_blank_box_with_a_faint_stroke_gets(train_digits, tmp_path):
    card = " ".join(_card(train_digits, tmp_path, blank_empty_prob=0.995, faint_empty_prob=0.5).split())
    assert "finds no ink at all gets P(empty) = 0.995" in card
    assert "still holds a faint stroke" in card and "gets P(empty) = 0.5" in card
    assert "never read as blank with confidence" in card


def test_blank_empty_probs_tell_faint_strokes_apart(train_digits):
    empty = train_digits.EMPTY
    y = np.array([empty] * 8 + [3, 1] + [empty, 7, 7, 7])
    blank = np.array([True] * 8 + [True, False] + [True] * 4)
    faint = np.array([False] * 10 + [True] * 4)
    pe, pf = train_digits.blank_empty_probs(blank, faint, y)
    assert pe == np.floor((8 + 1) / (9 + 2) * 1e4) / 1e4, "blank without a faint stroke: 8 empty of 9"
    assert pf == np.floor((1 + 1) / (4 + 2) * 1e4) / 1e4, "with a faint stroke: 1 empty of 4"


def test_random_shadow_darkens_one_side_of_a_straight_edge(train_digits):
    import numpy as np

    paper = np.full((80, 80), 200, np.uint8)
    shaded = train_digits.random_shadow(paper, np.random.default_rng(1))
    assert shaded.shape == paper.shape and shaded.dtype == np.uint8
    dark = shaded < 140  # 30-55% darker: 90-140
    assert 0.1 < dark.mean() < 0.9 and (shaded[~dark] >= 140).all()
