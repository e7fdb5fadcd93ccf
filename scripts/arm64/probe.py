"""Probe for scripts/arm64-check: the same checks run on x86 and on arm64, results as JSON, then compared.

Subcommands:
  env                      imports and small functional checks (versions, CPU features) as JSON on stdout
  show-env X86 ARM64       print both environments side by side; exit 1 if a functional check differs
  make-inputs DIR          (x86) write the fixed inputs: digit crops and generated pages
  run DIR OUT              classify the crops and run `tpskit read --json` on the pages, write OUT (JSON)
  junit JUNIT OUT          pytest junit XML -> {test id: outcome} JSON
  compare X86 ARM64 [--atol A]   diff two `run` (or `junit`) results; exit 1 on any difference (labels,
                           values, statuses exact; probabilities within A)

Standard library only at import time: it must start even when the project's packages are broken.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

# Keys whose values legitimately differ between runs (timings, absolute paths): left out of the comparison.
IGNORED_KEY = re.compile(
    r"(^|_)(ms|s|sec|secs|seconds|time|times|elapsed|duration|took|at|timestamp|path)$|timing"
)

HWCAP_SVE = 1 << 22
HWCAP2_SVE2 = 1 << 1
HWCAP2_SME = 1 << 23


def _hwcaps() -> dict:
    if platform.machine() != "aarch64":
        return {}
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    hw, hw2 = libc.getauxval(16), libc.getauxval(26)  # AT_HWCAP, AT_HWCAP2
    return {"hwcap": hex(hw), "hwcap2": hex(hw2), "sve": bool(hw & HWCAP_SVE),
            "sve2": bool(hw2 & HWCAP2_SVE2), "sme": bool(hw2 & HWCAP2_SME)}


def _try(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a probe reports every failure instead of stopping
        return f"ERROR {type(exc).__name__}: {exc}"


def cmd_env(_args) -> int:
    out: dict = {"machine": platform.machine(), "python": platform.python_version(),
                 "qemu_cpu": os.environ.get("QEMU_CPU"), "cpu": _hwcaps(), "versions": {}, "checks": {}}
    try:
        out["cpu"]["model"] = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                                    if ln.startswith(("Model", "model name"))), "?")
    except OSError:
        pass
    from importlib import metadata

    for dist in ("numpy", "opencv-python-headless", "ai-edge-litert", "paho-mqtt", "PyNaCl", "pydantic",
                 "gpiozero", "sqlite-utils", "pytest", "tpskit"):
        out["versions"][dist] = _try(lambda d=dist: metadata.version(d))
    checks = out["checks"]
    failed = []

    def check(name, fn):
        checks[name] = _try(fn)
        if isinstance(checks[name], str) and checks[name].startswith("ERROR"):
            failed.append(name)

    def numpy_check():
        import numpy as np

        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        return float((a @ a.T).sum())

    def aruco_check():
        import cv2
        import numpy as np

        d = cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_APRILTAG_36h10)
        img = np.full((300, 300), 255, np.uint8)
        img[50:250, 50:250] = cv2.aruco.generateImageMarker(d, 7, 200)
        det = cv2.aruco.ArucoDetector(d, cv2.aruco.DetectorParameters())
        corners, ids, _ = det.detectMarkers(img)
        return {"ids": [] if ids is None else ids.ravel().tolist(),
                "corners": [[round(float(v), 1) for v in c.ravel()] for c in corners]}

    def litert_check():
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter.__module__

    def nacl_check():
        import nacl.signing

        key = nacl.signing.SigningKey(bytes(range(32)))
        sig = key.sign(b"tpskit arm64").signature
        key.verify_key.verify(b"tpskit arm64", sig)
        return hashlib.sha256(sig).hexdigest()[:16]

    def pydantic_check():
        import pydantic

        class M(pydantic.BaseModel):
            n: int

        return M.model_validate({"n": "42"}).n

    def gpiozero_check():
        from gpiozero import Button, Device
        from gpiozero.pins.mock import MockFactory

        Device.pin_factory = MockFactory()
        b = Button(17)
        b.pin.drive_low()
        return b.is_pressed

    def paho_check():
        import paho.mqtt.client as mqtt

        mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe")
        return mqtt.MQTTv5

    def sqlite_check():
        import sqlite3

        import sqlite_utils

        db = sqlite_utils.Database(sqlite3.connect(":memory:"))
        db["t"].insert({"a": 1})
        return db.execute("pragma journal_mode").fetchone()[0] and db["t"].count

    def classifier_check():
        import numpy as np

        from inference.digits import DigitClassifier

        clf = DigitClassifier.load()
        labels, probs = clf.classify([np.full((32, 32), 255, np.uint8)])
        return {"version": clf.version, "blank_label": int(labels[0])}

    check("numpy", numpy_check)
    check("aruco_apriltag_36h10", aruco_check)
    check("litert_interpreter", litert_check)
    check("nacl_ed25519", nacl_check)
    check("pydantic", pydantic_check)
    check("gpiozero_mock", gpiozero_check)
    check("paho_client", paho_check)
    check("sqlite_utils", sqlite_check)
    check("tpskit_cli", lambda: __import__("firmware.cli", fromlist=["build_parser"]).build_parser().prog)
    if _model_present():
        check("digit_classifier", classifier_check)
    out["failed"] = failed
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()
    return 1 if failed else 0


def _model_present() -> bool:
    try:
        import inference

        return (Path(inference.__file__).parent / "models" / "digits.tflite").exists()
    except ImportError:
        return False


def cmd_show_env(args) -> int:
    x86, arm = (json.loads(Path(p).read_text()) for p in (args.x86, args.arm64))
    arm_cpu = f'{arm["cpu"].get("model", "-")} (QEMU_CPU={arm["qemu_cpu"]})'
    rows = [("machine", x86["machine"], arm["machine"]), ("python", x86["python"], arm["python"]),
            ("cpu", x86["cpu"].get("model", "-"), arm_cpu)]
    rows += [(f"  {k}", v, arm["versions"].get(k)) for k, v in x86["versions"].items()]
    rc = 0
    for k, v in x86["checks"].items():
        same = v == arm["checks"].get(k)
        rows.append((f"{'  ' if same else '! '}{k}", _short(v), _short(arm["checks"].get(k))))
        rc |= not same
    if arm["cpu"].get("sme") or arm["cpu"].get("sve"):
        print("! the emulated CPU advertises SVE/SME, which no Pi has: set QEMU_CPU to a Pi core")
        rc = 1
    w = max(len(r[0]) for r in rows)
    print(f"{'':{w}}  {'x86':32} arm64")
    for name, a, b in rows:
        print(f"{name:{w}}  {str(a):32} {b}")
    if rc:
        print("! functional checks differ between x86 and arm64 (marked !)")
    return rc


def _short(v) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 60 else s[:57] + "..."


# ------------------------------------------------------------------------------------------ inputs and run

DIGIT_SEED = 20240214  # fixed: the same crops on every run
N_PER_CLASS = 6
PAGE_SEED = 8
SUBPROCESS_TIMEOUT = 1800
CONFIDENT = 0.99  # PageReader's default confidence


def _digit_crops(rng) -> tuple[list, list[int]]:
    """Box crops as the reader cuts them: border and dotted guide, a handwritten digit or an empty mark."""
    import numpy as np

    from inference.handwriting import render_digit, render_mark
    from inference.render import draw_box
    from inference.templates import Box

    crops, truth = [], []
    for i in range(N_PER_CLASS):
        for label in range(11):
            s = float(rng.uniform(2.5, 5.0))  # px/mm
            img = np.full((int(23 * s), int(23 * s)), 250, np.uint8)
            draw_box(img, Box(2.0, 2.0, 19.0, 19.0), s)
            if label < 10:
                ink = render_digit(label, height_px=int(s * rng.uniform(11, 15)), rng=rng)
            elif i % 3 == 0:
                ink = None  # left blank
            else:
                ink = render_mark("x" if i % 3 == 1 else "dash", height_px=int(s * 12), rng=rng)
            if ink is not None:
                h, w = ink.shape
                y0 = max(0, int(img.shape[0] / 2 - h / 2 + rng.normal(0, s)))
                x0 = max(0, int(img.shape[1] / 2 - w / 2 + rng.normal(0, s)))
                h, w = min(h, img.shape[0] - y0), min(w, img.shape[1] - x0)
                region = img[y0:y0 + h, x0:x0 + w].astype(np.float32)
                region = np.clip(region * (1 - 0.85 * ink[:h, :w]), 0, 255)
                img[y0:y0 + h, x0:x0 + w] = region.astype(np.uint8)
            m = int(round(s * rng.uniform(1.0, 2.5)))  # crop: the box and a little margin
            crops.append(img[m:img.shape[0] - m, m:img.shape[1] - m].copy())
            truth.append(label)
    return crops, truth


def _pages(out_dir: Path) -> list[str]:
    """A few generated, photographed pages (PNG) with their truth, from inference.synth when it exists."""
    try:
        from inference import synth
    except ImportError:
        print("probe: inference.synth not there yet: no pages", file=sys.stderr)
        return []
    return _make_pages(synth, out_dir)


# (group, page, condition, spoiled, upside down). Group "tps": the three pages of one TPS, read together with
# --tps; "slip": the three pages of a TPS where the KPPS made an arithmetic slip (must not be accepted);
# "single": a hard upside-down photo and a blurred one (retake), read one by one.
PAGE_SET = (
    ("tps", 1, "field", None, False), ("tps", 2, "field", None, False), ("tps", 3, "clean", None, False),
    ("slip", 1, "field", None, False), ("slip", 2, "field", None, False), ("slip", 3, "field", None, False),
    ("single", 2, "hard", None, True), ("single", 1, "field", "blurred", False),
)


def _make_pages(synth, out_dir: Path) -> list[str]:
    import numpy as np

    tps = {"tps": synth.make_tps(np.random.default_rng(PAGE_SEED)),
           "slip": synth.make_tps(np.random.default_rng(PAGE_SEED + 1), slip=True)}
    names, truth = [], {}
    for i, (group, page_no, condition, spoiled, upside_down) in enumerate(PAGE_SET):
        sample = synth.make_sample(PAGE_SEED * 100 + i, page_no, condition=condition,
                                   tps=tps.get(group, tps["tps"]), spoiled=spoiled, upside_down=upside_down)
        name = f"page{i + 1}-{group}-p{page_no}-{spoiled or condition}.jpg"
        (out_dir / name).write_bytes(sample.jpeg)  # the kit reads the camera's JPEG too
        names.append(name)
        record = {"group": group, "page": sample.page, "condition": condition, "spoiled": spoiled,
                  "slip": sample.slip, "written": sample.written, "bubbles": sample.bubbles}
        plain = json.dumps(record, default=lambda v: v.item() if hasattr(v, "item") else str(v))
        truth[name] = json.loads(plain)
    (out_dir / "pages_truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    return names


def cmd_make_inputs(args) -> int:
    import numpy as np

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    crops, truth = _digit_crops(np.random.default_rng(DIGIT_SEED))
    arrays = {f"c{i:03d}": c for i, c in enumerate(crops)}
    np.savez_compressed(out / "digits.npz", truth=np.array(truth), **arrays)
    try:  # the model's input as x86 computes it: arm64 runs the interpreter on exactly this tensor too
        from inference.digits import preprocess_batch

        np.save(out / "digits_input_x86.npy", preprocess_batch(crops))
    except ImportError as exc:
        print(f"probe: no preprocess_batch ({exc}): same-input check skipped", file=sys.stderr)
    pages = _pages(out)
    print(f"  {len(crops)} digit crops, {len(pages)} page(s) in {out}")
    return 0


def cmd_run(args) -> int:
    """Classify the crops (one batch) and read the pages with the installed `tpskit read --json`."""
    import numpy as np

    from inference.digits import DigitClassifier

    inputs = Path(args.dir)
    result: dict = {"digits": {}, "pages": {}}
    data = np.load(inputs / "digits.npz")
    names = sorted(k for k in data.files if k.startswith("c"))
    crops = [data[k] for k in names]
    truth = data["truth"].tolist()
    clf = DigitClassifier.load(args.model)
    labels, probs = clf.classify(crops)
    result["digits"] = {
        "model": clf.version, "runtime": clf.runtime, "truth": truth, "labels": labels.tolist(),
        "probs": np.round(probs.astype(np.float64), 6).tolist(),
        "accuracy": round(float(np.mean(labels == np.array(truth))), 4),
        "confident": (probs.max(axis=1) >= CONFIDENT).tolist(),  # the reader's decision threshold
    }
    # Diagnostics: this architecture's preprocessing (saved for `summary`, not compared value by value), and
    # the interpreter alone on x86's model input: any difference there is LiteRT's, not OpenCV's.
    try:
        from inference.digits import preprocess_batch

        np.save(Path(args.out).with_suffix(".input.npy"), preprocess_batch(crops))
    except ImportError:
        pass
    same_input = inputs / "digits_input_x86.npy"
    if same_input.exists() and hasattr(clf, "logits"):
        logits = clf.logits(np.load(same_input))
        result["digits"]["same_input"] = {"labels": logits.argmax(axis=1).tolist(),
                                          "logits": np.round(logits.astype(np.float64), 6).tolist()}
    rc = 0
    truth_file = inputs / "pages_truth.json"
    page_truth = json.loads(truth_file.read_text()) if truth_file.exists() else {}
    if page_truth:
        result["pages"]["truth"] = page_truth
    groups: dict[str, list[str]] = {}
    for name in sorted(page_truth):
        groups.setdefault(page_truth[name].get("group", "single"), []).append(name)
    groups = {g: (["--tps"] if g != "single" else []) + names for g, names in groups.items()}
    for group in groups.values():
        cmd = [args.tpskit, "read", "--json", *group] + (["--model", args.model] if args.model else [])
        proc = subprocess.run(cmd, cwd=inputs, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
        key = " ".join(["read", "--json", *group])
        try:
            lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
        except json.JSONDecodeError:
            lines = None
        result["pages"][key] = {"exit": proc.returncode, "output": lines}
        if lines is None or proc.returncode != 0:
            print(f"probe: `tpskit {key}` failed (exit {proc.returncode}):", file=sys.stderr)
            print(proc.stdout[-1000:], proc.stderr[-2000:], file=sys.stderr)
            rc = 1
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return rc


def cmd_summary(args) -> int:
    """Human summary of two `run` results (accuracy against the truth, page statuses)."""
    for name, path in (("x86", args.x86), ("arm64", args.arm64)):
        r = json.loads(Path(path).read_text())
        d = r.get("digits", {})
        line = f"  {name:6} digits: {len(d.get('labels', []))} crops, accuracy {d.get('accuracy')} " \
               f"(model {d.get('model')}, {d.get('runtime')})"
        statuses = [str(item.get("status")) for key, v in (r.get("pages") or {}).items() if key != "truth"
                    for item in (v.get("output") or []) if isinstance(item, dict) and "status" in item]
        if statuses:
            line += f"; pages: {', '.join(statuses)}"
        print(line)
    ra, rb = (json.loads(Path(p).read_text()).get("digits", {}) for p in (args.x86, args.arm64))
    for i, (la, lb) in enumerate(zip(ra.get("labels", []), rb.get("labels", []), strict=False)):
        if la != lb:
            pa, pb = ra["probs"][i], rb["probs"][i]
            print(f"  crop {i} (truth {ra['truth'][i]}): x86 {la} (p={pa[la]:.3f}, {lb}: {pa[lb]:.3f}), "
                  f"arm64 {lb} (p={pb[lb]:.3f}, {la}: {pb[la]:.3f})")
    sa, sb = ra.get("same_input"), rb.get("same_input")
    if sa and sb:
        ok = sa == sb
        print(f"  LiteRT on the same input tensor: {'identical logits' if ok else 'DIFFERENT logits'}")
    try:
        import numpy as np

        xa, xb = (np.load(Path(p).with_suffix(".input.npy")) for p in (args.x86, args.arm64))
        d = np.abs(xa - xb).reshape(len(xa), -1).max(axis=1)
        same = int((d == 0).sum())
        print(f"  model input (preprocessing, OpenCV/NumPy): identical for {same}/{len(d)} crops"
              + (f", max |diff| {d.max():.4f}" if d.max() > 0 else ""))
    except (OSError, ValueError, ImportError):
        pass
    return 0


# ------------------------------------------------------------------------------------------ compare


def diff(a, b, path: str = "", *, atol: float, out: list[str], stats: dict) -> None:
    """Structural difference of two JSON values; floats within atol are equal, ignored keys skipped."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if IGNORED_KEY.search(str(k).lower()):
                continue
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only on {'arm64' if k not in a else 'x86'}")
            else:
                diff(a[k], b[k], f"{path}/{k}", atol=atol, out=out, stats=stats)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} on x86, {len(b)} on arm64")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            diff(x, y, f"{path}[{i}]", atol=atol, out=out, stats=stats)
    elif isinstance(a, float) or isinstance(b, float):
        if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, int | float) \
                or not isinstance(b, int | float):
            out.append(f"{path}: {a!r} on x86, {b!r} on arm64")
            return
        d = abs(a - b) if math.isfinite(a) and math.isfinite(b) else (0.0 if a == b else math.inf)
        stats["max_float_diff"] = max(stats.get("max_float_diff", 0.0), d)
        stats["floats"] = stats.get("floats", 0) + 1
        if d > stats.get("warn", math.inf):
            stats.setdefault("notes", []).append((d, f"{path}: {a!r} on x86, {b!r} on arm64"))
        if d > atol:
            out.append(f"{path}: {a!r} on x86, {b!r} on arm64 (|diff| {d:.3g} > {atol})")
    else:
        stats["exact"] = stats.get("exact", 0) + 1
        if a != b:
            out.append(f"{path}: {a!r} on x86, {b!r} on arm64")


def cmd_compare(args) -> int:
    a, b = (json.loads(Path(p).read_text()) for p in (args.x86, args.arm64))
    out: list[str] = []
    stats: dict = {"warn": args.warn}
    diff(a, b, atol=args.atol, out=out, stats=stats)
    notes = [n for _, n in sorted(stats.pop("notes", []), reverse=True)]
    report = {"differences": out, "float_notes": notes, **stats}
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n")
    print(f"  compared {stats.get('exact', 0)} exact values and {stats.get('floats', 0)} floats "
          f"(max |diff| {stats.get('max_float_diff', 0.0):.3g}, tolerance {args.atol}): "
          f"{len(out)} difference(s)")
    if notes:
        print(f"  note: {len(notes)} float(s) differ by more than {args.warn} (within tolerance); largest:")
        for line in notes[:3]:
            print(f"    {line}")
    for line in out[:40]:
        print(f"  ! {line}")
    if len(out) > 40:
        print(f"  ! ... {len(out) - 40} more in {args.report or 'the report'}")
    return 1 if out else 0


def cmd_junit(args) -> int:
    """pytest junit XML -> {"tests": {id: outcome}, "counts": {...}}."""
    root = ET.parse(args.junit).getroot()
    tests: dict[str, str] = {}
    for tc in root.iter("testcase"):
        tid = f"{tc.get('classname', '')}::{tc.get('name', '')}"
        outcome = "passed"
        for child in tc:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
            elif child.tag == "skipped":
                outcome = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
        tests[tid] = outcome
    counts: dict[str, int] = {}
    for o in tests.values():
        counts[o] = counts.get(o, 0) + 1
    Path(args.out).write_text(json.dumps({"tests": tests, "counts": counts}, indent=1, sort_keys=True) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env").set_defaults(fn=cmd_env)
    s = sub.add_parser("show-env")
    s.add_argument("x86")
    s.add_argument("arm64")
    s.set_defaults(fn=cmd_show_env)
    s = sub.add_parser("compare")
    s.add_argument("x86")
    s.add_argument("arm64")
    s.add_argument("--atol", type=float, default=0.1, help="floats further apart than this are a difference")
    s.add_argument("--warn", type=float, default=1e-3, help="floats further apart than this are listed")
    s.add_argument("--report")
    s.set_defaults(fn=cmd_compare)
    s = sub.add_parser("junit")
    s.add_argument("junit")
    s.add_argument("out")
    s.set_defaults(fn=cmd_junit)
    s = sub.add_parser("make-inputs")
    s.add_argument("dir")
    s.set_defaults(fn=cmd_make_inputs)
    s = sub.add_parser("run")
    s.add_argument("dir")
    s.add_argument("out")
    s.add_argument("--tpskit", default="tpskit")
    s.add_argument("--model", help="digit model (default: the one shipped in the package)")
    s.set_defaults(fn=cmd_run)
    s = sub.add_parser("summary")
    s.add_argument("x86")
    s.add_argument("arm64")
    s.set_defaults(fn=cmd_summary)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
