"""Folder camera: replays image files from a directory, one per press (demo, tests, soak)."""

from __future__ import annotations

import time
from pathlib import Path

from capture.base import CaptureError, Frame, TimeoutRunner, decode_image, frame_from_bgr


class FolderCamera:
    """Each capture() returns the next file (sorted by name) of *folder*.

    Every regular, non-hidden file counts, so a stray non-image is refused with a clear error
    (and skipped at the next press) rather than silently ignored. The folder is listed again at
    each press, so files dropped in while running are picked up.
    """

    def __init__(self, folder: Path | str, *, loop: bool = False, jpeg_quality: int = 90,
                 timeout_s: float = 10.0) -> None:
        self.folder = Path(folder)
        self.loop = loop
        self.jpeg_quality = jpeg_quality
        self._runner = TimeoutRunner(timeout_s=timeout_s, name="folder camera")
        self._last: str | None = None  # name of the file taken last
        if not self.folder.is_dir():
            raise CaptureError(f"camera folder {self.folder} does not exist; create it or fix camera.folder")

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def capture(self) -> Frame:
        try:
            files = self.files()
        except OSError as exc:  # the folder was removed (a USB stick pulled out) or cannot be listed
            raise CaptureError(f"camera folder {self.folder} cannot be read ({exc.strerror}); "
                               "put it back or fix camera.folder") from None
        if not files:
            raise CaptureError(f"camera folder {self.folder} is empty: put photos of the pages in it")
        # the next name after the last one taken: a file taken and then removed does not make the
        # folder skip the one after it
        later = [p for p in files if self._last is None or p.name > self._last]
        if not later:
            if not self.loop:
                raise CaptureError(f"no more photos in {self.folder} ({len(files)} used); "
                                   "add photos or set camera.loop = true")
            later = files
        path = later[0]
        self._last = path.name
        return self._runner.call(lambda: self._read(path))

    def _read(self, path: Path) -> Frame:
        taken_at = time.time()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CaptureError(f"{path.name}: cannot be read ({exc.strerror})") from None
        source = f"folder:{path.name}"
        if data[:2] != b"\xff\xd8":  # PNG, BMP, ...: stored and sent as a colour JPEG like the camera's
            image = decode_image(data, name=path.name, color=True)
            return frame_from_bgr(image, quality=self.jpeg_quality, taken_at=taken_at, source=source)
        return Frame(jpeg=data, image=decode_image(data, name=path.name), taken_at=taken_at, source=source)

    def close(self) -> None:
        pass
