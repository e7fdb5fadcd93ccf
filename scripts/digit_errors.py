#!/usr/bin/env python3
"""Which MNIST test digits do the int8 digit models misread, and which does every one of them misread?

Runs each ``--model`` (default: the shipped one) through ``DigitClassifier`` on the held-out MNIST split
and MNIST's official test set (the sets of ``scripts/bench_digits.py``), and prints per set: each model's
errors (those not shared by all of them listed), the digits that all models misread (label, what each
read, its confidence) and the accuracy a model would have if it made only those errors. A digit every
model gets wrong, whatever its network or recipe, is usually ambiguous or mislabelled; ``--sheet`` writes
them as a PNG contact sheet to look at. Digits are numbered by their place in the set: MNIST's test-set
index for the official test, the place in the seed's held-out split for held-out MNIST. Not run in CI.

An int8 error whose top two classes have the same quantised logit is counted as a tie: argmax took the
lower class, a coin flip the float model would not have made. ``--keras`` also reads float Keras models
(the training run saves them in CACHE/models/; needs TensorFlow, so run it with the training venv's
Python), to see what quantisation costs.

  .venv/bin/python scripts/digit_errors.py --model /tmp/v10/digits.tflite --model /tmp/v14/digits.tflite \\
      [--sheet /tmp/common-errors.png]
  /opt/tfvenv/bin/python scripts/digit_errors.py --keras ~/.cache/tpskit/models/digits-wide-seed2024-N.keras
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_digits import mnist_official_set, mnist_set  # noqa: E402

from inference.digits import DigitClassifier, DigitModelError, _softmax, preprocess_batch  # noqa: E402

TILE = 84  # px per digit on the contact sheet (28 px MNIST x 3)
SHORT = {"mnist_heldout": "held-out", "mnist_official_test": "official"}


class KerasReader:
    """A float Keras model saved by the training run, read like a ``DigitClassifier`` (uncalibrated)."""

    def __init__(self, path: Path) -> None:
        import tensorflow as tf  # only here: the kit's venv has no TensorFlow

        self.model = tf.keras.models.load_model(path, compile=False)
        self.version = f"float {path.stem}"

    def classify(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        p = _softmax(self.model.predict(preprocess_batch(crops), verbose=0))
        return p.argmax(axis=1), p


def read_all(models: list, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, top confidences and top-two ties (each (M, N)) of every model on ``crops``."""
    labels, confs, ties = [], [], []
    for clf in models:
        lab, prob = [], []
        for i in range(0, len(crops), 512):
            a, p = clf.classify(crops[i:i + 512])
            lab.append(a)
            prob.append(p)
        p = np.concatenate(prob)
        top2 = np.sort(p, axis=1)[:, -2:]
        labels.append(np.concatenate(lab))
        confs.append(top2[:, 1])
        ties.append(top2[:, 0] == top2[:, 1])
    return np.stack(labels), np.stack(confs), np.stack(ties)


def contact_sheet(crops: list[np.ndarray], captions: list[str], per_row: int = 10) -> np.ndarray:
    """Digits (dark ink on light paper) scaled up in a grid, each with its caption above it."""
    tiles = []
    for crop, caption in zip(crops, captions, strict=True):
        im = cv2.resize(crop, (TILE, TILE), interpolation=cv2.INTER_NEAREST)
        im = cv2.copyMakeBorder(im, 22, 6, 6, 6, cv2.BORDER_CONSTANT, value=255)
        cv2.putText(im, caption, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 0, 1, cv2.LINE_AA)
        tiles.append(im)
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (-len(tiles) % per_row)
    return np.vstack([np.hstack(tiles[i:i + per_row]) for i in range(0, len(tiles), per_row)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, action="append", default=None,
                    help="an int8 model with its .json next to it (repeat; default: the shipped model)")
    ap.add_argument("--keras", type=Path, action="append", default=[],
                    help="also a float Keras model from CACHE/models/ (repeat; needs TensorFlow)")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "tpskit")
    ap.add_argument("--seed", type=int, default=2024, help="training seed (picks the held-out MNIST split)")
    ap.add_argument("--sheet", type=Path, default=None,
                    help="write the digits every model misreads as a PNG (caption: set, index, label>read)")
    args = ap.parse_args(argv)
    if args.sheet is not None and (args.sheet.suffix.lower() != ".png" or not args.sheet.parent.is_dir()):
        ap.error(f"--sheet: give a .png file in an existing folder, got {args.sheet}")
    models, versions = [], []
    for path in args.model or ([] if args.keras else [None]):
        try:
            models.append(DigitClassifier.load(path))
        except DigitModelError as e:
            ap.error(f"--model: {e}")
        versions.append(f"{models[-1].version} ({path or 'shipped'})")
    for path in args.keras:
        if not path.is_file():
            ap.error(f"--keras: no such model file {path}")
        try:
            models.append(KerasReader(path))
        except ImportError:
            ap.error("--keras needs TensorFlow: run this script with the training venv's Python")
        except Exception as e:  # Keras raises ValueError/OSError/zip errors with its own text
            ap.error(f"--keras: {path} is not a saved Keras model: {e}")
        versions.append(models[-1].version)

    sets = {"mnist_heldout": mnist_set(args.cache_dir, args.seed),
            "mnist_official_test": mnist_official_set(args.cache_dir)}
    sheet_crops, sheet_captions = [], []
    for name, (crops, y) in sets.items():
        labels, confs, ties = read_all(models, crops)
        wrong = labels != y[None, :]
        common = np.nonzero(wrong.all(axis=0))[0]
        shared = set(common.tolist())
        print(f"== {name}: {len(y)} digits")
        for v, w, lab, tie in zip(versions, wrong, labels, ties, strict=True):
            own = [i for i in np.nonzero(w)[0] if i not in shared]
            n_ties = int((w & tie).sum())
            print(f"  {v}: {int(w.sum())} errors, accuracy {100 * (1 - w.mean()):.2f}%"
                  + (f" ({n_ties} of them top-two ties)" if n_ties else "") + "; not shared by all: "
                  + (", ".join(f"#{i} {int(y[i])}>{int(lab[i])}" + (" (tie)" if tie[i] else "") for i in own)
                     or "none"))
        print(f"  misread by all {len(models)} model(s): {len(common)} digits; a model making only these "
              f"errors would read {100 * (1 - len(common) / len(y)):.2f}%")
        for i in common:
            pairs = zip(labels[:, i], confs[:, i], strict=True)
            reads = ", ".join(f"{int(lab)} ({c:.2f})" for lab, c in pairs)
            print(f"    #{i}: label {int(y[i])}, read {reads}")
            sheet_crops.append(crops[i])
            sheet_captions.append(f"{SHORT[name]} #{i}: {int(y[i])}>{int(labels[0, i])}")
    if args.sheet and sheet_crops:
        if not cv2.imwrite(str(args.sheet), contact_sheet(sheet_crops, sheet_captions)):
            print(f"cannot write {args.sheet} (is the folder writable?)", file=sys.stderr)
            return 1
        print(f"wrote {args.sheet} ({len(sheet_crops)} digits)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
