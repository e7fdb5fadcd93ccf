"""`tpskit read IMAGE... [--json] [--tps] [--annotate DIR]`: read photos of C.HASIL pages, no hardware.

With ``--json`` one JSON object per line per image (the reader's contract); with ``--tps`` the images are the
pages of one TPS and a last line ``{"tps": true, "form": ...}`` carries the cross-page checks of the form the
pages are of (``--form``, else the one they are read as; pages of different forms are no TPS: said in that
line, exit 1). With ``--form``, a photo of a page of another form says which form it is (exit 1). A file
that is missing, not an image or truncated gets its own error line; the others are still read. With
``--annotate`` every photo's line names its annotated picture (``"annotated"``), or says why it could not be
written (``"error"``). Exit status: 0 when every file could be read and annotated (whatever the page
statuses), 1 when some file could not, 2 on a setup error (model, config).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="photos of form pages (JPEG/PNG)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line per image")
    parser.add_argument("--tps", action="store_true",
                        help="the images are the pages of one TPS: add a line with the cross-page checks")
    parser.add_argument("--annotate", metavar="DIR", type=Path,
                        help="write the annotated picture of every reading into DIR")
    parser.add_argument("--evidence", action="store_true",
                        help="add what each reading rests on to its JSON line: the page posterior, every "
                             "box's three likeliest classes with probabilities, the bubbles")
    parser.add_argument("--form", default=None, help="form id (default: recognise any known form by its tag)")
    parser.add_argument("--dpt", type=_dpt, default=None,
                        help="the TPS's registered voters (DPT): a page 1 whose DPT reads otherwise goes to "
                             "review (default: kit.dpt of --config)")
    parser.add_argument("--model", type=Path, default=None,
                        help="digit model .tflite (default: config/shipped)")


def _dpt(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"DPT must be a whole number 1..1000, got {text!r}")
    return value


def _load_image(path: Path):
    import cv2
    import numpy as np

    from capture.base import jpeg_is_complete, too_many_pixels

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, ("file_missing", f"berkas tidak ditemukan: {path}")
    except OSError as exc:
        return None, ("file_unreadable", f"berkas tidak bisa dibaca: {path} ({exc.strerror})")
    if not data:
        return None, ("not_an_image", f"berkas kosong: {path}")
    if data[:2] == b"\xff\xd8" and not jpeg_is_complete(data):  # as the folder camera decides
        return None, ("truncated",
                      f"foto JPEG terpotong (tidak lengkap): {path}; salin ulang atau foto ulang")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        if too_many_pixels(exc):
            return None, ("not_an_image", f"foto terlalu besar (lebih banyak piksel dari batas "
                                          f"OPENCV_IO_MAX_IMAGE_PIXELS): {path}; perkecil resolusinya")
        img = None
    if img is None:
        return None, ("not_an_image", f"bukan foto JPEG/PNG yang bisa dibaca: {path}")
    return img, None


def annotation_names(paths: list[Path]) -> list[str]:
    """One annotated picture's file name per photo, in the order given: ``<stem>.annotated.jpg``, then
    ``<stem>-2.annotated.jpg``, ``-3`` ... for photos whose name is taken already (``a/page1.jpg`` and
    ``b/page1.jpg``; names differing in case only are one file on a FAT stick)."""
    taken: set[str] = set()
    names = []
    for path in paths:
        name, k = f"{path.stem}.annotated.jpg", 1
        while name.casefold() in taken:
            k += 1
            name = f"{path.stem}-{k}.annotated.jpg"
        taken.add(name.casefold())
        names.append(name)
    return names


def _write_annotation(path: Path, image) -> str | None:
    """Write the annotated picture; None, or what went wrong and what to do."""
    import cv2

    try:
        ok = cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    except cv2.error as exc:
        ok, why = False, str(exc).strip().splitlines()[-1]
    else:
        why = "disk penuh atau folder tidak bisa ditulisi"
    if ok:
        return None
    return (f"gambar beranotasi tidak tersimpan ke {path} ({why}); periksa ruang disk dan izin tulis "
            "folder --annotate")


def other_form(image, form_id: str) -> tuple[str, int] | None:
    """``(form, page)`` of a photo in which the reader of ``form_id`` found no page of it (``unknown_form``),
    recognised among all known forms; None when it is none of theirs either."""
    from inference.register import RetakeError, register

    try:
        page = register(image).page
    except RetakeError as exc:  # recognised, but not readable as it is (blurred, low resolution, ...)
        page = exc.page
    return None if page is None or page.form == form_id else (page.form, page.page)


def _other_form_reason(form_id: str, found: tuple[str, int]) -> dict:
    form, page = found
    return {"code": "other_form",
            "message": f"Foto ini halaman {page} formulir {form}, bukan formulir {form_id} (--form). Baca "
                       f"dengan --form {form}, atau tanpa --form (formulir dikenali dari kode halamannya)."}


MIXED_FORMS_ADVICE = "Baca halaman tiap formulir terpisah (satu perintah per TPS dan formulir)."


def _error_line(path: Path, form: str, code: str, message: str) -> dict:
    return {"image": str(path), "form": form, "page": None, "status": "retake",
            "reasons": [{"code": code, "message": message}], "fields": {}, "checks": [], "timing_ms": {},
            "error": message}


def _table(d: dict, out) -> None:
    print(f"== {d['image']}: halaman {d.get('page') or '?'} -> {d['status'].upper()}", file=out)
    for name, f in d.get("fields", {}).items():
        digits = "".join("_" if x is None else str(x) for x in f["digits"])
        bub = "" if f.get("bubbles") is None else f"  bulatan={f['bubbles']}"
        val = "-" if f["value"] is None else f["value"]
        print(f"   {name:28s} {val!s:>5}  {f['confidence']:.4f}  [{digits}]{bub}", file=out)
    for c in d.get("checks", []):
        if c["ok"] is not True:
            print(f"   cek {'GAGAL' if c['ok'] is False else 'tidak dapat dicek'}: {c['rule']}", file=out)
    for r in d.get("reasons", []):
        print(f"   ! {r['code']}: {r['message']}", file=out)
    if d.get("annotated"):
        print(f"   gambar beranotasi: {d['annotated']}", file=out)
    if d.get("error") and all(r["message"] != d["error"] for r in d.get("reasons", [])):
        print(f"   ! {d['error']}", file=out)


def run(args: argparse.Namespace) -> int:
    from firmware import config as config_mod
    from inference.reader import PageReader, check_tps_pages
    from inference.rules import load_tps_rules
    from inference.templates import DEFAULT_FORM, TemplateError, available_forms

    options, model, known = config_mod.ReaderConfig().options(), args.model, {}
    if getattr(args, "config", None):
        try:
            cfg = config_mod.load(args.config)
        except config_mod.ConfigError as exc:
            print(f"tpskit read: {exc}", file=sys.stderr)
            return 2
        options, model, known = cfg.reader.options(), model or cfg.paths.model, cfg.kit.known()
    if args.dpt is not None:
        known = {**known, "dpt": args.dpt}
    try:
        from inference.digits import DigitClassifier

        classifier = DigitClassifier.load(model)
    except Exception as exc:  # model missing/corrupt: nothing can be read
        print(f"tpskit read: cannot load the digit model ({exc}); check paths.model or --model",
              file=sys.stderr)
        return 2
    form_id = args.form or DEFAULT_FORM
    try:
        reader = PageReader(classifier=classifier, form=args.form, known=known, **options)
        if args.tps:  # a malformed tps.json is a setup error before any photo is read, not a traceback after
            for form in [args.form] if args.form else available_forms():  # (the pages name their form)
                load_tps_rules(form)
    except TemplateError as exc:
        print(f"tpskit read: {exc}", file=sys.stderr)
        return 2
    if args.annotate:
        try:
            args.annotate.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"tpskit read: --annotate {args.annotate} cannot be used as a directory "
                  f"({exc.strerror or exc})", file=sys.stderr)
            return 2
    failed = False
    readings = []
    annotated = annotation_names([Path(name) for name in args.images]) if args.annotate else []
    for k, name in enumerate(args.images):
        path = Path(name)
        img, err = _load_image(path)
        if err:
            failed = True
            d = _error_line(path, form_id, *err)
            readings.append(d)
        else:
            r = reader.read(img, name=str(path))
            d = r.to_dict()
            if args.form and any(x["code"] == "unknown_form" for x in d["reasons"]):
                found = other_form(img, args.form)
                if found:  # not "unknown form, use an official C.HASIL form": say which it is
                    reason = _other_form_reason(args.form, found)
                    d["reasons"] = [reason if x["code"] == "unknown_form" else x for x in d["reasons"]]
                    d["error"], failed = reason["message"], True
            if args.evidence:
                d["evidence"] = r.evidence_dict()
            readings.append(d)
            if args.annotate:
                target = args.annotate / annotated[k]
                problem = _write_annotation(target, r.annotated)
                if problem:
                    failed = True
                    d["error"] = problem
                else:
                    d["annotated"] = str(target)
        if args.json:
            print(json.dumps(d, ensure_ascii=False), flush=True)
        else:
            _table(d, sys.stdout)
    if args.tps:
        t = check_tps_pages(readings, form_id=args.form, advice=MIXED_FORMS_ADVICE)
        mixed = next((r["message"] for r in t["reasons"] if r["code"] == "mixed_forms"), None)
        if mixed:
            failed, t["error"] = True, mixed
        if args.json:
            print(json.dumps(t, ensure_ascii=False), flush=True)
            if mixed:
                print(f"tpskit read --tps: {mixed}", file=sys.stderr)
        else:
            print(f"== TPS: {t['status'].upper()}")
            for c in t["checks"]:
                print(f"   {'OK   ' if c['ok'] else 'GAGAL' if c['ok'] is False else '?    '} {c['rule']}")
            for r in t["reasons"]:
                print(f"   ! {r['code']}: {r['message']}")
    return 1 if failed else 0
