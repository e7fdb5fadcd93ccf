"""Raspberry Pi Camera Module 3 through picamera2 (imported lazily: it exists only on the Pi).

Exposure, gain, white balance and focus are fixed once at open time from the calibrated config,
so every page is photographed the same way; each still is taken under a timeout.
"""

from __future__ import annotations

import logging
import threading
import time

from capture.base import CaptureError, DriverCamera, Frame, frame_from_bgr

log = logging.getLogger(__name__)

# libcamera lets one Picamera2 hold the camera: taken before Picamera2() and kept until it is closed, so while
# an earlier one hangs in the driver a new open fails at once instead of hanging (a thread more each retry)
_IN_USE = threading.Lock()


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


class Picamera2Camera(DriverCamera):
    """Camera Module 3 stills; open() configures once, capture() returns a Frame or raises CaptureError.

    A call abandoned on its timeout still runs in the driver: close() (and an open() that timed out) then
    leaves the camera to that call, which releases it if it ever returns, so a new instance can have it.
    """

    def __init__(self, camera_config) -> None:
        self.config = camera_config
        self._cam = None
        super().__init__(name="Camera Module", timeout_s=camera_config.timeout_s)

    def _open(self) -> None:
        try:
            from picamera2 import Picamera2  # noqa: PLC0415 - only on the Pi
        except ImportError:
            raise CaptureError("picamera2 is not installed: on the Pi run 'apt install python3-picamera2'; "
                               "elsewhere use camera.backend = 'folder' or 'v4l2'") from None
        if not _IN_USE.acquire(blocking=False):
            raise CaptureError("Camera Module is still held by an earlier open or capture that hangs in the "
                               "driver; restart the kit if this repeats")
        try:
            # Picamera2() opens a pipe before it looks the camera up and leaks it if there is none: ask first
            if not Picamera2.global_camera_info():
                raise IndexError("libcamera lists no camera")
            cam = Picamera2()
        except BaseException as exc:
            _IN_USE.release()
            if isinstance(exc, (IndexError, RuntimeError)):
                raise CaptureError(f"no Camera Module found ({exc}); check the ribbon cable") from None
            raise
        try:
            cfg = cam.create_still_configuration(
                main={"size": (self.config.width, self.config.height), "format": "RGB888"}, buffer_count=1)
            cam.configure(cfg)
            controls = fixed_controls(self.config)
            if controls:
                cam.set_controls(controls)
            cam.start()
        except Exception as exc:  # e.g. no memory for 12 MP buffers: release the camera, or every retry
            try:
                cam.close()  # finds it busy until the process ends
            finally:
                _IN_USE.release()
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

    def _release(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        try:
            cam.stop()
        except Exception:  # noqa: BLE001 - close it all the same
            log.warning("Camera Module did not stop", exc_info=True)
        try:
            cam.close()
        finally:
            _IN_USE.release()
