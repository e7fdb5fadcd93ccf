"""Raspberry Pi Camera Module 3 through picamera2 (imported lazily: it exists only on the Pi).

Exposure, gain, white balance and focus are fixed once at open time from the calibrated config,
so every page is photographed the same way; each still is taken under a timeout.
"""

from __future__ import annotations

import logging
import time

from capture.base import CaptureError, Frame, TimeoutRunner, frame_from_bgr

log = logging.getLogger(__name__)


def fixed_controls(camera_config) -> dict:
    """libcamera controls for the calibrated settings in *camera_config* (pure, testable off the Pi)."""
    controls: dict = {}
    if camera_config.exposure_us is not None:
        controls["AeEnable"] = False
        controls["ExposureTime"] = int(camera_config.exposure_us)
    if camera_config.analogue_gain is not None:
        controls["AeEnable"] = False
        controls["AnalogueGain"] = float(camera_config.analogue_gain)
    if camera_config.awb_gains is not None:
        controls["AwbEnable"] = False
        controls["ColourGains"] = tuple(float(g) for g in camera_config.awb_gains)
    if camera_config.lens_position is not None:
        controls["AfMode"] = 0  # libcamera AfModeManual
        controls["LensPosition"] = float(camera_config.lens_position)
    return controls


class Picamera2Camera:
    """Camera Module 3 stills; open() configures once, capture() returns a Frame or raises CaptureError."""

    def __init__(self, camera_config) -> None:
        self.config = camera_config
        self._runner = TimeoutRunner(timeout_s=camera_config.timeout_s, name="Camera Module")
        self._cam = None

    def open(self) -> Picamera2Camera:
        self._runner.call(self._open)
        return self

    def _open(self) -> None:
        try:
            from picamera2 import Picamera2  # noqa: PLC0415 - only on the Pi
        except ImportError:
            raise CaptureError("picamera2 is not installed: on the Pi run 'apt install python3-picamera2'; "
                               "elsewhere use camera.backend = 'folder' or 'v4l2'") from None
        try:
            cam = Picamera2()
        except (IndexError, RuntimeError) as exc:
            raise CaptureError(f"no Camera Module found ({exc}); check the ribbon cable") from None
        try:
            cfg = cam.create_still_configuration(
                main={"size": (self.config.width, self.config.height), "format": "RGB888"}, buffer_count=1)
            cam.configure(cfg)
            controls = fixed_controls(self.config)
            if controls:
                cam.set_controls(controls)
            cam.start()
        except Exception as exc:  # e.g. no memory for 12 MP buffers: release the camera, or every retry
            cam.close()  # finds it busy until the process ends
            raise CaptureError(f"Camera Module could not be started ({exc}); press again, "
                               "restart the kit if this repeats") from None
        if self.config.lens_position is None:
            try:
                cam.autofocus_cycle()  # once, at open; the stand keeps the distance fixed
            except Exception as exc:  # noqa: BLE001 - fixed-focus modules have no AF
                log.warning("autofocus not available: %s", exc)
        self._cam = cam

    def _grab(self) -> Frame:
        if self._cam is None:
            self._open()
        taken_at = time.time()
        image = self._cam.capture_array("main")  # RGB888 in libcamera = BGR byte order, as OpenCV wants
        if image is None or image.size == 0:
            raise CaptureError("Camera Module returned an empty picture")
        image = image[:, :, :3]
        return frame_from_bgr(image, quality=self.config.jpeg_quality, taken_at=taken_at, source="picamera2")

    def capture(self) -> Frame:
        return self._runner.call(self._grab)

    def close(self) -> None:
        if self._cam is not None and not self._runner.hung:
            try:
                self._cam.stop()
                self._cam.close()
            finally:
                self._cam = None
