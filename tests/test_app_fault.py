"""A camera or model that is down: the kit keeps running in its fault state (tells the KPPS, keeps sending,
reports itself not ready), opens the part again by itself and at every press, and reboots once at most."""

from __future__ import annotations

import json
import threading
import time

import pytest

from capture.base import CaptureError, TimeoutRunner
from capture.folder import FolderCamera
from firmware.app import EXIT_REBOOT, FAULT_REBOOT_MARKER, build_kit
from tests.kit_helpers import KitHarness, StubReader, make_config, photo_folder


@pytest.fixture
def photos(tmp_path):
    return photo_folder(tmp_path / "photos-in")


class CameraSocket:
    """Opens the folder camera only once the ribbon cable is 'plugged in' (hardware edge)."""

    def __init__(self, cfg, *, plugged: bool = False):
        self.cfg = cfg
        self.plugged = threading.Event()
        if plugged:
            self.plugged.set()
        self.attempts = 0

    def open(self):
        self.attempts += 1
        if not self.plugged.is_set():
            raise CaptureError("no Camera Module found (list index out of range); check the ribbon cable")
        return FolderCamera(self.cfg.camera.folder, loop=True, timeout_s=self.cfg.camera.timeout_s)


class WedgedCamera:
    """Every capture hangs in the driver until the camera is closed."""

    def __init__(self):
        self.runner = TimeoutRunner(timeout_s=0.3, name="Camera Module")
        self.closed = threading.Event()

    def _grab(self):
        self.closed.wait(30)
        raise CaptureError("camera closed")

    def capture(self):
        return self.runner.call(self._grab)

    def close(self):
        self.closed.set()


class Readiness:
    """A courier stub that keeps what the kit hands over (the outbox is tested with the real one)."""

    def __init__(self):
        self.readiness: list[dict] = []
        self.submitted: list[str] = []

    def start(self):
        pass

    def stop(self):
        pass

    def close(self):
        pass

    def kick(self):
        pass

    def is_alive(self):
        return True

    def status(self):
        return {"connected": True, "queued": 0, "sent": 0}

    def submit_reading(self, *, capture_id, **_):
        self.submitted.append(capture_id)
        return capture_id

    def publish_retained(self, kind, body):
        self.readiness.append(body)
        return f"r{len(self.readiness)}"


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _camera_failing(body):
    return next((f for f in body["failing"] if f["name"] == "camera"), None)


def test_no_camera_at_start_is_a_fault_the_kpps_is_told_and_a_press_after_plugging_it_in_captures(
        tmp_path, photos):
    cfg = make_config(tmp_path / "state", photos)
    socket = CameraSocket(cfg)
    courier = Readiness()
    with KitHarness(cfg, camera=None, courier=courier, openers={"camera": socket.open},
                    faults={"camera": "no Camera Module found"}, fault_retry_s=60) as h:
        assert h.kit.state == "fault"
        assert "KIT RUSAK" in h.messages[-1] and "kamera" in h.messages[-1]
        leds = h.leds()
        assert leds["red"] and not leds["green"]  # not the ready look: no photo can be taken
        status = json.loads(h.kit.status_path.read_text())
        assert status["state"] == "fault" and status["ready"] is False
        assert status["faults"] == {"camera": "no Camera Module found"}
        boot = courier.readiness[0]
        assert boot["trigger"] == "boot" and boot["ready"] is False
        assert boot["checks"]["camera"] == "fail" and "kabel" in _camera_failing(boot)["fix"]

        h.press()  # still unplugged: the press tries the camera again and says what to do
        v = h.verdict()
        assert v.pattern == "error" and "KIT RUSAK" in v.message and "kabel pita kamera" in v.message
        assert socket.attempts == 1 and h.kit.state == "fault" and h.store.counts()["total"] == 0

        h.press(seconds=cfg.gpio.hold_s + 0.3)  # a long press: the status, and the fault again
        assert _wait(lambda: h.messages[-1].startswith("KIT RUSAK") and "Status:" in h.messages[-3])
        assert h.leds()["red"] and not h.leds()["green"]

        socket.plugged.set()  # the KPPS re-seats the cable and presses again
        h.press()
        v = h.verdict()
        assert v.pattern == "ok" and v.record is not None
        assert h.kit.state == "ready" and not h.kit.faults
        recovered = courier.readiness[-1]
        assert recovered["trigger"] == "recovered"
        assert recovered["checks"]["camera"] == "ok" and not _camera_failing(recovered)
        assert courier.submitted == [v.record.id]
        assert _wait(lambda: h.leds()["green"] and not h.leds()["red"], timeout=cfg.gpio.verdict_s + 3)


def test_a_kit_in_fault_opens_the_camera_again_by_itself(tmp_path, photos):
    cfg = make_config(tmp_path / "state", photos)
    socket = CameraSocket(cfg)
    with KitHarness(cfg, camera=None, openers={"camera": socket.open}, fault_retry_s=0.1) as h:
        assert _wait(lambda: socket.attempts >= 3)
        assert h.kit.state == "fault"
        socket.plugged.set()
        assert _wait(lambda: h.kit.state == "ready")
        assert h.messages[-1].startswith("Kerusakan teratasi")
        h.press()
        assert h.verdict().pattern == "ok"


def test_stored_captures_are_still_handed_to_the_courier_while_the_camera_is_down(tmp_path, photos):
    from firmware.store import CaptureStore

    cfg = make_config(tmp_path / "state", photos)
    store = CaptureStore(cfg.paths.state_dir, volatile_ok=True)
    rec = store.save(jpeg=(photos / "01.jpg").read_bytes(), status="ok",
                     reading={"page": 1, "status": "ok", "reasons": []}, taken_at=time.time(),
                     time_source="ntp")
    store.close()
    courier = Readiness()
    with KitHarness(cfg, camera=None, courier=courier, fault_retry_s=60) as h:
        assert h.kit.state == "fault"
        assert courier.submitted == [rec.id]


def test_a_camera_that_keeps_timing_out_is_closed_and_opened_again(tmp_path, photos):
    cfg = make_config(tmp_path / "state", photos)
    wedged = WedgedCamera()
    socket = CameraSocket(cfg, plugged=True)
    courier = Readiness()
    with KitHarness(cfg, camera=wedged, courier=courier, openers={"camera": socket.open},
                    fault_retry_s=60) as h:
        h.press()
        assert "Kamera tidak merespons" in h.verdict().message  # once may be a hiccup
        h.press()
        v = h.verdict()
        assert v.pattern == "error" and "KIT RUSAK" in v.message
        assert wedged.closed.is_set() and h.kit.camera is None and h.kit.state == "fault"
        assert courier.readiness[-1]["trigger"] == "fault"
        h.press()  # a new camera, with a waiter of its own (the old capture thread may never return)
        assert h.verdict().pattern == "ok"
        assert h.kit.state == "ready" and socket.attempts == 1


def test_a_part_that_stays_down_reboots_once_then_the_kit_stays_up_and_sends(tmp_path, photos):
    cfg = make_config(tmp_path / "state", photos)
    socket = CameraSocket(cfg)
    marker = cfg.paths.state_dir / FAULT_REBOOT_MARKER
    with KitHarness(cfg, camera=None, openers={"camera": socket.open}, fault_retry_s=0.1,
                    fault_reboot_after_s=0.5) as h:
        assert _wait(lambda: h.rc is not None)
        assert h.rc == EXIT_REBOOT  # tpskit.service reboots the Pi on it
        assert "dinyalakan ulang" in h.messages[-2] and h.messages[-2].startswith("Kamera masih")
    assert json.loads(marker.read_text())["faults"]["camera"].startswith("no Camera Module")

    # after the reboot the camera is still down: no second reboot, the kit stays up (and keeps sending)
    with KitHarness(cfg, camera=None, openers={"camera": socket.open}, fault_retry_s=0.1,
                    fault_reboot_after_s=0.5) as h:
        time.sleep(1.5)
        assert h.rc is None and h.kit.state == "fault"
        socket.plugged.set()
        assert _wait(lambda: h.kit.state == "ready")
        assert marker.exists()  # opened is not yet proven: a camera may open and then wedge at once
        h.press()
        assert h.verdict().pattern == "ok"
        assert not marker.exists()  # a photo: mended, a later fault may reboot once again


def test_a_camera_that_opens_after_the_reboot_but_wedges_again_gets_no_second_reboot(tmp_path, photos):
    """The marker is not forgotten because the camera opened: only a photo (or a healthy while) proves it,
    else a camera that wedges on its first presses would reboot the Pi every two presses."""
    cfg = make_config(tmp_path / "state", photos)
    marker = cfg.paths.state_dir / FAULT_REBOOT_MARKER
    cfg.paths.state_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"parts": ["camera"], "faults": {"camera": "wedged"}}))
    socket = CameraSocket(cfg)
    with KitHarness(cfg, camera=WedgedCamera(), openers={"camera": socket.open}, fault_retry_s=60,
                    fault_reboot_after_s=0.3) as h:
        for _ in range(2):
            h.press()
            h.verdict()
        assert h.kit.state == "fault"
        time.sleep(1.0)
        assert h.rc is None and marker.exists()  # stays up, sending


def test_the_reboot_marker_is_per_part_and_forgotten_after_a_healthy_while(tmp_path, photos, monkeypatch):
    import firmware.app

    cfg = make_config(tmp_path / "state", photos)
    marker = cfg.paths.state_dir / FAULT_REBOOT_MARKER
    cfg.paths.state_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"parts": ["camera"], "faults": {"camera": "wedged"}}))
    # a camera reboot was tried before; the model now fails: that is worth its own reboot
    def damaged_model():
        raise OSError("bad model")

    with KitHarness(cfg, openers={"model": damaged_model}, faults={"model": "bad model"}, fault_retry_s=60,
                    fault_reboot_after_s=0.3) as h:
        assert _wait(lambda: h.rc is not None)
        assert h.rc == EXIT_REBOOT
    assert json.loads(marker.read_text())["parts"] == ["camera", "model"]
    # a marker that cannot be read allows no reboot (up and sending beats a loop)
    marker.write_text("{not json")
    with KitHarness(cfg, camera=None, fault_retry_s=60, fault_reboot_after_s=0.3) as h:
        time.sleep(1.0)
        assert h.rc is None
    # healthy for FAULT_MARKER_HEALTHY_S without a photo: forgotten as well
    monkeypatch.setattr(firmware.app, "FAULT_MARKER_HEALTHY_S", 0.3)
    with KitHarness(cfg):
        assert _wait(lambda: not marker.exists())


def test_no_reboot_when_the_marker_cannot_be_written(tmp_path, photos, monkeypatch):
    """Without its marker on disk the next boot would reboot again, and again: no reboot at all then."""
    import firmware.app

    def read_only(*_a, **_k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(firmware.app, "write_atomic", read_only)
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg, camera=None, fault_retry_s=60, fault_reboot_after_s=0.3) as h:
        time.sleep(1.0)
        assert h.rc is None and h.kit.state == "fault"
    assert not (cfg.paths.state_dir / FAULT_REBOOT_MARKER).exists()


def test_retries_in_the_background_back_off_and_a_press_still_tries_at_once(tmp_path, photos):
    cfg = make_config(tmp_path / "state", photos)
    socket = CameraSocket(cfg)
    with KitHarness(cfg, camera=None, openers={"camera": socket.open}, fault_retry_s=0.1) as h:
        time.sleep(1.6)  # tries at 0.1, 0.3, 0.7, 1.5 s: not 16 of them
        tried = socket.attempts
        assert 3 <= tried <= 5
        h.press()
        assert "KIT RUSAK" in h.verdict().message and socket.attempts == tried + 1


def test_without_reboot_permission_a_fault_never_ends_the_run(tmp_path, photos):
    """`tpskit run` outside systemd (a laptop, the demo) passes no fault_reboot_after_s: it never exits."""
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg, camera=None, fault_retry_s=0.05) as h:
        time.sleep(0.5)
        assert h.rc is None and h.kit.state == "fault"
    assert not (cfg.paths.state_dir / FAULT_REBOOT_MARKER).exists()


def test_build_kit_turns_a_camera_or_model_that_does_not_open_into_faults(tmp_path, photos):
    bad_model = tmp_path / "digits.tflite"
    bad_model.write_bytes(b"not a model")
    cfg = make_config(tmp_path / "state", tmp_path / "no-such-folder", paths={"model": str(bad_model)})
    kit = build_kit(cfg, with_courier=False)
    try:
        assert set(kit.faults) == {"camera", "model"}
        assert kit.camera is None and kit.reader is None
        assert "no-such-folder" in kit.faults["camera"]
    finally:
        kit.close()
    cfg = make_config(tmp_path / "state", photos)
    kit = build_kit(cfg, with_courier=False, reader=StubReader())
    try:
        assert kit.faults == {} and kit.camera is not None
    finally:
        kit.close()


def test_a_kit_whose_fuel_gauge_is_unreachable_runs_and_its_readiness_says_why(tmp_path, photos, monkeypatch):
    """fuel_gauge = "max17040" with I2C off or smbus2 missing: the kit is built and takes photos (it used to
    exit at start, and systemd restarted it until the Pi rebooted); its readiness fails the battery check
    with what to do, since it would neither warn of nor shut down safely on a low battery."""
    import sys

    from firmware.selftest import BATTERY_FIX, boot_report

    monkeypatch.setitem(sys.modules, "smbus2", None)
    cfg = make_config(tmp_path / "state", photos, power={"fuel_gauge": "max17040"})
    kit = build_kit(cfg, with_courier=False, reader=StubReader())
    try:
        assert kit.faults == {} and kit.battery is not None
        (check,) = [c for c in boot_report(cfg, battery=kit.battery).checks if c.name == "battery"]
        assert not check.ok and "python3-smbus2" in check.detail and check.fix == BATTERY_FIX
    finally:
        kit.close()


def test_status_names_the_part_that_is_down(tmp_path, photos, capsys):
    from firmware.cmd_status import collect, render

    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg, camera=None, fault_retry_s=60, faults={"camera": "no Camera Module found"}):
        info = collect(cfg.paths.state_dir)
    assert info["ready"] is False
    assert any("fault" in p and "camera: no Camera Module found" in p for p in info["problems"])
    assert "camera: no Camera Module found" in render(info)


def test_after_a_low_battery_warning_the_fault_look_comes_back(tmp_path, photos, monkeypatch):
    """In ready the warning gives way to the idle look within IDLE_CHECK_S; in fault it must too, or the KPPS
    sees only 'battery low' (red blinking) all day and never that no photo can be taken."""
    from firmware import app
    from firmware.events import LowBattery

    monkeypatch.setattr(app, "IDLE_CHECK_S", 0.1)
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg, camera=None, fault_retry_s=60) as h:
        assert h.kit.panel.indicator.current == "fault"
        shown: list[str] = []
        show = h.kit.panel.show
        h.kit.panel.show = lambda name: (shown.append(name), show(name))
        h.kit.post(LowBattery(level=14.0, critical=False))
        assert _wait(lambda: "low_battery" in shown)
        assert _wait(lambda: shown[-1] == "fault", timeout=2), shown
        assert h.kit.panel.indicator.current == "fault" and h.kit.state == "fault"


class HangingOpen:
    """Opening the camera hangs in the driver until released (hardware edge), then fails."""

    def __init__(self):
        self.opening = threading.Event()
        self.release = threading.Event()

    def __call__(self):
        self.opening.set()
        self.release.wait(30)
        raise CaptureError("no Camera Module found")


@pytest.mark.parametrize("urgent", ["stop", "critical_battery"])
def test_a_stop_or_critical_battery_while_a_part_is_being_opened_does_not_wait_for_the_open(
        tmp_path, photos, urgent):
    """systemd's stop (TimeoutStopSec=45) and a critical battery must not wait for an open that hangs (up to
    OPEN_LIMIT_S, 60 s, or the camera's timeout and a grace)."""
    from firmware.app import EXIT_POWEROFF
    from firmware.events import LowBattery

    cfg = make_config(tmp_path / "state", photos)
    hanging = HangingOpen()
    try:
        with KitHarness(cfg, camera=None, openers={"camera": hanging}, fault_retry_s=0.05) as h:
            assert hanging.opening.wait(5)
            t0 = time.monotonic()
            if urgent == "stop":
                h.stop(timeout=5)
                assert h.rc == 0
            else:
                h.kit.post(LowBattery(level=3.0, critical=True))
                assert _wait(lambda: h.rc is not None, timeout=3)
                assert h.rc == EXIT_POWEROFF
            assert time.monotonic() - t0 < 3
    finally:
        hanging.release.set()


def test_the_camera_fault_tells_to_turn_the_kit_off_before_the_cable_and_on_again_after():
    """A Camera Module is found only at boot (its sensor is probed once; selftest says '... lalu reboot'), and
    a ribbon cable is not pulled with the power on: re-seating it and pressing can never bring it back."""
    from firmware import messages as msg

    text = msg.fault_text({"camera": "no Camera Module found"}).lower()
    assert "kabel pita kamera" in text
    assert "matikan kit" in text and text.index("matikan kit") < text.index("kabel pita kamera")
    assert "nyalakan" in text and text.index("kabel pita kamera") < text.index("nyalakan")
    assert "lalu tekan tombol" not in text


def test_the_readiness_fix_for_a_camera_that_is_down_says_reboot(tmp_path, photos):
    from firmware.selftest import boot_report

    cfg = make_config(tmp_path / "state", photos)
    report = boot_report(cfg, faults={"camera": "no Camera Module found"})
    fix = next(c for c in report.checks if c.name == "camera").fix
    assert "kabel pita kamera" in fix and "reboot" in fix


def test_a_card_that_refuses_writes_makes_the_readiness_not_ready_with_what_to_do(tmp_path, photos):
    """The running kit's storage fault reaches the operators' readiness as the storage check, failed (the
    cheap storage check of a boot report would not have noticed a card gone read-only)."""
    from firmware.selftest import boot_report

    cfg = make_config(tmp_path / "state", photos)
    report = boot_report(cfg, faults={"storage": "cannot write x.jpg: Read-only file system"})
    check = next(c for c in report.checks if c.name == "storage")
    assert not check.ok and "Read-only file system" in check.detail and "kartu SD" in check.fix
    assert not report.ready
    assert next(c for c in boot_report(cfg).checks if c.name == "storage").ok


def test_a_signal_handler_may_post_while_the_loop_is_inside_the_event_queue(tmp_path, photos):
    """SIGTERM's handler (cmd_run: kit.stop) runs in the main thread between any two bytecodes, also inside
    the event queue's own code while it holds its lock: the post must not wait for that lock (a deadlock: no
    watchdog ping, no clean stop, SIGKILL)."""
    import queue
    import sys

    from gpiozero.pins.mock import MockFactory

    from firmware.app import Kit
    from firmware.events import Stop
    from firmware.store import CaptureStore

    cfg = make_config(tmp_path / "state", photos)
    factory = MockFactory()
    kit = Kit(cfg, camera=None, reader=StubReader(), pin_factory=factory, say=lambda _t: None,
              store=CaptureStore(cfg.paths.state_dir, min_free_mb=1, volatile_ok=True))
    posted = threading.Event()

    def in_queue(frame, event, _arg):
        mutex = getattr(kit.events, "mutex", None)
        if event == "line" and not posted.is_set() and mutex is not None and mutex.locked():
            posted.set()
            kit.stop("signal SIGTERM")  # what the handler does, at this very bytecode
        return in_queue

    def tracer(frame, _event, _arg):
        return in_queue if frame.f_code.co_filename == queue.__file__ else None

    got: list = []

    def main_loop_waits():
        sys.settrace(tracer)
        try:
            got.append(kit.events.get(timeout=0.5))
        except queue.Empty:
            pass
        finally:
            sys.settrace(None)

    loop = threading.Thread(target=main_loop_waits, daemon=True)
    loop.start()
    loop.join(5)
    try:
        assert not loop.is_alive(), "deadlock: the handler's post waits for the lock its own thread holds"
    finally:
        kit.close()
        factory.reset()
    if posted.is_set():
        assert len(got) == 1 and isinstance(got[0], Stop)
    else:  # no Python code in the queue to interrupt (a C queue): a post from a handler works as any other
        kit.stop("signal SIGTERM")
        assert isinstance(kit.events.get(timeout=1), Stop)


class Beats(Readiness):
    """A courier stub that records the heartbeat snapshot each time the kit asks for a heartbeat."""

    def __init__(self):
        super().__init__()
        self.info = dict
        self.beats: list[dict] = []

    def heartbeat_info(self, func):
        self.info = func

    def heartbeat(self):
        self.beats.append(self.info())


def test_the_kit_asks_for_a_heartbeat_when_a_part_goes_down_or_comes_back(tmp_path, photos):
    """Heartbeats are retained and carry the kit's state and faults (the operators' fleet view reads them: a
    card that refuses writes cannot queue the readiness that would say so): the kit asks for one at once,
    with the new snapshot, when its set of faults changes, not only every heartbeat_s."""
    cfg = make_config(tmp_path / "state", photos)
    socket = CameraSocket(cfg)
    courier = Beats()
    with KitHarness(cfg, camera=None, courier=courier, openers={"camera": socket.open, "model": StubReader},
                    faults={"camera": "no Camera Module found", "model": "tidak termuat"},
                    fault_retry_s=0.1) as h:
        assert _wait(lambda: len(courier.beats) >= 2)  # at start, then the model came back, the camera not
        assert courier.beats[0]["state"] == "fault" and set(courier.beats[0]["faults"]) == {"camera", "model"}
        assert set(courier.beats[1]["faults"]) == {"camera"}
        assert _wait(lambda: socket.attempts >= 3)  # the camera still down, the same faults: no heartbeat
        h.press(seconds=cfg.gpio.hold_s + 0.3)  # nor for a long press (the status is written again)
        assert _wait(lambda: "Status:" in " ".join(h.messages))
        assert len(courier.beats) == 2
        socket.plugged.set()
        assert _wait(lambda: h.kit.state == "ready")
        assert _wait(lambda: len(courier.beats) == 3)
        assert courier.beats[2]["state"] == "ready" and courier.beats[2]["faults"] == {}
    assert len(courier.beats) == 3  # stopping is no change of faults


def test_a_card_gone_read_only_mid_run_asks_for_a_heartbeat_that_names_the_storage_fault(tmp_path, photos,
                                                                                     monkeypatch):
    """The readiness saying 'storage' goes to the outbox on the same card and may never leave: the heartbeat
    the kit asks for at once carries the fault; once the card takes writes again another says it is gone."""
    import errno
    import os
    from pathlib import Path

    from tests.kit_helpers import write_photo

    for i in range(2):
        write_photo(photos / f"{i:02d}.jpg", 220)
    cfg = make_config(tmp_path / "state", photos)
    courier = Beats()
    with KitHarness(cfg, courier=courier, fault_retry_s=0.3) as h:
        assert _wait(lambda: courier.beats) and courier.beats[0]["faults"] == {}

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(os, "fsync", read_only)
        monkeypatch.setattr(Path, "unlink", read_only)
        h.press()
        assert h.verdict().pattern == "error"
        assert len(courier.beats) == 2
        assert courier.beats[1]["state"] == "fault" and "storage" in courier.beats[1]["faults"]
        monkeypatch.undo()
        assert _wait(lambda: len(courier.beats) == 3)
        assert courier.beats[2]["state"] == "ready" and courier.beats[2]["faults"] == {}
