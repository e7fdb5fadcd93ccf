"""Camera backends: folder replay, clear errors on bad files, per-capture timeout."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from capture import open_camera
from capture.base import CaptureError, CaptureTimeout, TimeoutRunner
from capture.folder import FolderCamera
from capture.picam import fixed_controls
from firmware.config import CameraConfig


def page(value: int = 200) -> np.ndarray:
    img = np.full((120, 160, 3), value, np.uint8)
    cv2.putText(img, "C", (40, 80), cv2.FONT_HERSHEY_SIMPLEX, 2, (0, 0, 0), 3)
    return img


def write_jpeg(path, value=200):
    ok, buf = cv2.imencode(".jpg", page(value))
    path.write_bytes(buf.tobytes())
    return buf.tobytes()


def test_folder_replays_in_name_order_and_keeps_jpeg_bytes(tmp_path):
    a = write_jpeg(tmp_path / "a.jpg", 210)
    cv2.imwrite(str(tmp_path / "b.png"), page(100))
    cam = FolderCamera(tmp_path)
    f1, f2 = cam.capture(), cam.capture()
    assert f1.jpeg == a and f1.source == "folder:a.jpg" and f1.image.shape == (120, 160)  # luminance
    assert f2.jpeg[:2] == b"\xff\xd8" and f2.source == "folder:b.png"  # PNG re-encoded as JPEG
    assert cv2.imdecode(np.frombuffer(f2.jpeg, np.uint8), cv2.IMREAD_UNCHANGED).ndim == 3  # in colour
    with pytest.raises(CaptureError, match="no more photos"):
        cam.capture()


def test_folder_loop(tmp_path):
    write_jpeg(tmp_path / "a.jpg")
    cam = FolderCamera(tmp_path, loop=True)
    assert [cam.capture().source for _ in range(3)] == ["folder:a.jpg"] * 3


def test_bad_files_are_refused_clearly_then_next_works(tmp_path):
    (tmp_path / "1-notes.txt").write_text("bukan foto")
    good = write_jpeg(tmp_path / "3-good.jpg")
    (tmp_path / "2-cut.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "0-empty.jpg").write_bytes(b"")
    cam = FolderCamera(tmp_path)
    with pytest.raises(CaptureError, match="empty"):
        cam.capture()
    with pytest.raises(CaptureError, match="not an image"):
        cam.capture()
    with pytest.raises(CaptureError, match="truncated"):
        cam.capture()
    assert cam.capture().source == "folder:3-good.jpg"


def test_empty_and_missing_folder(tmp_path):
    with pytest.raises(CaptureError, match="empty"):
        FolderCamera(tmp_path).capture()
    with pytest.raises(CaptureError, match="does not exist"):
        FolderCamera(tmp_path / "nope")


def test_hung_camera_times_out_and_is_reported_until_it_returns():
    runner = TimeoutRunner(timeout_s=0.2, name="test camera")
    release = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(CaptureTimeout, match="within 0.2 s"):
        runner.call(lambda: release.wait(5))
    assert time.monotonic() - t0 < 2
    with pytest.raises(CaptureTimeout, match="still stuck"):
        runner.call(lambda: 1)
    release.set()
    time.sleep(0.1)
    assert runner.call(lambda: 42) == 42


def test_backend_errors_become_capture_errors():
    runner = TimeoutRunner(timeout_s=1)

    def boom():
        raise OSError("VIDIOC_DQBUF failed")

    with pytest.raises(CaptureError, match="VIDIOC_DQBUF"):
        runner.call(boom)


def test_open_camera_folder_and_config_errors(tmp_path):
    write_jpeg(tmp_path / "a.jpg")
    cam = open_camera(CameraConfig(backend="folder", folder=tmp_path))
    assert cam.capture().source == "folder:a.jpg"
    with pytest.raises(CaptureError, match="needs camera.folder"):
        open_camera(CameraConfig(backend="folder"))


def test_picamera2_missing_is_a_clear_error():
    try:
        import picamera2  # noqa: F401
        pytest.skip("picamera2 present (on a Pi)")
    except ImportError:
        pass
    with pytest.raises(CaptureError, match="python3-picamera2"):
        open_camera(CameraConfig(backend="picamera2", timeout_s=5))


def test_fixed_controls_from_calibration():
    cfg = CameraConfig(exposure_us=8000, analogue_gain=1.5, awb_gains=(1.8, 1.4), lens_position=2.5)
    assert fixed_controls(cfg) == {"AeEnable": False, "ExposureTime": 8000, "AnalogueGain": 1.5,
                                   "AwbEnable": False, "ColourGains": (1.8, 1.4), "AfMode": 0,
                                   "LensPosition": 2.5}
    assert fixed_controls(CameraConfig()) == {}


def test_folder_removed_while_running_is_a_capture_error(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    write_jpeg(folder / "a.jpg")
    cam = FolderCamera(folder)
    assert cam.capture().source == "folder:a.jpg"
    (folder / "a.jpg").unlink()
    folder.rmdir()  # a USB stick pulled out: the kit must say "camera", not crash into "cannot save"
    with pytest.raises(CaptureError, match="cannot be read"):
        cam.capture()


def test_a_jpeg_with_data_after_its_end_is_complete_a_cut_one_with_a_thumbnail_is_not(tmp_path):
    good = write_jpeg(tmp_path / "x.jpg")
    (tmp_path / "x.jpg").unlink()
    # a phone's motion photo: the video follows the JPEG's end marker; maker trailers do the same
    (tmp_path / "1-motion.jpg").write_bytes(good + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    # an EXIF thumbnail (a JPEG with its own FFD9 inside the APP1 segment), then the photo cut in its scan
    thumb = cv2.imencode(".jpg", page()[::4, ::4])[1].tobytes()
    app1 = b"\xff\xe1" + (len(thumb) + 8).to_bytes(2, "big") + b"Exif\x00\x00" + thumb
    with_thumb = good[:2] + app1 + good[2:]
    (tmp_path / "2-thumb-motion.jpg").write_bytes(with_thumb + b"MotionPhoto_Data" + bytes(range(256)) * 40)
    (tmp_path / "3-thumb-cut.jpg").write_bytes(with_thumb[: len(with_thumb) - len(good) // 3])
    cam = FolderCamera(tmp_path)
    for name in ("1-motion.jpg", "2-thumb-motion.jpg"):
        frame = cam.capture()
        assert frame.source == f"folder:{name}" and frame.image.shape == (120, 160)
    with pytest.raises(CaptureError, match="truncated"):
        cam.capture()


def test_folder_takes_the_next_name_when_files_come_and_go(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_jpeg(tmp_path / name)
    cam = FolderCamera(tmp_path)
    assert cam.capture().source == "folder:a.jpg"
    (tmp_path / "a.jpg").unlink()  # the photo taken is moved away: b must not be skipped
    assert cam.capture().source == "folder:b.jpg"
    write_jpeg(tmp_path / "0.jpg")  # a file sorting before the ones taken: b must not be taken twice
    assert cam.capture().source == "folder:c.jpg"
    with pytest.raises(CaptureError, match="no more photos"):
        cam.capture()
    write_jpeg(tmp_path / "d.jpg")  # dropped in while running: picked up
    assert cam.capture().source == "folder:d.jpg"


def huge_bmp() -> bytes:
    """A BMP whose header claims 100000 x 100000 px: OpenCV refuses to decode it by raising cv2.error."""
    import struct

    return (b"BM" + struct.pack("<IHHI", 0, 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, 100000, 100000, 1, 24, 0, 0, 0, 0, 0, 0))


def test_a_picture_too_large_to_decode_is_a_clear_capture_error(tmp_path):
    """cv2.imdecode raises on it (it does not return None): the folder camera said 'folder camera failed:
    OpenCV(...) Assertion failed ...'; decode_image said nothing but cv2.error."""
    from capture.base import decode_image

    for color in (False, True):
        with pytest.raises(CaptureError, match=r"huge\.bmp: not an image OpenCV can read") as exc:
            decode_image(huge_bmp(), name="huge.bmp", color=color)
        assert "Assertion" not in str(exc.value)
    (tmp_path / "1-huge.bmp").write_bytes(huge_bmp())
    write_jpeg(tmp_path / "2-good.jpg")
    cam = FolderCamera(tmp_path)
    with pytest.raises(CaptureError, match=r"1-huge\.bmp: not an image OpenCV can read") as exc:
        cam.capture()
    assert "failed" not in str(exc.value) and "Assertion" not in str(exc.value)
    assert cam.capture().source == "folder:2-good.jpg"  # the next press takes the next photo


class StuckPicamera2:
    """picamera2 at the hardware edge: one instance may hold the camera at a time; ``open_gate`` /
    ``capture_gate`` (Events) make the constructor or a capture hang in the driver until they are set.
    ``FakeVideoCapture`` is the same for a USB camera."""

    held = 0
    made = 0
    fail_start = 0  # this many start()s fail (no memory for the buffers)
    cameras = 1  # Camera Modules libcamera lists (0: ribbon cable loose at boot)
    open_gate: threading.Event | None = None
    capture_gate: threading.Event | None = None

    def __init__(self):
        StuckPicamera2.made += 1
        if StuckPicamera2.open_gate is not None:
            StuckPicamera2.open_gate.wait(10)
        if not StuckPicamera2.cameras:
            raise IndexError("list index out of range")  # global_camera_info()[0], after os.pipe2()
        if StuckPicamera2.held:
            raise RuntimeError("Failed to acquire camera: Device or resource busy")
        StuckPicamera2.held += 1
        self.open = True

    @staticmethod
    def global_camera_info():
        return [{"Model": "imx708", "Id": f"/base/i2c@{n}/imx708@1a", "Num": n}
                for n in range(StuckPicamera2.cameras)]

    def create_still_configuration(self, **kw):
        return kw

    def configure(self, cfg):
        pass

    def set_controls(self, controls):
        pass

    def start(self):
        if StuckPicamera2.fail_start:
            StuckPicamera2.fail_start -= 1
            raise RuntimeError("Failed to allocate buffers")

    def autofocus_cycle(self):
        pass

    def capture_array(self, name):
        if StuckPicamera2.capture_gate is not None:
            StuckPicamera2.capture_gate.wait(10)
        return np.full((120, 160, 3), 200, np.uint8)

    def stop(self):
        pass

    def close(self):
        if self.open:
            self.open = False
            StuckPicamera2.held -= 1


@pytest.fixture
def stuck_picamera2(monkeypatch):
    import sys
    import types

    fresh = {"held": 0, "made": 0, "fail_start": 0, "cameras": 1, "open_gate": None, "capture_gate": None}
    for name, value in fresh.items():
        monkeypatch.setattr(StuckPicamera2, name, value)
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=StuckPicamera2))
    yield StuckPicamera2
    for gate in (StuckPicamera2.open_gate, StuckPicamera2.capture_gate):
        if gate is not None:
            gate.set()


def test_camera_module_that_fails_to_start_is_released_and_the_next_press_works(stuck_picamera2):
    from capture.picam import Picamera2Camera

    stuck_picamera2.fail_start = 1
    cam = Picamera2Camera(CameraConfig(backend="picamera2", timeout_s=5))
    with pytest.raises(CaptureError, match="could not be started"):
        cam.open()
    frame = cam.capture()  # opened again at the press: the failed one was released, not left busy
    assert frame.source == "picamera2" and frame.image.shape == (120, 160)
    cam.close()
    assert stuck_picamera2.held == 0


def test_no_camera_module_is_found_without_making_a_picamera2_each_retry(stuck_picamera2):
    """picamera2 opens a pipe in Picamera2.__init__ before it looks the camera up (picamera2/picamera2.py:
    os.pipe2, then global_camera_info()[camera_num] raises IndexError) and close() returns early on a camera
    that never opened, so each Picamera2() without a camera leaked a file descriptor: the kit retries a
    missing camera every 2 min all day until it runs out of them. libcamera is asked for the list first."""
    from capture.picam import Picamera2Camera

    stuck_picamera2.cameras = 0
    cam = Picamera2Camera(CameraConfig(backend="picamera2", timeout_s=5))
    for _ in range(3):
        with pytest.raises(CaptureError, match="no Camera Module found.*ribbon cable"):
            cam.open()
    assert stuck_picamera2.made == 0
    stuck_picamera2.cameras = 1  # (a new boot with the cable seated)
    assert cam.capture().source == "picamera2"
    cam.close()
    assert stuck_picamera2.held == 0


def _until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.01)
    return predicate()


def test_a_new_camera_module_open_while_an_earlier_one_hangs_in_the_driver_fails_at_once(stuck_picamera2):
    """The kit retries every 15 s-2 min: each retry must not leave one more thread stuck in libcamera."""
    from capture.picam import Picamera2Camera

    cfg = CameraConfig(backend="picamera2", timeout_s=0.3)
    stuck_picamera2.open_gate = threading.Event()
    with pytest.raises(CaptureTimeout):
        Picamera2Camera(cfg).open()
    t0 = time.monotonic()
    with pytest.raises(CaptureError, match="still held") as err:
        Picamera2Camera(cfg).open()
    assert not isinstance(err.value, CaptureTimeout) and time.monotonic() - t0 < 0.25
    assert stuck_picamera2.made == 1  # no second Picamera2 on the camera the first one is opening
    stuck_picamera2.open_gate.set()  # the stuck open returns and lets the camera go
    assert _until(lambda: stuck_picamera2.held == 0)
    stuck_picamera2.open_gate = None
    assert _until(lambda: _opens(Picamera2Camera, cfg))
    assert stuck_picamera2.held == 0


def _opens(cls, cfg) -> bool:
    try:
        cls(cfg).open().close()
    except CaptureError:
        return False
    return True


class FakeVideoCapture:
    """cv2.VideoCapture at the hardware edge: ``present`` says whether /dev/videoN is there, one capture may
    hold the device at a time (V4L2 answers EBUSY); ``open_gate`` / ``capture_gate`` (Events) make the open
    or a read hang in the driver until they are set."""

    held = 0
    made = 0
    present = True
    open_gate: threading.Event | None = None
    capture_gate: threading.Event | None = None

    def __init__(self, index, api=None):
        FakeVideoCapture.made += 1
        if FakeVideoCapture.open_gate is not None:
            FakeVideoCapture.open_gate.wait(10)
        self.opened = FakeVideoCapture.present and not FakeVideoCapture.held
        if self.opened:
            FakeVideoCapture.held += 1

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return self.opened

    def set(self, prop, value):
        return self.opened

    def grab(self):
        return self.opened

    def read(self):
        if FakeVideoCapture.capture_gate is not None:
            FakeVideoCapture.capture_gate.wait(10)
        if not self.opened:
            return False, None
        return True, np.full((120, 160, 3), 200, np.uint8)

    def release(self):
        if self.opened:
            self.opened = False
            FakeVideoCapture.held -= 1


@pytest.fixture
def fake_videocapture(monkeypatch):
    for name, value in (("held", 0), ("made", 0), ("present", True), ("open_gate", None),
                        ("capture_gate", None)):
        monkeypatch.setattr(FakeVideoCapture, name, value)
    monkeypatch.setattr(cv2, "VideoCapture", FakeVideoCapture)
    yield FakeVideoCapture
    for gate in (FakeVideoCapture.open_gate, FakeVideoCapture.capture_gate):
        if gate is not None:
            gate.set()


def test_open_camera_opens_a_usb_camera_at_once_and_says_when_it_cannot(fake_videocapture):
    """It opened /dev/videoN at the first capture only: a missing camera was no fault at start, and the kit's
    reopen of a dropped camera 'succeeded' without touching the device."""
    cfg = CameraConfig(backend="v4l2", timeout_s=2)
    fake_videocapture.present = False
    with pytest.raises(CaptureError, match=r"/dev/video0 cannot be opened"):
        open_camera(cfg)
    assert fake_videocapture.held == 0
    fake_videocapture.present = True
    cam = open_camera(cfg)
    assert fake_videocapture.held == 1 and fake_videocapture.made == 2
    frame = cam.capture()
    assert frame.source == "v4l2:0" and frame.image.shape == (120, 160)
    assert fake_videocapture.made == 2  # the capture used the device opened by open_camera
    cam.close()
    assert fake_videocapture.held == 0


def test_a_usb_capture_arriving_after_close_does_not_open_the_device_again(fake_videocapture):
    """The kit's capture waiter may call capture() just after the kit closed the camera (its own wait ran
    out): the lazy open in the capture opened the device again for an instance nobody would ever close."""
    cam = open_camera(CameraConfig(backend="v4l2", timeout_s=2))
    cam.close()
    with pytest.raises(CaptureError, match="closed"):
        cam.capture()
    assert fake_videocapture.made == 1 and fake_videocapture.held == 0


# the same driver behaviour, both backends: a busy device is refused with their own words
DRIVERS = {"picamera2": ("stuck_picamera2", "still held"), "v4l2": ("fake_videocapture", "cannot be opened")}


@pytest.fixture(params=sorted(DRIVERS))
def stuck_driver(request):
    """(backend, fake driver class, what a busy device says) for each camera that talks to a driver."""
    fixture, busy = DRIVERS[request.param]
    return request.param, request.getfixturevalue(fixture), busy


def test_a_camera_closed_while_its_capture_hangs_is_released_when_the_capture_returns(stuck_driver):
    backend, fake, busy = stuck_driver
    cfg = CameraConfig(backend=backend, timeout_s=0.2)
    cam = open_camera(cfg)
    fake.capture_gate = threading.Event()
    with pytest.raises(CaptureTimeout):
        cam.capture()
    cam.close()  # the kit lets the wedged camera go and opens a new one later
    with pytest.raises(CaptureError, match=busy):
        open_camera(cfg)  # still held by the stuck capture: the kit keeps reporting the fault
    fake.capture_gate.set()  # the driver comes back
    assert _until(lambda: fake.held == 0), "the old one keeps the device: every reopen fails"
    fake.capture_gate = None
    made = fake.made
    with pytest.raises(CaptureError, match="closed"):
        cam.capture()  # the closed camera does not open the device again behind close()'s back
    assert fake.made == made and fake.held == 0
    again = open_camera(cfg)
    assert again.capture().source.startswith(backend)
    again.close()
    assert fake.held == 0


def test_a_camera_open_that_times_out_does_not_keep_the_device_when_it_finishes_late(stuck_driver):
    backend, fake, _ = stuck_driver
    cfg = CameraConfig(backend=backend, timeout_s=0.2)
    fake.open_gate = threading.Event()
    with pytest.raises(CaptureTimeout):
        open_camera(cfg)
    fake.open_gate.set()  # the open finishes after its caller gave up on it
    assert _until(lambda: fake.made == 1)
    time.sleep(0.1)
    assert _until(lambda: fake.held == 0), "an abandoned open keeps the device for good"
    fake.open_gate = None
    open_camera(cfg).close()
    assert fake.held == 0


def test_a_picture_refused_for_its_pixel_count_says_so():
    from capture.base import decode_image

    with pytest.raises(CaptureError, match="more pixels than"):
        decode_image(huge_bmp(), name="huge.bmp")
