"""Helpers for tests that run the real Kit loop with gpiozero's MockFactory and a folder camera."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
from gpiozero.pins.mock import MockFactory

from capture.folder import FolderCamera
from firmware import config as config_mod
from firmware.app import Kit


def make_config(state_dir, photos=None, **sections) -> config_mod.Config:
    data = {"paths": {"state_dir": str(state_dir), "volatile_ok": True, "min_free_mb": 1},
            "camera": {"backend": "folder", "folder": str(photos) if photos else None, "timeout_s": 5},
            "gpio": {"pin_factory": "mock", "hold_s": 1.0, "bounce_s": 0.05, "verdict_s": 5},
            "kit": {"kit_id": "kit-test", "kode_wilayah": "31.71.01.1001", "tps": 7}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_mod.parse(data)


def photo_folder(path, value: int = 220):
    """A folder camera's folder (created) holding one photo, 01.jpg, of brightness *value*."""
    path.mkdir(parents=True)
    write_photo(path / "01.jpg", value)
    return path


def write_photo(path, value: int = 200) -> bytes:
    img = np.full((240, 320, 3), value, np.uint8)
    cv2.rectangle(img, (40, 40), (280, 200), (0, 0, 0), 3)
    ok, buf = cv2.imencode(".jpg", img)
    path.write_bytes(buf.tobytes())
    return buf.tobytes()


@dataclass
class StubReading:
    status: str
    page: int | None
    annotated: np.ndarray | None = None
    reasons: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"form": "C.HASIL-PPWP-2024", "page": self.page, "status": self.status,
                "reasons": self.reasons, "fields": {"paslon_1": {"value": 101, "confidence": 0.999}},
                "checks": []}


class StubReader:
    """Stands in for inference.reader.PageReader in loop tests: the verdict follows the photo's brightness
    (bright = ok page 1, mid = review page 2, dark = retake), so tests choose verdicts by the files they lay
    down. Optional delay makes a 'slow step'."""

    def __init__(self, delay_s: float = 0.0, fail_on: int | None = None):
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.calls = 0

    def read(self, image):
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on == self.calls:
            raise RuntimeError("reader bug")
        mean = float(image.mean())
        if mean > 150:
            return StubReading("ok", 1, annotated=image[::2, ::2].copy())
        if mean > 60:
            reasons = [{"code": "rule_failed", "message": "jumlah tidak cocok"}]
            return StubReading("review", 2, reasons=reasons)
        return StubReading("retake", None, reasons=[{"code": "too_dark", "message": "foto terlalu gelap"}])


FOLDER = object()  # KitHarness(camera=FOLDER): a FolderCamera on the config's folder (None: no camera)


class KitHarness:
    """Runs Kit.run() in a thread; presses the mock button like a finger; collects verdicts."""

    def __init__(self, cfg, *, reader=None, camera=FOLDER, courier=None, battery=None, factory=None,
                 **kit_options):
        from firmware.store import CaptureStore

        self.factory = factory or MockFactory()
        self.cfg = cfg
        self.store = CaptureStore(cfg.paths.state_dir, min_free_mb=cfg.paths.min_free_mb, volatile_ok=True)
        if camera is FOLDER:
            camera = FolderCamera(cfg.camera.folder, loop=cfg.camera.loop, timeout_s=cfg.camera.timeout_s)
        self.camera = camera
        self.messages: list[str] = []
        self.kit = Kit(cfg, camera=self.camera, reader=reader or StubReader(), store=self.store,
                       courier=courier, battery=battery, pin_factory=self.factory, say=self.messages.append,
                       **kit_options)
        self.verdicts: queue.Queue = queue.Queue()
        self.kit.on_verdict.append(self.verdicts.put)
        self.pin = self.factory.pin(cfg.gpio.button)
        self.rc: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        self.rc = self.kit.run()

    def __enter__(self) -> KitHarness:
        self._thread.start()
        self.kit.started.wait(10)
        return self

    def __exit__(self, *exc):
        from firmware.store import CaptureStore

        self.stop()
        self.kit.close()
        self.factory.reset()
        # reopened for assertions after the kit stopped (like a restart would)
        self.store = CaptureStore(self.cfg.paths.state_dir, min_free_mb=1, volatile_ok=True)

    def stop(self, timeout=10) -> int | None:
        if self._thread.is_alive():
            self.kit.stop("test done")
            self._thread.join(timeout)
        return self.rc

    def press(self, seconds: float = 0.12, *, bounce: bool = False):
        if bounce:
            for _ in range(3):
                self.pin.drive_low()
                time.sleep(0.003)
                self.pin.drive_high()
                time.sleep(0.003)
        self.pin.drive_low()
        time.sleep(seconds)
        self.pin.drive_high()

    def verdict(self, timeout: float = 20):
        return self.verdicts.get(timeout=timeout)

    def leds(self) -> dict:
        return self.kit.panel.indicator.state()

