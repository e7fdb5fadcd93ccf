"""USB (UVC/V4L2) camera through OpenCV: for benches and kits without a Camera Module."""

from __future__ import annotations

import time

from capture.base import CaptureError, Frame, TimeoutRunner, frame_from_bgr


class V4l2Camera:
    """Opens /dev/video<device> lazily, flushes stale frames, grabs one still per capture()."""

    FLUSH_FRAMES = 3

    def __init__(self, *, device: int = 0, width: int = 1920, height: int = 1080, timeout_s: float = 10.0,
                 jpeg_quality: int = 90) -> None:
        self.device = device
        self.width = width
        self.height = height
        self.jpeg_quality = jpeg_quality
        self._runner = TimeoutRunner(timeout_s=timeout_s, name=f"USB camera /dev/video{device}")
        self._cap = None

    def _open(self):
        import cv2

        cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        if not cap.isOpened():
            raise CaptureError(f"USB camera /dev/video{self.device} cannot be opened; check the cable")
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        return cap

    def _grab(self) -> Frame:
        if self._cap is None:
            self._cap = self._open()
        for _ in range(self.FLUSH_FRAMES):
            self._cap.grab()
        ok, image = self._cap.read()
        if not ok or image is None:
            raise CaptureError(f"USB camera /dev/video{self.device} returned no picture")
        return frame_from_bgr(image, quality=self.jpeg_quality, taken_at=time.time(),
                              source=f"v4l2:{self.device}")

    def capture(self) -> Frame:
        return self._runner.call(self._grab)

    def close(self) -> None:
        if self._cap is not None and not self._runner.hung:
            self._cap.release()
            self._cap = None
