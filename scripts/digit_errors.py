#!/usr/bin/env python3
"""Which MNIST test digits do the int8 digit models misread, and which does every one of them misread?

Runs each ``--model`` (default: the shipped one) through ``DigitClassifier`` on the held-out MNIST split
and MNIST's official test set (the sets of ``scripts/bench_digits.py``), and prints per set: each model's
errors (those not shared by all of them listed), the digits that all models misread (label, what each
read, its confidence) and the accuracy a model would have if it made only those errors. A digit every
model gets wrong, whatever its network or recipe, is usually ambiguous or mislabelled; ``--sheet`` writes
them as a PNG contact sheet to look at. Digits are numbered by their place in the set: MNIST's test-set
index for the official test, the place in the seed's held-out split for held-out MNIST. Not run in CI.

  .venv/bin/python scripts/digit_errors.py --model /tmp/v10/digits.tflite --model /tmp/v14/digits.tflite \\
      [--sheet /tmp/common-errors.png]
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

from inference.digits import DigitClassifier, DigitModelError  # noqa: E402

TILE = 84  # px per digit on the contact sheet (28 px MNIST x 3)
SHORT = {"mnist_heldout": "held-out", "mnist_official_test": "official"}


def read_all(models: list[DigitClassifier], crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Labels (M, N) and top confidences (M, N) of every model on ``crops``."""
    labels, confs = [], []
    for clf in models:
        lab, prob = [], []
        for i in range(0, len(crops), 512):
            a, p = clf.classify(crops[i:i + 512])
            lab.append(a)
            prob.append(p.max(axis=1))
        labels.append(np.concatenate(lab))
        confs.append(np.concatenate(prob))
    return np.stack(labels), np.stack(confs)


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
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "tpskit")
    ap.add_argument("--seed", type=int, default=2024, help="training seed (picks the held-out MNIST split)")
    ap.add_argument("--sheet", type=Path, default=None,
                    help="write the digits every model misreads as a PNG (caption: set, index, label>read)")
    args = ap.parse_args(argv)
    if args.sheet is not None and (args.sheet.suffix.lower() != ".png" or not args.sheet.parent.is_dir()):
        ap.error(f"--sheet: give a .png file in an existing folder, got {args.sheet}")
    models, versions = [], []
    for path in args.model or [None]:
        try:
            models.append(DigitClassifier.load(path))
        except DigitModelError as e:
            ap.error(f"--model: {e}")
        versions.append(f"{models[-1].version} ({path or 'shipped'})")

    sets = {"mnist_heldout": mnist_set(args.cache_dir, args.seed),
            "mnist_official_test": mnist_official_set(args.cache_dir)}
    sheet_crops, sheet_captions = [], []
    for name, (crops, y) in sets.items():
        labels, confs = read_all(models, crops)
        wrong = labels != y[None, :]
        common = np.nonzero(wrong.all(axis=0))[0]
        shared = set(common.tolist())
        print(f"== {name}: {len(y)} digits")
        for v, w, lab in zip(versions, wrong, labels, strict=True):
            own = [i for i in np.nonzero(w)[0] if i not in shared]
            print(f"  {v}: {int(w.sum())} errors, accuracy {100 * (1 - w.mean()):.2f}%; not shared by all: "
                  + (", ".join(f"#{i} {int(y[i])}>{int(lab[i])}" for i in own) or "none"))
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
