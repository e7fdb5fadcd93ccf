#!/usr/bin/env python3
"""Benchmark the int8 digit classifier (and tesseract side by side) on held-out data; not run in CI.

Sets: held-out MNIST test split (borderless crops, never trained on), MNIST's official test set (other
writers; never trained on), held-out synthetic boxes (a seed the
training never used; field conditions, again under harder conditions, and again crossed by a sharp shadow
edge), and box crops cut by the page
reader from generated photos (``inference.reader.PageReader(...).box_crops(image)`` over ``inference.synth``
pages, when available).
Figures: accuracy per class and confusion matrix, expected calibration error, share of crops at or above
the confidence threshold and their accuracy; tesseract (``--psm 10``, digit whitelist) accuracy and ms/digit
on the same crops; speed on one thread (ms per page of --page-boxes crops in one batch, load and first
invoke); model size and parameter count.

  .venv/bin/python scripts/bench_digits.py [--json] [--model PATH] [--tesseract-n 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from train_digits import (  # noqa: E402
    ece,
    labelled_reader_crops,
    load_mnist,
    load_mnist_full,
    random_shadow,
    split_mnist,
    synth_crop,
)

from inference.digits import CLASSES, EMPTY, DigitClassifier, preprocess_batch  # noqa: E402


def mnist_set(cache: Path, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    x, y = load_mnist(cache)
    idx = split_mnist(y, seed)["test"]
    return [255 - im for im in x[idx]], y[idx]


def mnist_official_set(cache: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """MNIST's official test set: 10,000 digits by writers absent from MNIST's training set."""
    x, y = load_mnist_full(cache)["test"]
    return [255 - im for im in x], y


def synthetic_set(n_per_class: int, seed: int, hard: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
    """Held-out synthetic handwriting boxes (``hard``: wider blur, light, noise and JPEG ranges)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(11), n_per_class)
    return [synth_crop(int(lab), rng, mnist_pool=None, p_mnist=0.0, hard=hard) for lab in labels], labels


def shadow_set(n_per_class: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Held-out synthetic boxes (field conditions), each crossed by a sharp shadow edge."""
    crops, labels = synthetic_set(n_per_class, seed)
    rng = np.random.default_rng(seed + 1)
    return [random_shadow(crop, rng) for crop in crops], labels


def reader_set(n_pages: int, seed: int) -> tuple[list[np.ndarray], np.ndarray] | str:
    """Box crops cut by the page reader from generated photos (conditions clean, field, hard, pages 1-3 and
    sensor scales 0.6 and 1.0 in turn), or why the set is skipped.

    Truth: a box of a written number holds its digit; every box of a field left blank is EMPTY. Unused leading
    boxes are left out (the generator writes blank, X, dash or 0 there and does not record which).
    """
    try:
        from inference import synth

        samples = ((i, synth.make_sample(seed + i, 1 + i % 3, condition=synth.CONDITIONS[(i // 3) % 3],
                                         scale=(0.6, 1.0)[(i // 9) % 2])) for i in range(n_pages))
        crops, labels = [], []
        for _, crop, label in labelled_reader_crops(samples):
            crops.append(crop)
            labels.append(label)
        return (crops, np.asarray(labels)) if crops else "page reader returned no crops"
    except Exception as e:  # report in the figures, do not crash the benchmark
        return f"page-reader crops failed: {type(e).__name__}: {e}"


def evaluate(clf: DigitClassifier, crops: list[np.ndarray], y: np.ndarray, threshold: float) -> dict:
    labels, probs = [], []
    for i in range(0, len(crops), 256):
        lab, p = clf.classify(crops[i:i + 256])
        labels.append(lab)
        probs.append(p)
    pred = np.concatenate(labels)
    p = np.concatenate(probs)
    conf = p.max(axis=1)
    hi = conf >= threshold
    cm = np.zeros((11, 11), int)
    np.add.at(cm, (y, pred), 1)
    per_class = {CLASSES[c]: (float(cm[c, c] / cm[c].sum()) if cm[c].sum() else None) for c in range(11)}
    return {
        "n": int(len(y)),
        "accuracy": float((pred == y).mean()),
        "per_class": per_class,
        "ece": ece(p, y),
        "threshold": threshold,
        "share_confident": float(hi.mean()),
        "accuracy_confident": float((pred[hi] == y[hi]).mean()) if hi.any() else None,
        "errors_confident": int((pred[hi] != y[hi]).sum()),
        "confusion": cm.tolist(),
    }


def tesseract(crops: list[np.ndarray], y: np.ndarray) -> dict:
    exe = shutil.which("tesseract")
    if exe is None:
        return {"note": "tesseract not installed"}
    pred = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "crop.png"
        for c in crops:
            s = max(1.0, 100 / c.shape[0])  # tesseract wants characters ~30+ px tall
            img = cv2.resize(c, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC) if s > 1 else c
            cv2.imwrite(str(path), img)
            cmd = [exe, str(path), "-", "--psm", "10", "-c", "tessedit_char_whitelist=0123456789"]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
            digits = [ch for ch in out if ch.isdigit()]
            pred.append(int(digits[0]) if len(digits) == 1 else (EMPTY if not digits else -1))
    ms = (time.perf_counter() - t0) * 1e3 / max(1, len(crops))
    pred = np.asarray(pred)
    return {"n": len(crops), "accuracy": float((pred == y).mean()), "ms_per_digit": round(ms, 2),
            "digits_only_accuracy": float((pred[y != EMPTY] == y[y != EMPTY]).mean()) if (y != EMPTY).any()
            else None}


def speed(model: Path | None, crops: list[np.ndarray], page_boxes: int, repeats: int) -> dict:
    t0 = time.perf_counter()
    clf = DigitClassifier.load(model, num_threads=1)
    load_ms = (time.perf_counter() - t0) * 1e3
    page = crops[:page_boxes]
    t0 = time.perf_counter()
    clf.classify(page[:1])
    first_ms = (time.perf_counter() - t0) * 1e3
    clf.classify(page)  # allocate for this batch size
    pre, inv, tot = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = preprocess_batch(page)
        t1 = time.perf_counter()
        clf.logits(x)
        t2 = time.perf_counter()
        pre.append(t1 - t0)
        inv.append(t2 - t1)
        tot.append(t2 - t0)
    return {"runtime": clf.runtime, "threads": 1, "page_boxes": len(page), "load_ms": round(load_ms, 1),
            "first_invoke_ms": round(first_ms, 1), "ms_per_page": round(1e3 * float(np.median(tot)), 2),
            "preprocess_ms_per_page": round(1e3 * float(np.median(pre)), 2),
            "invoke_ms_per_page": round(1e3 * float(np.median(inv)), 2),
            "ms_per_box": round(1e3 * float(np.median(tot)) / len(page), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    ap.add_argument("--model", type=Path, default=None, help="model path (default: the shipped model)")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "tpskit")
    ap.add_argument("--seed", type=int, default=2024, help="training seed (picks the held-out MNIST split)")
    ap.add_argument("--synthetic-per-class", type=int, default=300)
    ap.add_argument("--reader-pages", type=int, default=72, help="generated pages cut by the page reader")
    ap.add_argument("--tesseract-n", type=int, default=200,
                    help="crops per set for tesseract (slow; 0 = skip the comparison)")
    ap.add_argument("--threshold", type=float, default=0.99)
    ap.add_argument("--page-boxes", type=int, default=60)
    args = ap.parse_args(argv)
    if min(args.tesseract_n, args.reader_pages) < 0 or min(args.synthetic_per_class, args.page_boxes) < 1:
        ap.error("--tesseract-n and --reader-pages must be 0 or more, --synthetic-per-class and --page-boxes "
                 "at least 1")
    if not 0.0 < args.threshold <= 1.0:
        ap.error(f"--threshold is a confidence above 0 and at most 1, got {args.threshold}")
    if args.model is not None and not args.model.is_file():
        ap.error(f"--model: no such model file {args.model}")

    clf = DigitClassifier.load(args.model)
    model_path = args.model or ROOT / "inference" / "models" / "digits.tflite"
    report: dict = {"model": {"version": clf.version, "size_bytes": model_path.stat().st_size,
                              "params": clf.meta.get("params"), "temperature": clf.temperature,
                              "runtime": clf.runtime}, "sets": {}, "tesseract": {}, "notes": []}
    sets: dict[str, tuple[list[np.ndarray], np.ndarray]] = {
        "mnist_heldout": mnist_set(args.cache_dir, args.seed),
        "mnist_official_test": mnist_official_set(args.cache_dir),
        "synthetic_heldout": synthetic_set(args.synthetic_per_class, args.seed + 1000),
        "synthetic_hard_heldout": synthetic_set(args.synthetic_per_class, args.seed + 1001, hard=True),
        "synthetic_shadow_heldout": shadow_set(args.synthetic_per_class, args.seed + 1002),
    }
    rs = reader_set(args.reader_pages, args.seed + 2000)
    if isinstance(rs, str):
        report["notes"].append(f"reader crops skipped: {rs}")
    else:
        sets["reader_crops"] = rs
    rng = np.random.default_rng(0)
    for name, (crops, y) in sets.items():
        report["sets"][name] = evaluate(clf, crops, y, args.threshold)
        if args.tesseract_n == 0:
            report["tesseract"][name] = {"note": "skipped (--tesseract-n 0)"}
            continue
        idx = rng.choice(len(y), min(args.tesseract_n, len(y)), replace=False)
        sub = [crops[i] for i in idx]
        t = tesseract(sub, y[idx])
        lab, _ = clf.classify(sub)
        t["model_accuracy_same_crops"] = float((lab == y[idx]).mean())
        report["tesseract"][name] = t
    report["speed"] = speed(args.model, sets["synthetic_heldout"][0], args.page_boxes, repeats=30)

    if args.json:
        print(json.dumps(report))
        return 0
    m = report["model"]
    print(f"model {m['version']}: {m['size_bytes']} bytes, {m['params']} params, T={m['temperature']}, "
          f"runtime {m['runtime']}")
    for name, r in report["sets"].items():
        acc_c = "—" if r["accuracy_confident"] is None else f"{100 * r['accuracy_confident']:.2f}%"
        print(f"\n== {name}: n={r['n']} accuracy {100 * r['accuracy']:.2f}%  ECE {r['ece']:.4f}  "
              f">= {r['threshold']}: {100 * r['share_confident']:.1f}% of crops, accuracy {acc_c}, "
              f"{r['errors_confident']} confident errors")
        pc = r["per_class"]
        print("per class: " + "  ".join(f"{k}:{100 * v:.1f}" for k, v in pc.items() if v is not None))
        print("confusion (rows true, cols read; 10 = empty):")
        print("      " + " ".join(f"{c:>5}" for c in range(11)))
        for i, row in enumerate(r["confusion"]):
            print(f"  {i:>2}  " + " ".join(f"{v:>5}" for v in row))
        t = report["tesseract"][name]
        if "accuracy" in t:
            print(f"tesseract on {t['n']} of the same crops: {100 * t['accuracy']:.1f}% "
                  f"(digits only {100 * (t['digits_only_accuracy'] or 0):.1f}%), "
                  f"{t['ms_per_digit']} ms/digit; "
                  f"int8 model on those crops: {100 * t['model_accuracy_same_crops']:.1f}%")
        else:
            print(f"tesseract: {t.get('note')}")
    s = report["speed"]
    print(f"\nspeed ({s['runtime']}, 1 thread): {s['ms_per_page']} ms per page of {s['page_boxes']} boxes "
          f"(preprocess {s['preprocess_ms_per_page']} ms + invoke {s['invoke_ms_per_page']} ms), "
          f"{s['ms_per_box']} ms/box; load {s['load_ms']} ms; first invoke {s['first_invoke_ms']} ms")
    for note in report["notes"]:
        print("note:", note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
