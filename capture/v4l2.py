"""USB (UVC/V4L2) camera through OpenCV: for benches and kits without a Camera Module."""

from __future__ import annotations

import time

from capture.base import CaptureError, DriverCamera, Frame, frame_from_bgr


class V4l2Camera(DriverCamera):
    """open() opens /dev/video<device> (under the timeout); capture() flushes stale frames, grabs one still.

    As with the Camera Module, a call abandoned on its timeout still runs in the driver: close() (and an
    open() that timed out) then leaves the device to that call, which releases it if it ever returns.
    """

    FLUSH_FRAMES = 3

    def __init__(self, *, device: int = 0, width: int = 1920, height: int = 1080, timeout_s: float = 10.0,
                 jpeg_quality: int = 90) -> None:
        self.device = device
        self.width = width
        self.height = height
        self.jpeg_quality = jpeg_quality
        self._cap = None
        super().__init__(name=f"USB camera /dev/video{device}", timeout_s=timeout_s)

    def _open(self) -> None:
        import cv2

        cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        try:
            if not cap.isOpened():
                raise CaptureError(f"{self.name} cannot be opened; check the cable")
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        except BaseException:
            cap.release()
            raise
        self._cap = cap

    def _grab(self) -> Frame:
        if self._cap is None:  # an open() that failed: tried again at the press
            self._open()
        for _ in range(self.FLUSH_FRAMES):
            self._cap.grab()
        ok, image = self._cap.read()
        if not ok or image is None:
            raise CaptureError(f"{self.name} returned no picture")
        return frame_from_bgr(image, quality=self.jpeg_quality, taken_at=time.time(),
                              source=f"v4l2:{self.device}")

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()
