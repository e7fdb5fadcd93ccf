"""Handwritten digit classifier for the boxes of Formulir C.HASIL: 0-9 and EMPTY (blank, X, dash, scribble).

``DigitClassifier.load()`` opens the int8 TFLite model shipped in ``inference/models/digits.tflite`` with its
metadata ``digits.json`` (input size, classes, calibration temperature, version). ``classify(crops)`` takes
the box crops the page reader cuts (uint8 grayscale, any size, dark ink on light paper, printed border and
dotted guide possibly inside), preprocesses each with ``preprocess()`` and runs ONE interpreter invoke
for the batch.
Probabilities are ``softmax(logits / T)`` with the temperature ``T`` fitted on held-out data, so a prediction
made with confidence 0.99 is right about 99 times in 100 (see docs/model-card-digits.md).

Runtime: ``ai_edge_litert.interpreter.Interpreter`` (LiteRT; works with NumPy 2, XNNPACK) first, then
``tflite_runtime.interpreter.Interpreter`` (tflite-runtime 2.14, the last release: it only works with
numpy < 2, e.g. Raspberry Pi OS's apt numpy), then ``tensorflow.lite`` (training environment only).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["EMPTY", "CLASSES", "DigitClassifier", "DigitModelError", "paper_level", "preprocess",
           "preprocess_batch", "preprocess_faint"]

EMPTY = 10
CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10)) + ("empty",)
MODEL_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = MODEL_DIR / "digits.tflite"

INPUT_SIZE = 28  # model input is INPUT_SIZE x INPUT_SIZE ink (0..1), like MNIST
_DIGIT_BOX = 20  # the ink is scaled to fit DIGIT_BOX x DIGIT_BOX and centred by mass, like MNIST
_WORK = 64  # crops are first resampled so that their longer side is _WORK px
_MIN_CROP = 8
# A mark in a box where preprocess() finds no writing, at least FAINT_EXTENT of the crop's longer side long
# (~3.5 mm; a guide dot is 0.7 mm), clear of its edges and darker than FAINT_INK (below the 0.17 that writing
# needs), is a faint or blurred stroke the ink thresholds lost (a ballpoint running dry, a dim or blurred
# photo), not an empty box: classify() does not call it empty with confidence. Measured on generated boxes:
# 0 of 400 blank boxes (guides, blur, JPEG, uneven light, neighbours) raise it; 79 of the 92 digits written
# at ink darkness 0.2-0.4 that preprocess() loses do (at 0.12: 1 blank and 85; at 0.10: 11 blank and 91).
FAINT_EXTENT = 0.15
FAINT_INK = 0.13


class DigitModelError(RuntimeError):
    """The model file or its metadata is missing or unusable."""


# ------------------------------------------------------------------------------------------ preprocessing

def _check_crop(crop: Any, i: int) -> np.ndarray:
    if not isinstance(crop, np.ndarray):
        raise ValueError(f"crop {i}: expected a numpy array, got {type(crop).__name__}")
    if crop.dtype != np.uint8:
        raise ValueError(f"crop {i}: expected dtype uint8 (grayscale 0..255), got {crop.dtype}; "
                         "convert with cv2.cvtColor(..., COLOR_BGR2GRAY) or np.clip(...).astype(np.uint8)")
    if crop.ndim != 2:
        raise ValueError(f"crop {i}: expected a 2-D grayscale array (H, W), got shape {crop.shape}; "
                         "convert colour crops with cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)")
    if min(crop.shape) < _MIN_CROP:
        raise ValueError(f"crop {i}: too small ({crop.shape[1]}x{crop.shape[0]} px); a box needs at least "
                         f"{_MIN_CROP}x{_MIN_CROP} px (2 px/mm or more)")
    return crop


def _ink_map(crop: np.ndarray) -> np.ndarray:
    """Resample to the working size and turn gray into ink darkness 0..1 relative to the local paper."""
    h, w = crop.shape
    s = _WORK / max(h, w)
    size = (max(_MIN_CROP, round(w * s)), max(_MIN_CROP, round(h * s)))
    # INTER_LINEAR_EXACT: OpenCV's bit-exact bilinear for uint8. Plain INTER_LINEAR uses fixed-point SIMD that
    # rounds differently on x86 and arm64 and moved a page status on the Pi (docs/arm64.md).
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR_EXACT
    g = cv2.resize(np.ascontiguousarray(crop), size, interpolation=interp).astype(np.float32)
    return 1.0 - g / paper_level(g, 21)


def paper_level(g: np.ndarray, k: int) -> np.ndarray:
    """The paper's brightness (float32) under every pixel of a gray image (uint8 or float32): a ``k`` x ``k``
    closing (it removes marks thinner than ``k`` px: strokes, printed lines, guide dots), smoothed but never
    above the closing, so that a sharp shadow edge stays a step instead of a dark band. Never below the pixel
    itself nor 24 (an all-dark image has no paper to divide by)."""
    kernel = np.ones((k, k), np.uint8)  # rectangular: separable, fast
    bg = cv2.morphologyEx(g, cv2.MORPH_CLOSE, kernel, borderType=cv2.BORDER_REPLICATE)
    s = max(3, (k * 3) // 7)
    bg = np.minimum(cv2.blur(bg, (s, s)), bg)
    return np.maximum(np.maximum(bg, g).astype(np.float32, copy=False), np.float32(24.0))


def _longest_runs(m: np.ndarray) -> np.ndarray:
    """Length of the longest run of True in every row of a 2-D bool array."""
    idx = np.arange(m.shape[1])
    last_off = np.maximum.accumulate(np.where(m, -1, idx), axis=1)
    run = np.where(m, idx - last_off, 0)
    return run.max(axis=1)


def _clear_borders(ink: np.ndarray, *, thresh: float = 0.3, frac: float = 0.8,
                   band: float = 0.3) -> tuple[int, int, int, int]:
    """Blank printed box lines near the crop edges and everything between them and the edge (in place).

    A printed border is one unbroken line across >= 85% of the crop; no digit stroke is that long.
    Returns the inner window left free (top, bottom, left, right; bottom/right exclusive).
    """
    m = (ink > thresh).astype(np.uint8)
    h, w = ink.shape
    lim = [0, h, 0, w]
    for axis in (0, 1):  # 0: horizontal lines (rows), 1: vertical lines (columns)
        mm = m if axis == 0 else m.T
        grown = cv2.dilate(mm, np.ones((3, 3), np.uint8)) > 0  # tolerate rotation, blur and JPEG gaps
        runs = _longest_runs(grown)
        n, width = grown.shape
        b = max(2, int(n * band))
        lines = np.flatnonzero(runs > frac * width)
        # (a border leaving a slightly rotated crop shows only partly, along the edge: preprocess() drops
        # such slivers as components, so a digit stem near the edge is not cut here)
        top = lines[lines < b]
        bot = lines[lines >= n - b]
        lo = int(top.max()) + 2 if top.size else 0  # +1 px: the edge of a slightly tilted line
        hi = int(bot.min()) - 1 if bot.size else n
        if axis == 0:
            ink[:lo, :] = 0.0
            ink[hi:, :] = 0.0
            lim[0], lim[1] = lo, hi
        else:
            ink[:, :lo] = 0.0
            ink[:, hi:] = 0.0
            lim[2], lim[3] = lo, hi
    return lim[0], lim[1], lim[2], lim[3]


def _at_edges(x0: np.ndarray, y0: np.ndarray, cw: np.ndarray, ch: np.ndarray,
              window: tuple[int, int, int, int]) -> tuple[np.ndarray, ...]:
    """Which components (boxes x0, y0, cw, ch) touch the left, right, top, bottom of the crop or of the
    cleared border zone (``window``: top, bottom, left, right)."""
    top, bottom, left, right = window
    return x0 <= left + 1, x0 + cw >= right - 1, y0 <= top + 1, y0 + ch >= bottom - 1


def preprocess(crop: np.ndarray) -> np.ndarray:
    """One box crop (uint8 gray, dark ink on light paper) -> float32 (INPUT_SIZE, INPUT_SIZE) ink 0..1.

    Normalises paper and light, removes printed border lines, fades the faint guide dots and specks, then
    scales the ink to fit 20x20 (small marks are not blown up) and centres it by mass, like MNIST.
    """
    return preprocess_faint(crop)[0]


def preprocess_faint(crop: np.ndarray) -> tuple[np.ndarray, bool]:
    """``preprocess(crop)``, and whether a crop it finds no writing in holds a faint stroke (FAINT_EXTENT)."""
    crop = _check_crop(crop, 0)
    ink = _ink_map(crop)
    top, bottom, left, right = _clear_borders(ink)
    out = np.zeros((INPUT_SIZE, INPUT_SIZE), np.float32)
    # Everything darker than the faint guide (~0.2): drop guide dots, specks and border remnants at the edge
    blurred = cv2.GaussianBlur(ink, (3, 3), 0)  # joins a faint stroke's fragments
    window = (top, bottom, left, right)

    def faint() -> bool:  # asked only when nothing written is found
        n, _, st, _ = cv2.connectedComponentsWithStats((blurred > FAINT_INK).astype(np.uint8), connectivity=8)
        x0, y0, cw, ch = (st[1:, k] for k in range(4))
        edge = np.any(_at_edges(x0, y0, cw, ch, window), axis=0)
        return bool(((np.maximum(cw, ch) >= FAINT_EXTENT * max(ink.shape)) & ~edge).any())

    n, labels, stats, _ = cv2.connectedComponentsWithStats((blurred > 0.17).astype(np.uint8), connectivity=8)
    if n <= 1:
        return out, faint()
    mass = np.bincount(labels.ravel(), weights=np.clip(ink.ravel() - 0.2, 0.0, None) * 3.0, minlength=n)[1:]
    h, w = ink.shape
    x0, y0 = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
    cw, ch = stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT]
    dot = max(4, round(max(h, w) * 1.6 / 19.0))  # a guide dot is <= 0.7 mm (+ blur); a box is ~19 mm
    small = (cw <= dot) & (ch <= dot)
    at_l, at_r, at_t, at_b = _at_edges(x0, y0, cw, ch, window)
    edge = at_l | at_r | at_t | at_b
    # slivers of a tilted border along an edge: thin across the edge, long along it
    t = max(4, round(max(h, w) * 1.5 / 19.0))
    sliver = (((at_l | at_r) & (cw <= t) & (ch >= 0.3 * (bottom - top)))
              | ((at_t | at_b) & (ch <= t) & (cw >= 0.3 * (right - left))))
    # a speck at the edge (a neighbour's tally mark or digit reaching in, dirt on the line): <= 2.5 mm
    tiny = max(5, round(max(h, w) * 2.5 / 19.0))
    speck = edge & (cw <= tiny) & (ch <= tiny)
    big = mass.max()
    keep = ((mass >= max(2.0, 0.04 * big)) & ~(small & (mass < 0.25 * big))
            & ~(edge & (mass < 0.3 * big)) & ~sliver & ~speck)
    if mass[keep].sum() < 5.0:  # a few specks: nothing written
        return out, faint()
    kept = np.isin(labels, np.flatnonzero(keep) + 1)
    # contrast relative to the written ink: guide dots touching a stroke fade under a dark pen
    vals = ink[kept]
    level = max(float(np.partition(vals, int(0.9 * (vals.size - 1)))[int(0.9 * (vals.size - 1))]), 0.4)
    lo = max(0.2, 0.4 * level)
    hi = max(lo + 0.12, 0.9 * level)
    v = np.clip((ink - lo) * (1.0 / (hi - lo)), 0.0, 1.0) * kept
    if not (v > 0.05).any():
        return out, faint()
    ys, xs = np.nonzero(v > 0.05)
    v = v[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    bh, bw = v.shape
    scale = min(_DIGIT_BOX / max(bh, bw), _DIGIT_BOX / (0.3 * max(h, w)))
    nh, nw = max(1, round(bh * scale)), max(1, round(bw * scale))
    small = cv2.resize(v, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    small = np.clip(small, 0.0, 1.0)
    tot = small.sum()
    if tot <= 0:
        return out, faint()
    cy = float((small.sum(axis=1) * np.arange(nh)).sum() / tot)
    cx = float((small.sum(axis=0) * np.arange(nw)).sum() / tot)
    oy = int(round(INPUT_SIZE / 2 - 0.5 - cy))
    ox = int(round(INPUT_SIZE / 2 - 0.5 - cx))
    oy = min(max(oy, 0), INPUT_SIZE - nh)
    ox = min(max(ox, 0), INPUT_SIZE - nw)
    out[oy:oy + nh, ox:ox + nw] = small
    return out, False


def preprocess_batch(crops: Sequence[np.ndarray]) -> np.ndarray:
    """Validate and preprocess a sequence of crops -> float32 (N, INPUT_SIZE, INPUT_SIZE, 1)."""
    return _preprocess_batch(crops)[0]


def _preprocess_batch(crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``preprocess_batch(crops)`` and, per crop, whether it is blank but for a faint stroke (bool (N,))."""
    if isinstance(crops, np.ndarray) and crops.ndim == 2:
        raise ValueError("classify() takes a sequence of crops; wrap a single crop in a list: [crop]")
    if (isinstance(crops, np.ndarray) and crops.ndim == 3 and crops.shape[-1] in (3, 4)
            and crops.shape[0] > 4):  # most likely one colour image, not a batch of tiny crops
        raise ValueError(f"got an array of shape {crops.shape}: looks like one colour image; pass a list of "
                         "2-D grayscale crops (cv2.cvtColor(..., cv2.COLOR_BGR2GRAY))")
    crops = list(crops)
    if not crops:
        raise ValueError("no crops given: classify() needs at least one box crop")
    out = np.empty((len(crops), INPUT_SIZE, INPUT_SIZE, 1), np.float32)
    faint = np.zeros(len(crops), bool)
    for i, c in enumerate(crops):
        _check_crop(c, i)
        out[i, :, :, 0], faint[i] = preprocess_faint(c)
    return out, faint


# ------------------------------------------------------------------------------------------------ interpreter

def _interpreter_class() -> tuple[type, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # needs numpy < 2

        return Interpreter, "tflite_runtime"
    except ImportError:
        pass
    try:  # training environment (/opt/tfvenv) only
        import tensorflow as tf

        return tf.lite.Interpreter, "tensorflow"
    except ImportError as e:
        raise DigitModelError(
            "no TFLite runtime found: pip install ai-edge-litert "
            "(or tflite-runtime==2.14 with numpy<2)") from e


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check_meta(meta: Any, where: Path) -> None:
    """DigitModelError unless the metadata holds what the probabilities need: a temperature > 0 (a sign slip
    turns the softmax upside down: the least likely digit comes out sure), probabilities within 0..1."""
    if not isinstance(meta, dict):
        raise DigitModelError(f"model metadata {where} must be a JSON object")
    for key in ("temperature", "input_size", "classes", "version"):
        if key not in meta:
            raise DigitModelError(f"model metadata {where} lacks {key!r}")

    def number(key: str) -> bool:
        v = meta[key]
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    if not number("temperature") or meta["temperature"] <= 0:
        raise DigitModelError(f"model metadata {where}: 'temperature' must be a number > 0, "
                              f"got {meta['temperature']!r}")
    if not isinstance(meta["input_size"], int) or isinstance(meta["input_size"], bool):
        raise DigitModelError(f"model metadata {where}: 'input_size' must be an integer, "
                              f"got {meta['input_size']!r}")
    if not isinstance(meta["classes"], list):
        raise DigitModelError(f"model metadata {where}: 'classes' must be a list, got {meta['classes']!r}")
    for key in ("blank_empty_prob", "faint_empty_prob"):
        if key in meta and not (number(key) and 0.0 <= meta[key] <= 1.0):
            raise DigitModelError(f"model metadata {where}: {key!r} must be a probability (0..1), "
                                  f"got {meta[key]!r}")


@dataclass
class DigitClassifier:
    """Batch classifier over box crops. Create with ``DigitClassifier.load()``."""

    interpreter: Any
    meta: dict
    runtime: str = ""
    load_ms: float = 0.0
    _batch: int = field(default=0, repr=False)

    @classmethod
    def load(cls, path: str | Path | None = None, *, num_threads: int = 1) -> DigitClassifier:
        """Open the model (None = the one shipped in the package) and its ``.json`` metadata next to it."""
        t0 = time.perf_counter()
        model = Path(path) if path is not None else DEFAULT_MODEL
        meta_path = model.with_suffix(".json")
        if not model.is_file():
            raise DigitModelError(f"digit model not found: {model} "
                                  "(reinstall tpskit or run scripts/train_digits.py)")
        if not meta_path.is_file():
            raise DigitModelError(f"model metadata not found: {meta_path} "
                                  "(it is written next to the .tflite)")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DigitModelError(f"cannot read model metadata {meta_path}: {e}") from e
        _check_meta(meta, meta_path)
        if meta["input_size"] != INPUT_SIZE or list(meta["classes"]) != list(CLASSES):
            raise DigitModelError(f"model {model} expects input {meta['input_size']} and classes "
                                  f"{meta['classes']}; "
                                  f"this code uses {INPUT_SIZE} and {list(CLASSES)}")
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        interp_cls, runtime = _interpreter_class()
        try:
            interp = interp_cls(model_path=str(model), num_threads=num_threads)
        except Exception as e:  # the runtimes raise ValueError/RuntimeError with their own text
            raise DigitModelError(f"cannot open digit model {model} with {runtime}: {e}") from e
        return cls(interpreter=interp, meta=meta, runtime=runtime, load_ms=(time.perf_counter() - t0) * 1e3)

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    @property
    def temperature(self) -> float:
        return float(self.meta["temperature"])

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw model logits for preprocessed input (N, S, S, 1) float 0..1: one invoke."""
        n = int(x.shape[0])
        inp = self.interpreter.get_input_details()[0]
        if n != self._batch:
            self.interpreter.resize_tensor_input(inp["index"], [n, INPUT_SIZE, INPUT_SIZE, 1])
            self.interpreter.allocate_tensors()
            self._batch = n
            inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        if inp["dtype"] == np.float32:
            q = x.astype(np.float32)
        else:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            q = np.clip(np.rint(x / scale + zero), info.min, info.max).astype(inp["dtype"])
        self.interpreter.set_tensor(inp["index"], q)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y.reshape(n, -1).astype(np.float32)

    def probabilities(self, x: np.ndarray, *, faint: np.ndarray | None = None) -> np.ndarray:
        """Calibrated probabilities (N, 11) for preprocessed input: one invoke.

        ``softmax(logits / T)``; a box in which preprocessing found no ink at all gets P(empty) =
        ``blank_empty_prob`` from the metadata (the share of such inputs that were really empty in held-out
        boxes), the rest spread over the digits as the model has it. ``faint`` (bool (N,), from the crops)
        marks blank inputs whose crop holds a faint stroke: they get P(empty) = ``faint_empty_prob`` (the
        share of those that were empty; 0.5 if the metadata lacks it) and the rest evenly over the ten
        digits, since the model saw nothing to tell them apart.
        """
        if faint is not None and np.shape(faint) != (len(x),):
            raise ValueError(f"faint must hold one flag per input ({len(x)}), got shape {np.shape(faint)}")
        probs = _softmax(self.logits(x) / self.temperature)
        blank = ~(x.reshape(len(x), -1) > 0).any(axis=1)
        faint = blank & (np.zeros(len(x), bool) if faint is None else np.asarray(faint, bool))
        pe = self.meta.get("blank_empty_prob")
        b = blank & ~faint
        if pe is not None and b.any():
            rest = probs[b, :EMPTY]
            rest = rest / np.maximum(rest.sum(axis=1, keepdims=True), 1e-12) * (1.0 - float(pe))
            probs[b, :EMPTY] = rest
            probs[b, EMPTY] = float(pe)
        if faint.any():
            pf = float(self.meta.get("faint_empty_prob", 0.5))
            probs[faint, :EMPTY] = (1.0 - pf) / EMPTY
            probs[faint, EMPTY] = pf
        return probs.astype(np.float32)

    def classify(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Crops (uint8 gray, any size) -> (labels int (N,), calibrated probabilities float32 (N, 11))."""
        x, faint = _preprocess_batch(crops)
        probs = self.probabilities(x, faint=faint)
        return probs.argmax(axis=1).astype(np.int64), probs
