"""`tpskit calibrate`: check the stand and camera with a page under it, store fixed camera settings."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", help="measure this photo instead of taking one (no settings are stored)")
    p.add_argument("--out", help="annotated picture (default <state_dir>/calibration.jpg)")
    p.add_argument("--dry-run", action="store_true", help="do not write the chosen settings to the config")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def store_camera_settings(config_path: Path, settings: dict) -> bool:
    """Merge *settings* into [camera] of the config file (validated first); True if the file changed."""
    import tomllib

    from comms.durable import write_atomic
    from firmware import config as cfg
    from firmware.provision import CONFIG_HEADER
    from firmware.tomlwrite import dumps

    data = tomllib.loads(config_path.read_text(encoding="utf-8"))
    camera = data.setdefault("camera", {})
    before = dict(camera)
    camera.update(settings)
    if camera == before:
        return False
    cfg.parse(data)  # never write a config the kit would refuse
    write_atomic(config_path, dumps(data, header=CONFIG_HEADER), mode=0o644)
    return True


def run(args: argparse.Namespace) -> int:
    import cv2

    from capture import CaptureError, open_camera
    from firmware import config as cfg
    from firmware.calibrate import (
        annotate,
        camera_metadata,
        choose_settings,
        evaluate,
        measure,
        px_per_mm_at,
        stand_height_mm,
    )

    config_path = Path(args.config or cfg.DEFAULT_PATH)
    try:
        config = cfg.load(config_path)
    except cfg.ConfigError as exc:
        print(f"tpskit calibrate: {exc}", file=sys.stderr)
        return 2
    min_ppm = config.reader.min_px_per_mm
    settings: dict = {}
    stored = False
    try:
        if args.image:
            try:  # (a missing file is not handed to OpenCV: it would print its own warning first)
                image = cv2.imread(args.image, cv2.IMREAD_COLOR) if Path(args.image).is_file() else None
            except cv2.error:  # e.g. a header claiming more pixels than OpenCV decodes
                image = None
            if image is None:
                why = ("tidak ada / not found" if not Path(args.image).is_file()
                       else "bukan foto JPEG/PNG yang bisa dibaca / not a readable JPEG/PNG photo")
                print(f"tpskit calibrate: --image {args.image}: {why}", file=sys.stderr)
                return 2
            m = measure(image, min_px_per_mm=min_ppm)
        else:
            # first photo fully automatic (exposure, gain, white balance, autofocus), even when the config
            # already holds fixed settings from an earlier calibration
            auto = config.camera.model_copy(update={"exposure_us": None, "analogue_gain": None,
                                                    "lens_position": None, "awb_gains": None})
            camera = open_camera(auto)
            try:
                frame = camera.capture()
                meta = camera_metadata(camera)
            finally:
                camera.close()
            image = frame.image
            m = measure(image, min_px_per_mm=min_ppm)
            settings = choose_settings(meta, m)
            if settings:
                # photograph again with the fixed settings and judge that photo
                fixed = config.camera.model_copy(update=settings)
                camera = open_camera(fixed)
                try:
                    image = camera.capture().image
                finally:
                    camera.close()
                m = measure(image, min_px_per_mm=min_ppm)
    except CaptureError as exc:
        print(f"tpskit calibrate: kamera gagal / camera failed: {exc}\n"
              "  → periksa kabel pita kamera; jika layanan berjalan: sudo systemctl stop tpskit",
              file=sys.stderr)
        return 2
    items = evaluate(m, min_px_per_mm=min_ppm)
    ok = all(i.ok for i in items)
    store_failed = False
    if settings and ok and not args.dry_run:
        try:
            stored = store_camera_settings(config_path, settings)
        except (OSError, cfg.ConfigError) as exc:
            store_failed = True
            print(f"tpskit calibrate: GAGAL / FAILED: pengaturan kamera tidak bisa disimpan ke "
                  f"{config_path}: {exc}\n  → jalankan dengan sudo; periksa kartu SD (penuh/read-only), "
                  "lalu kalibrasi lagi "
                  "/ camera settings not stored: run with sudo, check the SD card, calibrate again",
                  file=sys.stderr)
    out = Path(args.out) if args.out else config.paths.state_dir / "calibration.jpg"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(out), annotate(image, m, items, min_px_per_mm=min_ppm)):
            raise OSError(f"{out} cannot be written (no permission, disk full, or not a .jpg/.png name)")
    except (OSError, cv2.error) as exc:
        print(f"tpskit calibrate: gambar beranotasi tidak tersimpan / annotated picture not written: {exc}",
              file=sys.stderr)
        out = None
    from firmware.provision import fix_state_ownership

    fix_state_ownership(config.paths.state_dir)  # run as root: the daemon must still own its files
    result = {"ok": ok and not store_failed, "items": [vars(i) for i in items], "settings": settings,
              "stored": stored,
              "annotated": str(out) if out else None, "page": m.page, "px_per_mm_min": m.px_per_mm_min,
              "glare": m.glare, "edge_mm": m.edge_mm, "paper": m.paper, "coverage": m.coverage}
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        h = stand_height_mm()
        print(f"Kalibrasi kit {config.kit.kit_id} (tinggi lensa ideal ≈ {h / 10:.0f} cm, "
              f"≈ {px_per_mm_at(h):.1f} px/mm)")
        for i in items:
            print(f"  [{'OK   ' if i.ok else 'ATUR '}] {i.name:10} {i.value}")
            if i.advice:
                print(f"          → {i.advice}")
        if settings:
            what = "disimpan ke " + str(config_path) if stored else "tidak disimpan"
            print(f"  pengaturan kamera / camera settings: {settings} ({what})")
        if out:
            print(f"  gambar beranotasi / annotated picture: {out}")
        print(_verdict(ok=ok, store_failed=store_failed))
    if store_failed:
        return 2
    return 0 if ok else 1


def _verdict(*, ok: bool, store_failed: bool) -> str:
    if store_failed:
        return "KESIMPULAN: BELUM SIAP — pengaturan kamera tidak tersimpan / camera settings not stored"
    return "KESIMPULAN: SIAP" if ok else "KESIMPULAN: ATUR ULANG lalu jalankan kalibrasi lagi"
