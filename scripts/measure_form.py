#!/usr/bin/env python3
"""Measure the official C.HASIL-PPWP-2024 PDF and write the page templates (inference/forms/.../pageN.json).

Dev-only tool (needs PyMuPDF). The PDF is vector: every writing box, bubble, corner-marker square and the
AprilTag page code are drawing primitives, so positions are exact. Field names follow the reader's contract
(docs: issue 4). Usage: ``python scripts/measure_form.py [PDF] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORM_ID = "C.HASIL-PPWP-2024"
DEFAULT_PDF = REPO.parent / "shared" / "forms" / f"{FORM_ID}.pdf"
MM = 25.4 / 72.0
TAG_IDS = {1: 101, 2: 102, 3: 103}


def _r(v: float) -> float:
    return round(float(v), 2)


def _rects(page) -> list[tuple[float, float, float, float, bool, float]]:
    """(x, y, w, h, filled, line width) in mm of every rectangle primitive on the page."""
    out = []
    for d in page.get_drawings():
        for item in d["items"]:
            if item[0] == "re":
                r = item[1]
                out.append(
                    (
                        r.x0 * MM,
                        r.y0 * MM,
                        r.width * MM,
                        r.height * MM,
                        d.get("fill") is not None,
                        float(d.get("width") or 0.0),
                    )
                )
    return out


def _sized(rects, w: float, h: float, *, tol: float = 0.15, stroked: bool = True, min_lw: float = 0.0):
    sel = [
        r
        for r in rects
        if abs(r[2] - w) < tol and abs(r[3] - h) < tol and (not r[4]) == stroked and r[5] >= min_lw
    ]
    uniq: dict[tuple[float, float], tuple] = {}
    for r in sel:
        uniq.setdefault((round(r[1], 1), round(r[0], 1)), r)
    return [uniq[k] for k in sorted(uniq)]


def _rows(rects) -> list[list]:
    """Group rectangles into rows (same y), each row sorted left to right."""
    rows: list[list] = []
    for r in sorted(rects, key=lambda r: (r[1], r[0])):
        if rows and abs(rows[-1][0][1] - r[1]) < 1.0:
            rows[-1].append(r)
        else:
            rows.append([r])
    return [sorted(row, key=lambda r: r[0]) for row in rows]


def _box(r) -> list[float]:
    return [_r(r[0]), _r(r[1]), _r(r[2]), _r(r[3])]


def _markers(rects) -> list[list[float]]:
    squares = _sized(rects, 7.2, 7.2, stroked=False)
    # Each corner marker is two 7.2 mm squares touching at one corner; its point is that corner.
    pts = []
    for a in squares:
        for b in squares:
            if abs(b[0] - (a[0] + 7.2)) < 0.2 and abs(b[1] - (a[1] + 7.2)) < 0.2:
                pts.append([_r(b[0]), _r(b[1])])
    if len(pts) != 4:
        sys.exit(f"expected 4 corner markers, found {len(pts)}")
    tl = min(pts, key=lambda p: p[0] + p[1])
    br = max(pts, key=lambda p: p[0] + p[1])
    tr = max(pts, key=lambda p: p[0] - p[1])
    bl = min(pts, key=lambda p: p[0] - p[1])
    return [tl, tr, br, bl]


def _tag(page, tag_id: int) -> list[list[float]]:
    """Corners of the page code in the tag's own order (OpenCV aruco corner 0..3), in mm.

    The printed tag may be rotated: the order is taken from decoding a rendering of the page with OpenCV.
    """
    import cv2
    import numpy as np

    best = None
    for d in page.get_drawings():
        r = d["rect"]
        w, h = r.width * MM, r.height * MM
        if d.get("fill") is not None and 25 < w < 40 and abs(w - h) < 0.3 and sum(d["fill"]) < 1.0:
            best = (r.x0 * MM, r.y0 * MM, w, h)
    if best is None:
        sys.exit("page code (AprilTag) not found")
    x, y, w, h = best
    square = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    dpi = 60
    pix = page.get_pixmap(dpi=dpi, colorspace="gray")
    img = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width)
    det = cv2.aruco.ArucoDetector(cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_APRILTAG_36h10))
    corners, ids, _ = det.detectMarkers(img)
    if ids is None or int(ids.ravel()[0]) != tag_id:
        got = None if ids is None else ids.ravel()
        sys.exit(f"page code: expected AprilTag 36h10 id {tag_id}, decoded {got}")
    out = []
    for cx, cy in corners[0][0] * 25.4 / dpi:
        sx, sy = min(square, key=lambda q: (q[0] - cx) ** 2 + (q[1] - cy) ** 2)
        out.append([_r(sx), _r(sy)])
    return out


def _circles(page, diameter: float) -> list[list[float]]:
    out = {}
    for d in page.get_drawings():
        r = d["rect"]
        if (
            d.get("fill") is None
            and abs(r.width * MM - diameter) < 0.15
            and abs(r.height * MM - diameter) < 0.15
            and any(it[0] == "c" for it in d["items"])
        ):
            cx, cy = (r.x0 + r.x1) / 2 * MM, (r.y0 + r.y1) / 2 * MM
            out.setdefault((round(cy, 1), round(cx, 1)), [_r(cx), _r(cy), _r(diameter / 2)])
    return [out[k] for k in sorted(out)]


def _frames(rects) -> list[list[float]]:
    """Large stroked table frames (for the renderer's look only)."""
    seen = set()
    out = []
    for r in rects:
        if not r[4] and (r[2] > 60 or r[3] > 40) and r[2] < 500:
            key = (round(r[0]), round(r[1]), round(r[2]), round(r[3]))
            if key not in seen:
                seen.add(key)
                out.append(_box(r))
    return out


def _number(
    name: str, boxes, *, label: str, max_value: int = 999, required: bool = True, bubbles=None,
    known: str | None = None,
) -> dict:
    f = {
        "name": name,
        "label": label,
        "kind": "number",
        "boxes_mm": [_box(b) for b in boxes],
        "min": 0,
        "max": max_value,
        "required": required,
    }
    if known is not None:
        f["known"] = known
    if bubbles is not None:
        f["bubbles_mm"] = bubbles
    return f


def _sum_rule(terms: list[str], total: str, label: str) -> dict:
    return {
        "name": f"{' + '.join(terms)} = {total}",
        "kind": "sum",
        "terms": terms,
        "total": total,
        "label": label,
    }


def page1(rects) -> tuple[list[dict], list[dict]]:
    rows = _rows(_sized(rects, 18.0, 18.0))
    nine = [r for r in rows if len(r) == 9]
    three = [r for r in rows if len(r) == 3]
    if len(nine) != 6 or len(three) != 4:
        sys.exit(f"page 1: expected 6 rows of 9 and 4 rows of 3 boxes, got {[len(r) for r in rows]}")
    names = ["dpt", "pengguna_dpt", "pengguna_dptb", "pengguna_dpk", "pengguna_total", "disabilitas"]
    labels = [
        "I.A DPT",
        "I.B.1 pengguna DPT",
        "I.B.2 pengguna DPTb",
        "I.B.3 pengguna DPK",
        "I.B.4 jumlah pengguna hak pilih",
        "III pemilih disabilitas",
    ]
    fields, rules = [], []
    for base, label, row in zip(names, labels, nine, strict=True):
        for i, part in enumerate(("l", "p", "jml")):
            fields.append(
                _number(
                    f"{base}_{part}",
                    row[3 * i : 3 * i + 3],
                    label=f"{label} ({part.upper()})",
                    max_value=300 if base == "dpt" else 999,
                    known="dpt" if f"{base}_{part}" == "dpt_jml" else None,  # the kit's provisioned DPT
                )
            )
        rules.append(_sum_rule([f"{base}_l", f"{base}_p"], f"{base}_jml", f"{label}: L + P = Jumlah"))
    for part in ("l", "p", "jml"):
        rules.append(
            _sum_rule(
                [f"pengguna_dpt_{part}", f"pengguna_dptb_{part}", f"pengguna_dpk_{part}"],
                f"pengguna_total_{part}",
                f"I.B.4 = I.B.1 + I.B.2 + I.B.3 ({part.upper()})",
            )
        )
        rules.append(
            {
                "name": f"pengguna_dpt_{part} <= dpt_{part}",
                "kind": "le",
                "left": f"pengguna_dpt_{part}",
                "right": f"dpt_{part}",
                "label": f"I.B.1 tidak melebihi DPT ({part.upper()})",
            }
        )
    sname = ["surat_diterima", "surat_digunakan", "surat_dikembalikan", "surat_tidak_digunakan"]
    slabel = [
        "II.1 surat suara diterima",
        "II.2 surat suara digunakan",
        "II.3 surat suara dikembalikan",
        "II.4 surat suara tidak digunakan",
    ]
    for name, label, row in zip(sname, slabel, three, strict=True):
        fields.append(_number(name, row, label=label))
    rules.append(_sum_rule(sname[1:], "surat_diterima", "II.1 = II.2 + II.3 + II.4"))
    rules.append(
        {
            "name": "surat_digunakan = pengguna_total_jml",
            "kind": "sum",
            "terms": ["surat_digunakan"],
            "total": "pengguna_total_jml",
            "label": "II.2 surat digunakan = I.B.4 jumlah pengguna",
        }
    )
    for part in ("l", "p", "jml"):  # voters with disabilities are voters: per sex, not only in total
        rules.append(
            {
                "name": f"disabilitas_{part} <= pengguna_total_{part}",
                "kind": "le",
                "left": f"disabilitas_{part}",
                "right": f"pengguna_total_{part}",
                "label": f"III tidak melebihi I.B.4 ({part.upper()})",
            }
        )
    return fields, rules


def page2(page, rects) -> tuple[list[dict], list[dict]]:
    totals = _rows(_sized(rects, 20.0, 20.0, min_lw=1.0))
    rowsums = _rows(_sized(rects, 12.0, 16.0))
    bubbles = [c for c in _circles(page, 8.0) if c[0] > 440]
    if len(totals) != 3 or len(rowsums) != 15 or len(bubbles) != 90:
        sys.exit(
            f"page 2: unexpected layout totals={len(totals)} rowsums={len(rowsums)} bubbles={len(bubbles)}"
        )
    fields, rules = [], []
    for n, row in enumerate(totals, start=1):
        mine = [c for c in bubbles if row[0][1] < c[1] < row[0][1] + 150]
        cols = []
        for box in row:
            col = sorted([c for c in mine if box[0] < c[0] < box[0] + box[2]], key=lambda c: c[1])
            if len(col) != 10:
                sys.exit(f"page 2 paslon {n}: expected 10 bubbles under each box, got {len(col)}")
            cols.append(col)  # top to bottom = digits 0..9
        fields.append(_number(f"paslon_{n}", row, label=f"IV.{n} suara sah paslon {n}", bubbles=cols))
        rsum = []
        for k, rr in enumerate(rowsums[5 * (n - 1) : 5 * n], start=1):
            name = f"paslon_{n}_baris_{k}"
            fields.append(_number(name, rr, label=f"IV.{n} jumlah baris {k}", max_value=99, required=False))
            rsum.append(name)
        rules.append(
            {
                **_sum_rule(rsum, f"paslon_{n}", f"IV.{n}: jumlah tiap baris = jumlah suara sah"),
                "when": "any_filled",
            }
        )
    return fields, rules


def page3(rects) -> tuple[list[dict], list[dict]]:
    totals = _rows(_sized(rects, 20.0, 20.0, min_lw=1.0))
    rowsums = _rows(_sized(rects, 12.0, 12.5))
    date = _rows(_sized(rects, 16.0, 16.0))
    if len(totals) != 3 or len(rowsums) != 5 or len(date) != 1 or len(date[0]) != 8:
        sys.exit("page 3: unexpected layout")
    fields = [
        _number("suara_sah", totals[0], label="V.A jumlah seluruh suara sah"),
        _number("suara_tidak_sah", totals[1], label="V.B jumlah suara tidak sah"),
        _number("total_suara", totals[2], label="V.C jumlah suara sah dan tidak sah"),
    ]
    rsum = []
    for k, rr in enumerate(rowsums, start=1):
        fields.append(
            _number(
                f"suara_tidak_sah_baris_{k}", rr, label=f"V.B jumlah baris {k}", max_value=99, required=False
            )
        )
        rsum.append(f"suara_tidak_sah_baris_{k}")
    d = date[0]
    fields += [
        _number("tanggal", d[0:2], label="tanggal", max_value=31),
        _number("bulan", d[2:4], label="bulan", max_value=12),
        _number("tahun", d[4:8], label="tahun", max_value=2024),
    ]
    fields[-3]["min"] = 1
    fields[-2]["min"] = 1
    fields[-1]["min"] = 2024
    rules = [
        _sum_rule(["suara_sah", "suara_tidak_sah"], "total_suara", "V.C = V.A + V.B"),
        {
            **_sum_rule(rsum, "suara_tidak_sah", "V.B: jumlah tiap baris = jumlah suara tidak sah"),
            "when": "any_filled",
        },
        {
            "name": "tanggal penghitungan",
            "kind": "date",
            "day": "tanggal",
            "month": "bulan",
            "year": "tahun",
            "start": "2024-02-14",
            "end": "2024-03-31",
            "usual": ["2024-02-14", "2024-02-15"],
            "unusual_odds": 0.05,
            "label": "Tanggal dalam masa penghitungan suara Pemilu 2024 (14 Februari - 31 Maret 2024)",
            "note": "Hari pemungutan suara 14 Februari 2024; penghitungan dapat berlanjut ke 15 Februari; "
            "PSU/PSL/PSS (sedikit TPS) sesudahnya: tanggal lain berbobot 0,05.",
        },
    ]
    return fields, rules


def measure(pdf: Path) -> list[dict]:
    import pymupdf

    doc = pymupdf.open(pdf)
    if doc.page_count != 3:
        sys.exit(f"{pdf}: expected 3 pages, got {doc.page_count}")
    out = []
    for n, page in enumerate(doc, start=1):
        rects = _rects(page)
        if n == 1:
            fields, rules = page1(rects)
        elif n == 2:
            fields, rules = page2(page, rects)
        else:
            fields, rules = page3(rects)
        out.append(
            {
                "schema": 1,
                "form": FORM_ID,
                "page": n,
                "title": f"Formulir Model C.HASIL-PPWP 2024, halaman {n} dari 3",
                "size_mm": [_r(page.rect.width * MM), _r(page.rect.height * MM)],
                "markers": {"kind": "double_square", "square_mm": 7.2, "points_mm": _markers(rects)},
                "tag": {"family": "apriltag_36h10", "id": TAG_IDS[n], "corners_mm": _tag(page, TAG_IDS[n])},
                "frames_mm": _frames(rects),
                "fields": fields,
                "rules": rules,
            }
        )
    return out


def dump(obj: dict) -> str:
    """JSON with one field / rule per line and number lists kept inline (reviewable diffs)."""
    text = json.dumps(obj, indent=1, ensure_ascii=False)
    flat = re.compile(r"\[\s*([-0-9.,\s]+?)\s*\]")
    text = flat.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
    nested = re.compile(r"\[\s*((?:\[[-0-9., ]*\],?\s*)+)\]")
    text = nested.sub(lambda m: "[" + ", ".join(re.findall(r"\[[-0-9., ]*\]", m.group(1))) + "]", text)
    text = nested.sub(lambda m: "[" + ", ".join(re.findall(r"\[[-0-9., ]*\]", m.group(1))) + "]", text)
    return text + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pdf", nargs="?", type=Path, default=DEFAULT_PDF)
    ap.add_argument("--out", type=Path, default=REPO / "inference" / "forms" / FORM_ID)
    args = ap.parse_args(argv)
    if not args.pdf.is_file():
        print(f"PDF not found: {args.pdf}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for page in measure(args.pdf):
        path = args.out / f"page{page['page']}.json"
        path.write_text(dump(page), encoding="utf-8")
        nboxes = sum(len(f["boxes_mm"]) for f in page["fields"])
        print(f"{path}: {len(page['fields'])} fields, {nboxes} boxes, {len(page['rules'])} rules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
