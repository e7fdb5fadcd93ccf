"""Camera backends (picamera2, folder, v4l2) and the photo-quality check."""

from __future__ import annotations

from capture.base import Camera, CaptureError, CaptureTimeout, Frame

__all__ = ["Camera", "CaptureError", "CaptureTimeout", "Frame", "open_camera"]


def open_camera(camera_config) -> Camera:
    """Open the backend named in *camera_config* (a firmware.config.CameraConfig)."""
    backend = camera_config.backend
    if backend == "folder":
        from capture.folder import FolderCamera

        if camera_config.folder is None:
            raise CaptureError("camera.backend = 'folder' needs camera.folder (a directory of photos)")
        return FolderCamera(camera_config.folder, loop=camera_config.loop,
                            jpeg_quality=camera_config.jpeg_quality, timeout_s=camera_config.timeout_s)
    if backend == "v4l2":
        from capture.v4l2 import V4l2Camera

        return V4l2Camera(device=camera_config.device, width=camera_config.width, height=camera_config.height,
                          timeout_s=camera_config.timeout_s, jpeg_quality=camera_config.jpeg_quality).open()
    if backend == "picamera2":
        from capture.picam import Picamera2Camera

        return Picamera2Camera(camera_config).open()
    raise CaptureError(f"unknown camera backend {backend!r}")
