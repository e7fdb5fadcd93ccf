"""What every camera backend gives the kit: a Frame, or a CaptureError with a clear message."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

T = TypeVar("T")

log = logging.getLogger(__name__)


class CaptureError(RuntimeError):
    """The camera gave no usable picture; the message says what and what to do."""


class CaptureTimeout(CaptureError):
    """The camera did not answer within its timeout."""


@dataclass(frozen=True)
class Frame:
    """One still: the JPEG as stored and sent, its decoded image, when and where it came from.

    ``image`` is 8-bit grayscale: the reader works on luminance only, and a 12 MP grayscale frame is a third
    of the memory of a colour one (this keeps the daemon inside a Pi Zero 2 W's budget). The colour photo
    is kept, as taken, in ``jpeg``.
    """

    jpeg: bytes
    image: np.ndarray
    taken_at: float
    source: str


class Camera(Protocol):
    """A still camera. capture() returns within its timeout or raises CaptureError."""

    def capture(self) -> Frame: ...

    def close(self) -> None: ...


def encode_jpeg(image: np.ndarray, *, quality: int = 90) -> bytes:
    """BGR (or gray) image -> JPEG bytes."""
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise CaptureError("gambar tidak bisa disimpan sebagai JPEG (image could not be encoded)")
    return buf.tobytes()


def frame_from_bgr(image: np.ndarray, *, quality: int, taken_at: float, source: str) -> Frame:
    """A camera's colour array -> Frame: the colour JPEG is kept, the reader gets luminance (see Frame)."""
    import cv2

    jpeg = encode_jpeg(image, quality=quality)
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    return Frame(jpeg=jpeg, image=gray, taken_at=taken_at, source=source)


def jpeg_is_complete(data: bytes) -> bool:
    """A JPEG whose scans reach the EOI marker FFD9; a cut-off file's do not.

    Most files end with it (trailing padding allowed); phones append data after it (a motion photo's video,
    maker trailers), so the others are walked segment by segment to their EOI (an EXIF thumbnail's own FFD9
    sits inside a segment and does not count)."""
    if data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return True
    n, i = len(data), 2
    while i + 1 < n:
        if data[i] != 0xFF:
            return False  # no marker where one must be: broken
        m = data[i + 1]
        if m == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if m == 0xD9:
            return True
        if m == 0x01 or 0xD0 <= m <= 0xD7:  # markers without a length
            i += 2
            continue
        if i + 4 > n:
            return False
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if m == 0xDA:  # a scan: entropy-coded data to the next marker (FF00: a stuffed FF; FFD0-D7: restarts)
            while True:
                j = data.find(b"\xff", i)
                if j < 0 or j + 1 >= n:
                    return False
                nxt = data[j + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
                    i = j + 2
                elif nxt == 0xFF:
                    i = j + 1
                else:
                    i = j
                    break
    return False


def too_many_pixels(exc: Exception) -> bool:
    """An OpenCV decode error raised because the picture's header claims more pixels than the limit
    (OPENCV_IO_MAX_IMAGE_PIXELS, read once when OpenCV loads; ``tpskit`` sets it, see firmware.cli)."""
    return "CV_IO_MAX_IMAGE_PIXELS" in str(exc)


def decode_image(data: bytes, *, name: str, color: bool = False) -> np.ndarray:
    """Decode JPEG/PNG/... bytes to 8-bit grayscale (BGR with color=True), refusing empty, non-image,
    undecodable (OpenCV raising on it) and truncated data with a ``CaptureError``."""
    import cv2

    if not data:
        raise CaptureError(f"{name}: file is empty (not a photo); replace it or press again for the next one")
    if data[:2] == b"\xff\xd8" and not jpeg_is_complete(data):
        raise CaptureError(f"{name}: JPEG is truncated (cut off before its end); take the photo again")
    flag = cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error as exc:
        if too_many_pixels(exc):
            raise CaptureError(f"{name}: not an image OpenCV can read: its header claims more pixels than "
                               "OPENCV_IO_MAX_IMAGE_PIXELS allows; use a photo of the page as the camera "
                               "takes it") from None
        image = None
    if image is None or image.size == 0:
        raise CaptureError(f"{name}: not an image OpenCV can read; use a JPEG or PNG photo of the page")
    return image


class BoundedCall:
    """Runs blocking calls on a helper thread and waits for each at most ``limit_s``, calling ``tick`` every
    ``every_s`` meanwhile (the kit's main loop feeds its watchdog so while a camera is waited for).

    A call still running after ``limit_s`` is abandoned with ``TimeoutError`` (Python cannot kill a thread),
    and further calls are refused the same way until it returns. The call's own exception is re-raised.
    """

    def __init__(self, *, limit_s: float, name: str = "call", tick: Callable[[], object] | None = None,
                 every_s: float = 0.5) -> None:
        self.limit_s = limit_s
        self.name = name
        self.every_s = every_s
        self._tick = tick
        self._busy = threading.Lock()

    @property
    def hung(self) -> bool:
        return self._busy.locked()

    def call(self, fn: Callable[[], T]) -> T:
        if not self._busy.acquire(blocking=False):
            raise TimeoutError(f"{self.name} is still stuck in its previous call")
        result: dict[str, object] = {}
        done = threading.Event()

        def work() -> None:
            try:
                result["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                result["error"] = exc
            finally:
                done.set()
                self._busy.release()

        t0 = time.monotonic()
        deadline = t0 + self.limit_s
        threading.Thread(target=work, name=f"{self.name}-call", daemon=True).start()
        step = self.every_s if self._tick is not None else self.limit_s
        while not done.wait(max(0.0, min(step, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name} did not return within {self.limit_s:g} s "
                                   f"(waited {time.monotonic() - t0:.1f} s)")
            if self._tick is not None:
                self._tick()
        if "error" in result:
            raise result["error"]  # type: ignore[misc]
        return result["value"]  # type: ignore[return-value]


class TimeoutRunner(BoundedCall):
    """Runs camera calls on one worker thread and waits at most timeout_s for each: a ``BoundedCall`` whose
    failures are ``CaptureError`` (``CaptureTimeout`` for a hung camera), so the kit reports 'camera not
    responding' instead of hanging."""

    def __init__(self, *, timeout_s: float, name: str = "camera") -> None:
        super().__init__(limit_s=timeout_s, name=name)

    @property
    def timeout_s(self) -> float:
        return self.limit_s

    @timeout_s.setter
    def timeout_s(self, value: float) -> None:
        self.limit_s = value

    def call(self, fn: Callable[[], T]) -> T:
        if self.hung:
            raise CaptureTimeout(f"{self.name} is still stuck in its previous capture; "
                                 "restart the kit if this repeats")
        try:
            return super().call(fn)
        except CaptureError:
            raise
        except TimeoutError as exc:
            raise CaptureTimeout(str(exc).replace("did not return", "gave no picture")) from None
        except Exception as err:
            raise CaptureError(f"{self.name} failed: {err}") from err


class DriverGuard:
    """Who releases a camera device that close() finds busy: close() itself when no call is in the driver,
    else that call, when (if) it returns. A call arriving after close() is refused, so it cannot open the
    device again behind close()'s back; reopen() allows calls again.

    Calls go through ``run`` on the camera's runner thread; ``release`` frees the device (idempotent)."""

    def __init__(self, release: Callable[[], None], *, name: str) -> None:
        self.name = name
        self._release = release
        self._lock = threading.Lock()  # guards the flags below (the runner's thread vs close())
        self._active = False
        self._release_when_done = False
        self._closed = False

    def run(self, fn: Callable[[], T]) -> T:
        """Run *fn* in the driver; a close() meanwhile is carried out when it returns."""
        with self._lock:
            if self._closed:
                raise CaptureError(f"{self.name} is closed")
            self._active = True
        try:
            return fn()
        finally:
            with self._lock:
                self._active = False
                if self._release_when_done:
                    self._release_when_done = False
                    self._release()

    def reopen(self) -> None:
        """Allow calls again (an open() after close())."""
        with self._lock:
            self._closed = False

    def close(self) -> None:
        """Refuse further calls; release the device now, or when the call in the driver returns."""
        with self._lock:
            self._closed = True
            if self._active:
                self._release_when_done = True
                log.warning("%s is stuck in a call: released when that call returns", self.name)
                return
            self._release()


class DriverCamera:
    """A camera whose driver calls may hang (Camera Module, USB camera): each call runs on a
    ``TimeoutRunner`` under a ``DriverGuard``, so one abandoned on its timeout (``CaptureTimeout``) still
    releases the device itself when (if) it returns. Subclasses give ``_open``, ``_grab`` and ``_release``."""

    def __init__(self, *, name: str, timeout_s: float) -> None:
        self.name = name
        self._runner = TimeoutRunner(timeout_s=timeout_s, name=name)
        self._guard = DriverGuard(self._release, name=name)

    def open(self):
        """Open the device now (under the timeout), so a missing camera is an error at start."""
        self._guard.reopen()
        try:
            self._runner.call(lambda: self._guard.run(self._open))
        except CaptureTimeout:
            self.close()  # nobody will hold this instance: the stuck open must not keep the device
            raise
        return self

    def capture(self) -> Frame:
        return self._runner.call(lambda: self._guard.run(self._grab))

    def close(self) -> None:
        self._guard.close()

    def _open(self) -> None:
        raise NotImplementedError

    def _grab(self) -> Frame:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError
