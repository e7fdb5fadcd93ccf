#!/usr/bin/env python3
"""Benchmark of the page reader on generated TPS photos (not run in CI).

For each generated TPS (all 3 pages; conditions clean / field / hard in turn; ~10 % with a KPPS arithmetic
slip; ~5 % of photos spoiled) the reader reads every page and the TPS line is checked. Figures: pages read
fully correct, pages auto-accepted (ok), silent errors (ok with any number wrong), slips flagged, spoiled
photos refused, ms per page by step (one core), peak memory; and, on a subset of the same pages, the baseline
"registration + tesseract per box" (``--psm 10``, digit whitelist).

Usage: ``nice python scripts/bench_reader.py --tps 300 [--scale 0.75] [--baseline-pages 30] [--json]``
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.reader import EMPTY, PageReader, check_tps  # noqa: E402
from inference.register import RetakeError  # noqa: E402
from inference.synth import (  # noqa: E402
    CONDITIONS,
    EXTRA_CONDITIONS,
    EXTRA_SPOILS,
    SPOILS,
    make_sample,
    make_tps,
)

CROP_INSET_MM = 1.6  # the baseline cuts inside the printed border, tesseract reads borders as digits


def tesseract_box(crop: np.ndarray, ppm: float, tmp: Path) -> int | None:
    inset = int(round((1.0 + CROP_INSET_MM) * ppm))
    inner = crop[inset:-inset, inset:-inset]
    if inner.size == 0:
        return None
    inner = cv2.resize(inner, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    inner = cv2.copyMakeBorder(inner, 20, 20, 20, 20, cv2.BORDER_CONSTANT, value=255)
    path = tmp / "box.png"
    cv2.imwrite(str(path), inner)
    out = subprocess.run(["tesseract", str(path), "stdout", "--psm", "10", "-c",
                          "tessedit_char_whitelist=0123456789"], capture_output=True, text=True, timeout=30)
    digits = "".join(ch for ch in out.stdout if ch.isdigit())
    return int(digits[-1]) if digits else None


def tesseract_page(reader: PageReader, image: np.ndarray, tmp: Path) -> dict[str, int | None] | None:
    try:
        crops = reader.box_crops(image)
    except RetakeError:
        return None
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    from inference.register import register

    ppm = PageReader._crop_ppm(register(gray, form=reader.form, min_px_per_mm=reader.min_px_per_mm))
    per: dict[str, list[int | None]] = {}
    for bc in crops:
        per.setdefault(bc.field, []).append(tesseract_box(bc.crop, ppm, tmp))
    out: dict[str, int | None] = {}
    for name, ds in per.items():
        text = "".join("" if d is None else str(d) for d in ds)
        out[name] = int(text) if text else None
    return out


def _top(p: np.ndarray, k: int = 2) -> str:
    order = np.argsort(p)[::-1][:k]
    return "/".join(f"{_sym(int(j))}:{p[j]:.2f}" for j in order)


def _field_details(pg: dict, flagged: set[str], confusions: dict[str, int]) -> list[str]:
    """One entry per flagged, wrong or doubtful field of a page (value, truth, top-2 per box); counts the
    confusions (truth -> model's top class) of its doubtful or wrong boxes into ``confusions``."""
    ev = pg["evidence"]
    detail = []
    for name, got in pg["fields"].items():
        truth = pg["written"].get(name)
        if name not in flagged and got["value"] == truth and got["confidence"] >= 0.99:
            continue
        idx = [] if ev is None else [j for j, (f, _) in enumerate(ev["boxes"]) if f == name]
        boxes = []
        for j, t in zip(idx, _truth_digits(truth, len(idx)), strict=True):
            pr = ev["probs"][j]
            top = int(np.argmax(pr))
            right = top in (0, EMPTY) if t is None else top == t
            if pr.max() < 0.99 or not right:
                key = f"{_sym(t)}->{_sym(top)}"
                confusions[key] = confusions.get(key, 0) + 1
            boxes.append(_top(pr))
        detail.append(f"{name}={got['value']}({got['confidence']}) truth={truth} "
                      f"bubbles={got.get('bubbles')} [{' | '.join(boxes)}]")
    return detail


def _doubt_kind(terms: dict) -> str:
    """What kept a page from ``ok``, from the reader's ``posterior_terms``."""
    if terms.get("slip_shown"):
        return "written page breaks a rule (confident misread or slip)"
    if terms.get("unsupported"):
        return "rule settles it only with a digit the box does not favour"
    if terms:
        return "doubt: " + max(("other_readings", "unexplored", "slips"), key=lambda k: terms[k])
    return "?"


def why(pages: list[dict]) -> dict:
    """Why slip-free, unspoiled pages were not accepted: counts by reason code, by kind (the written page
    breaks a rule as read; or the doubt in the page posterior is mostly other rule-consistent readings,
    readings never enumerated, or slips the boxes cannot exclude), by (code, field or rule), by condition,
    the confusions (written -> model's top class) of the boxes in question, and one line per page with every
    flagged, wrong or doubtful field: value (confidence), truth, top-2 per box (E = empty)."""
    by_code: dict[str, int] = {}
    by_field: dict[str, int] = {}
    by_cond: dict[str, dict[str, int]] = {}
    confusions: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    lines = []
    for pg in pages:
        if pg["status"] == "ok":
            continue
        cnt = by_cond.setdefault(pg["cond"], {})
        ev = pg["evidence"]
        flagged: list[str] = []
        for reason in pg["reasons"]:
            code = reason["code"]
            by_code[code] = by_code.get(code, 0) + 1
            cnt[code] = cnt.get(code, 0) + 1
            for name in reason.get("fields") or reason.get("rules") or []:
                by_field[f"{code}:{name}"] = by_field.get(f"{code}:{name}", 0) + 1
            flagged += reason.get("fields") or []
        detail = _field_details(pg, set(flagged), confusions)
        kind = _doubt_kind((ev or {}).get("posterior_terms") or {})
        by_kind[kind] = by_kind.get(kind, 0) + 1
        pc = (ev or {}).get("page_confidence")
        post = "" if pc is None else f" (page {pc:.5f})"
        lines.append(f"tps{pg['tps']}-p{pg['page']} {pg['cond']} {','.join(pg['codes'])}{post}: "
                     + "; ".join(detail))
    return {"pages": sum(p["status"] != "ok" for p in pages), "by_code": by_code, "by_kind": by_kind,
            "by_condition": by_cond,
            "by_field": dict(sorted(by_field.items(), key=lambda kv: -kv[1])),
            "confusions_truth_to_top": dict(sorted(confusions.items(), key=lambda kv: -kv[1])),
            "pages_detail": lines}


def expected_silent(pages: list[dict]) -> float:
    """Silent errors per page that the reader's posteriors expect: sum of 1 - page posterior over ok pages."""
    ok = [1.0 - (p["evidence"] or {}).get("page_confidence", 1.0) for p in pages if p["status"] == "ok"]
    return sum(ok) / max(1, len(pages))


def _truth_digits(value: int | None, n: int) -> list[int | None]:
    """True class per box: digit, 10 = empty, None = unused leading box (blank, X, dash or 0)."""
    from inference.synth import box_label

    return [box_label(value, n, b) for b in range(n)]


def _sym(label: int | None) -> str:
    return "lead" if label is None else "E" if label == EMPTY else str(label)


def generator_cache(root: Path, scale: float) -> Path:
    """Folder for photos of this generator version: a hash of its sources and of the form templates."""
    import hashlib

    base = Path(__file__).resolve().parents[1] / "inference"
    h = hashlib.sha1(f"scale={scale}".encode())
    for f in sorted([*base.glob("synth.py"), *base.glob("handwriting.py"), *base.glob("render.py"),
                     *base.glob("forms/**/*.json")]):
        h.update(f.name.encode() + f.read_bytes())
    path = root / h.hexdigest()[:16]
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_sample(cache: Path | None, seed: int, page: int, **kw):
    """``make_sample`` through the cache: the photo is stored as the generator's JPEG, whose decoding is
    exactly the image the generator returns."""
    if cache is None:
        return make_sample(seed, page, **kw)
    import hashlib
    import pickle
    from types import SimpleNamespace

    key = hashlib.sha1(repr((seed, page, sorted(kw.items()))).encode()).hexdigest()[:20]
    path = cache / f"{seed}-{page}-{key}.pkl"
    if path.is_file():
        d = pickle.loads(path.read_bytes())
        img = cv2.imdecode(np.frombuffer(d["jpeg"], np.uint8), cv2.IMREAD_COLOR)
        return SimpleNamespace(image=img, **d)
    s = make_sample(seed, page, **kw)
    d = {"jpeg": s.jpeg, "written": s.written, "bubbles": s.bubbles, "page": s.page}
    part = path.with_suffix(f".{os.getpid()}.part")  # another run may be reading the same cache
    part.write_bytes(pickle.dumps(d))
    part.replace(path)
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tps", type=int, default=300, help="number of generated TPS (3 pages each)")
    ap.add_argument("--scale", type=float, default=0.75, help="sensor scale (1.0 = 4608x2592, ~4 px/mm)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--baseline-pages", type=int, default=30, help="pages also read by tesseract (0 = none)")
    ap.add_argument("--conditions", default=",".join(CONDITIONS),
                    help="photo conditions the TPS take in turn, comma-separated, from "
                         f"{', '.join(CONDITIONS + EXTRA_CONDITIONS)} (sun: sharp-edged shadows; folded: "
                         "fold lines standing up; curled: a rolled sheet's ends lifting; lens: a lens's "
                         "radial distortion bowing the page)")
    ap.add_argument("--spoils", default=",".join(SPOILS),
                    help=f"kinds of unusable photo, taken in turn, from {', '.join(SPOILS + EXTRA_SPOILS)} "
                         "(pen: a pen left lying across the boxes)")
    ap.add_argument("--spoiled-share", type=float, default=0.05, help="share of photos spoiled")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--why", action="store_true",
                    help="why slip-free pages are not ok: reasons, fields, conditions, box probabilities")
    ap.add_argument("--cache", type=Path, default=None,
                    help="keep generated photos here (JPEG + truth), keyed by the generator's source and "
                    "templates: a rerun reads the very same photos without generating them again")
    ap.add_argument("--generate-only", action="store_true", help="only fill --cache, read nothing")
    ap.add_argument("--known-dpt", action="store_true",
                    help="give the reader each TPS's registered DPT, as a provisioned kit has it (kit.dpt): "
                         "page 1's DPT that reads otherwise goes to review (known_mismatch)")
    ap.add_argument("--dump", type=Path, default=None,
                    help="pickle every page's box probabilities, bubbles and truth (to replay decisions)")
    args = ap.parse_args(argv)
    spoils = [c.strip() for c in args.spoils.split(",") if c.strip()]
    if not spoils or set(spoils) - set(SPOILS + EXTRA_SPOILS):
        ap.error(f"--spoils: give names from {', '.join(SPOILS + EXTRA_SPOILS)}, got {args.spoils!r}")
    if not 0.0 <= args.spoiled_share <= 1.0:
        ap.error(f"--spoiled-share: a share from 0 to 1, got {args.spoiled_share}")
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = sorted(set(conditions) - set(CONDITIONS + EXTRA_CONDITIONS))
    if not conditions or unknown:
        ap.error(f"--conditions: give names from {', '.join(CONDITIONS + EXTRA_CONDITIONS)}, got "
                 f"{args.conditions!r}")
    if args.tps < 1 or args.scale <= 0 or args.baseline_pages < 0:
        ap.error("--tps must be at least 1, --scale above 0 and --baseline-pages 0 or more")
    if args.model is not None and not args.model.is_file():
        ap.error(f"--model: no such model file {args.model}")
    cv2.setNumThreads(1)
    from inference.digits import DigitClassifier

    classifier = DigitClassifier.load(args.model, num_threads=1)
    reader = PageReader(classifier=classifier, confidence=0.99)
    have_tess = shutil.which("tesseract") is not None and args.baseline_pages > 0
    rng = np.random.default_rng(args.seed)
    pages = []  # per page records
    tps_rows = []
    steps: dict[str, list[float]] = {}
    base = {"pages": 0, "correct": 0, "ms": []}
    tmp = Path(tempfile.mkdtemp(prefix="bench_reader_"))
    cache = generator_cache(args.cache, args.scale) if args.cache else None
    t_start = time.time()
    spoil_i = 0
    for i in range(args.tps):
        cond = conditions[i % len(conditions)]
        slip = int(rng.integers(10)) == 0 or i % 10 == 5
        tps = make_tps(np.random.default_rng(args.seed * 1000 + i), slip=slip)
        registered = tps[0][1]["dpt_l"] + tps[0][1]["dpt_p"]  # the DPT as provisioned (a slip may change JML)
        if args.known_dpt:
            reader = PageReader(classifier=classifier, confidence=0.99, known={"dpt": registered})
        readings = []
        for p in (1, 2, 3):
            spoiled = None
            if rng.random() < args.spoiled_share:
                spoiled = spoils[spoil_i % len(spoils)]
                spoil_i += 1
            s = cached_sample(cache, args.seed * 10000 + i * 10 + p, p, condition=cond, scale=args.scale,
                              tps=tps, spoiled=spoiled)
            if args.generate_only:
                continue
            r = reader.read(s.image, name=f"tps{i}-p{p}")
            readings.append(r)
            for k, v in r.timing_ms.items():
                steps.setdefault(k, []).append(v)
            wrong = [] if spoiled else [k for k, v in r.values.items() if v != s.written.get(k)]
            if not spoiled and r.status != "retake":
                missing = [k for k in s.written if k not in r.values]
                wrong += missing
            pages.append({"tps": i, "page": p, "cond": cond, "slip": tps[2] if slip else None,
                          "spoiled": spoiled,
                          "status": r.status, "read_page": r.page, "wrong": wrong,
                          "codes": [x["code"] for x in r.reasons], "reasons": r.reasons,
                          "fields": r.fields, "written": s.written, "bubbles": s.bubbles,
                          "evidence": r.evidence})
            if have_tess and not spoiled and base["pages"] < args.baseline_pages:
                t0 = time.perf_counter()
                tv = tesseract_page(reader, s.image, tmp)
                base["ms"].append((time.perf_counter() - t0) * 1000)
                base["pages"] += 1
                if tv is not None and all(tv.get(k) == v for k, v in s.written.items()):
                    base["correct"] += 1
        t = check_tps(readings)
        tps_rows.append({"tps": i, "slip": tps[2], "status": t["status"],
                         "spoiled": any(pg["spoiled"] for pg in pages[-3:]),
                         "pages": [r.status for r in readings]})
        if not args.json and (i + 1) % 25 == 0:
            print(f"  {i + 1}/{args.tps} TPS, {time.time() - t_start:.0f} s", file=sys.stderr, flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    if args.generate_only:
        print(f"generated {args.tps} TPS into {cache} in {time.time() - t_start:.0f} s", file=sys.stderr)
        return 0
    if args.dump:
        import pickle

        args.dump.write_bytes(pickle.dumps({"args": vars(args), "pages": pages, "tps": tps_rows}))

    def share(a: int, b: int) -> float:
        return round(100.0 * a / b, 2) if b else float("nan")
    normal = [p for p in pages if not p["spoiled"]]
    clean_tps = {r["tps"] for r in tps_rows if not r["slip"]}
    normal_noslip = [p for p in normal if p["tps"] in clean_tps]
    spoiled = [p for p in pages if p["spoiled"]]
    slips = [r for r in tps_rows if r["slip"]]
    silent = [p for p in normal if p["status"] == "ok" and p["wrong"]]
    by_cond = {}
    for c in dict.fromkeys(conditions):
        sel = [p for p in normal_noslip if p["cond"] == c]
        by_cond[c] = {"pages": len(sel), "correct_pct": share(sum(not p["wrong"] for p in sel), len(sel)),
                      "ok_pct": share(sum(p["status"] == "ok" for p in sel), len(sel)),
                      "retake_pct": share(sum(p["status"] == "retake" for p in sel), len(sel))}
    reasons: dict[str, int] = {}
    for p in normal_noslip:
        if p["status"] != "ok":
            for c in p["codes"]:
                reasons[c] = reasons.get(c, 0) + 1
    ms = {k: {"mean": round(float(np.mean(v)), 1), "p95": round(float(np.percentile(v, 95)), 1)}
          for k, v in steps.items()}
    result = {
        "tps": args.tps, "pages": len(pages), "scale": args.scale,
        "px_per_mm": round(min(4608 * args.scale / 900, 2592 * args.scale / 600) * 0.92, 2),
        "model": getattr(reader.classifier, "version", "?"),
        "pages_fully_correct_pct": share(sum(not p["wrong"] for p in normal), len(normal)),
        "pages_ok_pct_no_slip": share(sum(p["status"] == "ok" for p in normal_noslip), len(normal_noslip)),
        "pages_ok_pct_all": share(sum(p["status"] == "ok" for p in normal), len(normal)),
        "silent_errors": len(silent),
        # what the reader's own page posteriors expect: sum of P(a number is wrong) over the accepted pages
        "expected_silent_per_page": float(f"{expected_silent(normal):.2e}"),
        "silent_error_pages": [f"tps{p['tps']}-p{p['page']}:{','.join(p['wrong'])}" for p in silent][:20],
        "slips": len(slips), "slips_flagged_pct": share(sum(r["status"] != "ok" for r in slips), len(slips)),
        # pages the provisioned DPT sent to review (--known-dpt), and of those the ones only it flagged
        "known_mismatch": {"slip_free": sum("known_mismatch" in p["codes"] for p in normal_noslip),
                           "with_a_slip": sum("known_mismatch" in p["codes"] for p in normal
                                              if p["tps"] not in clean_tps),
                           "only_reason": sum(p["codes"] == ["known_mismatch"] for p in normal)}
        if args.known_dpt else None,
        "spoiled": len(spoiled),
        "spoiled_refused_pct": share(sum(p["status"] == "retake" for p in spoiled), len(spoiled)),
        "spoiled_kinds": sorted({p["spoiled"] for p in spoiled}),
        "spoiled_refused_pct_by_kind": {
            k: share(sum(p["status"] == "retake" for p in spoiled if p["spoiled"] == k),
                     sum(p["spoiled"] == k for p in spoiled))
            for k in sorted({p["spoiled"] for p in spoiled})},
        "tps_ok_pct_no_slip_no_spoil": share(
            sum(r["status"] == "ok" for r in tps_rows if not r["slip"] and not r["spoiled"]),
            len([r for r in tps_rows if not r["slip"] and not r["spoiled"]])),
        "by_condition": by_cond, "not_ok_reasons": reasons, "ms_per_page": ms,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "baseline_tesseract": {"pages": base["pages"],
                               "fully_correct_pct": share(base["correct"], base["pages"]),
                               "ms_per_page": round(float(np.mean(base["ms"])), 1) if base["ms"] else None}
        if have_tess else None,
        "wall_s": round(time.time() - t_start, 1),
    }
    if args.why:
        result["why"] = why(normal_noslip)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            if k == "why":
                continue
            print(f"{k:28s} {v}")
        if "why" in result:
            w = result["why"]
            print(f"\nwhy not ok (slip-free, unspoiled pages): {w['pages']}")
            for k in ("by_code", "by_kind", "by_condition", "by_field", "confusions_truth_to_top"):
                print(f"  {k:24s} {w[k]}")
            for line in w["pages_detail"]:
                print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
