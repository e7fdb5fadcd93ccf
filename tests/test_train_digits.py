"""scripts/train_digits.py without TensorFlow: its usage errors and the model card it writes.

Training itself stays out of CI (it needs TensorFlow and ~50 min); the shipped model is tested in test_digits.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def train_digits():
    spec = importlib.util.spec_from_file_location("train_digits", ROOT / "scripts" / "train_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "nothing to train"),
        (["--swa-epochs", "-1"], "must be 0 or more"),
        (["--first-epoch", "-3"], "must be 0 or more"),
        (["--init-from", "/nonexistent/model.keras"], "no such model file"),
        (["--first-epoch", "40"], "give that run's model with --init-from"),
        (["--swa-epochs", "8", "--swa-lr", "0"], "--swa-lr must be above 0"),
        (["--mnist-per-epoch", "0"], "--mnist-per-epoch must be at least 1"),
        (["--mnist-variants", "-1"], "--mnist-variants must be 0"),
    ],
)
def test_bad_arguments_are_usage_errors(train_digits, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        train_digits.main(argv)
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
    swa = _card(train_digits, tmp_path, init_from="digits-wide-seed2024-1.keras", first_epoch=40, epochs=0,
                swa_epochs=8, swa_lr=5e-4)
    assert "0 epochs, batch" not in swa, "no cosine stage is described when it did not run"
    assert "Started from the float model `digits-wide-seed2024-1.keras`" in swa
    assert "epoch 40" in swa
    assert "8 epochs at the constant LR 0.0005" in swa
    assert "stochastic weight averaging" in swa
    stage = swa[swa.index("  Started from"):swa.index("weight averaging).")]
    assert all(len(line) <= 110 for line in stage.splitlines()), "the stage text is wrapped like the card"
