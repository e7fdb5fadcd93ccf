"""The Kit's main loop, driven through the mock button like a real press, on real SQLite files."""

from __future__ import annotations

import json
import queue
import threading
import time

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from capture.base import CaptureError, Frame, TimeoutRunner
from firmware import messages as msg
from firmware.app import EXIT_POWEROFF
from firmware.events import LowBattery
from tests.kit_helpers import KitHarness, StubReader, make_config, write_photo


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "photos-in"
    d.mkdir()
    return d


def test_short_press_captures_stores_and_shows_verdict(tmp_path, photos):
    jpeg = write_photo(photos / "01.jpg", 220)
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg) as h:
        assert h.leds() == {"green": True, "yellow": False, "red": False}  # ready
        h.press()
        v = h.verdict()
        assert v.pattern == "ok" and v.record.seq == 1 and v.record.halaman == 1
        assert v.record.photo_path.read_bytes() == jpeg
        assert v.record.annotated_path.exists()
        assert h.leds() == {"green": True, "yellow": False, "red": False}
        assert "Halaman 1 terbaca" in v.message
    assert h.store.counts()["total"] == 1


def test_long_press_reports_status_and_never_captures(tmp_path, photos):
    write_photo(photos / "01.jpg", 220)
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg) as h:
        h.press(1.3)  # hold_s = 1.0
        deadline = time.monotonic() + 5
        while not any(m.startswith("Status:") for m in h.messages) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any(m.startswith("Status: 0 foto") for m in h.messages)
        assert h.verdicts.empty()
        assert h.kit.reader.calls == 0
        # a kit run without a courier (--no-send) does not claim to send: it says it keeps the data
        deadline = time.monotonic() + 2
        while "tidak mengirim" not in " ".join(h.messages) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any("tidak mengirim" in m for m in h.messages)
        assert not any(m in (msg.RESEND, msg.SENT_ALL) for m in h.messages)


def test_a_long_press_during_a_capture_tells_the_status_without_hiding_the_pages_verdict(tmp_path, photos):
    """The KPPS holds the button while a page is being read: the status is told after the verdict, and the
    review pattern (yellow on) stays for gpio.verdict_s; the status must not turn it into ready/queued at
    once, or the page that must be checked goes unseen."""
    write_photo(photos / "01.jpg", 100)  # review
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg, reader=StubReader(delay_s=1.5)) as h:
        h.press()
        time.sleep(0.2)
        h.press(1.3)  # hold_s = 1.0, released while the page is still being read
        v = h.verdict()
        assert v.pattern == "review"
        deadline = time.monotonic() + 5
        while not any(m.startswith("Status:") for m in h.messages) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any(m.startswith("Status: 1 foto") for m in h.messages)
        time.sleep(0.2)
        assert h.kit._shown == "review" and h.leds() == {"green": True, "yellow": True, "red": False}
        assert h.kit.reader.calls == 1


def test_presses_during_a_slow_step_are_not_lost(tmp_path, photos):
    for i in range(4):
        write_photo(photos / f"{i:02d}.jpg", 220)
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg, reader=StubReader(delay_s=0.4)) as h:
        for _ in range(4):
            h.press(0.1, bounce=True)
            time.sleep(0.05)
        got = [h.verdict() for _ in range(4)]
    assert [v.pattern for v in got] == ["ok"] * 4
    assert [v.record.seq for v in got] == [1, 2, 3, 4]


def test_bad_inputs_get_errors_and_kit_stays_ready(tmp_path, photos):
    write_photo(photos / "01-good.jpg", 220)
    (photos / "02-notes.txt").write_text("bukan foto")
    good = write_photo(photos / "03-cut.jpg", 220)
    (photos / "03-cut.jpg").write_bytes(good[:300])
    write_photo(photos / "04-review.jpg", 100)
    write_photo(photos / "05-dark.jpg", 10)
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg) as h:
        patterns = []
        for _ in range(6):  # the 6th press finds no more photos
            h.press()
            v = h.verdict()
            patterns.append(v.pattern)
            if v.pattern == "error":
                assert h.leds()["red"] is True and h.kit.state == "ready"
        assert patterns == ["ok", "error", "error", "review", "retake", "error"]
        texts = [m for m in h.messages if m.startswith("Gagal memotret")]
        assert any("not an image" in t for t in texts) and any("truncated" in t for t in texts)
        assert any("no more photos" in t for t in texts)
    assert h.store.counts() == {"ok": 1, "review": 1, "retake": 1, "total": 3, "unsubmitted": 2}
    assert h.store.integrity_ok()


def test_empty_folder(tmp_path, photos):
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg) as h:
        h.press()
        v = h.verdict()
        assert v.pattern == "error" and "empty" in v.message


class HangingCamera:
    """A camera whose driver hangs on the first capture (hardware edge), then recovers."""

    def __init__(self, jpeg_path):
        self.runner = TimeoutRunner(timeout_s=0.3, name="Camera Module")
        self.release = threading.Event()
        self.calls = 0
        self.path = jpeg_path

    def _grab(self):
        self.calls += 1
        if self.calls == 1:
            self.release.wait(10)
            raise CaptureError("late")
        import cv2

        data = self.path.read_bytes()
        return Frame(jpeg=data, image=cv2.imread(str(self.path)), taken_at=time.time(), source="hang-test")

    def capture(self):
        return self.runner.call(self._grab)

    def close(self):
        self.release.set()


def test_camera_timeout_then_next_press_works(tmp_path, photos):
    write_photo(photos / "01.jpg", 220)
    cfg = make_config(tmp_path / "state", photos)
    cam = HangingCamera(photos / "01.jpg")
    with KitHarness(cfg, camera=cam) as h:
        h.press()
        v = h.verdict()
        assert v.pattern == "error" and "Kamera tidak merespons" in v.message
        cam.release.set()  # the driver comes back
        time.sleep(0.1)
        h.press()
        assert h.verdict().pattern == "ok"


def test_full_disk_refuses_capture_keeps_earlier(tmp_path, photos):
    write_photo(photos / "01.jpg", 220)
    write_photo(photos / "02.jpg", 220)
    write_photo(photos / "03.jpg", 220)
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg) as h:
        h.press()
        first = h.verdict()
        h.store.min_free_mb = 10**9  # the state filesystem is "full"
        h.press()
        v = h.verdict()
        assert v.pattern == "error" and "Penyimpanan penuh" in v.message
        h.store.min_free_mb = 1
        h.press()
        assert h.verdict().pattern == "ok"
    assert first.record.photo_path.exists()
    assert h.store.counts()["total"] == 2


def test_storage_gone_read_only_mid_run_is_a_fault_until_the_card_takes_writes_again(tmp_path, photos,
                                                                                    monkeypatch):
    """The SD card is remounted read-only while the kit runs: the press is an error verdict that says the
    photo was not stored and pressing again will not help, and the kit is in fault (red, not a green 'ready'
    that invites presses that all fail). Presses while the card refuses writes take no photo; once it is
    writable again the kit's write probe passes, it recovers by itself and a press works."""
    import errno
    import os
    from pathlib import Path

    for i in range(3):
        write_photo(photos / f"{i:02d}.jpg", 220)
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg, fault_retry_s=0.3) as h:
        h.press()
        first = h.verdict()

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(os, "fsync", read_only)
        monkeypatch.setattr(Path, "unlink", read_only)
        h.press()
        v = h.verdict()
        assert v.pattern == "error" and h.leds()["red"] is True
        assert "tidak bisa ditulis" in v.message and "hubungi teknisi" in v.message
        assert "TIDAK tersimpan" in v.message and "internal" not in v.message
        assert h.kit.state == "fault" and "storage" in h.kit.faults
        h.press()  # still read-only: the probe fails, no photo is taken
        still = h.verdict()
        assert still.pattern == "error" and "penyimpanan (kartu SD)" in still.message
        assert "Jangan cabut kartu SD" in still.message and h.kit.reader.calls == 2
        monkeypatch.undo()
        deadline = time.monotonic() + 10  # the retries find the card writable again, without a press
        while h.kit.faults and time.monotonic() < deadline:
            time.sleep(0.05)
        assert h.kit.faults == {} and h.kit.state == "ready"
        assert any(m.startswith("Kerusakan teratasi") for m in h.messages)
        h.press()
        assert h.verdict().pattern == "ok"
    assert first.record.photo_path.exists()
    assert h.store.counts()["total"] == 2
    assert not list((tmp_path / "state" / "photos").glob(".write-probe*"))


def test_an_unexpected_error_in_a_press_still_ends_in_an_error_verdict(tmp_path, photos, monkeypatch):
    """A bug outside the guarded steps (here the store's save) is caught by the loop: the press gets the
    error pattern and a verdict like any other (the soak presser and the demo wait for one), and the kit
    stays ready."""
    write_photo(photos / "01.jpg", 220)
    write_photo(photos / "02.jpg", 220)
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg) as h:
        monkeypatch.setattr(h.store, "save", lambda **kw: 1 / 0)
        h.press()
        v = h.verdict(timeout=5)
        monkeypatch.undo()
        assert v.pattern == "error" and "kesalahan internal (ZeroDivisionError)" in v.message
        assert h.leds()["red"] is True and h.kit.state == "ready" and h.kit.verdicts == 1
        h.press()
        assert h.verdict().pattern == "ok"


def test_an_error_after_the_verdict_leaves_the_press_one_verdict(tmp_path, photos, monkeypatch):
    """The page is stored and the KPPS told 'ok'; then the outbox refuses it and recording that fails too:
    the press keeps its one verdict (an 'error' after the 'ok' of a page that is stored would tell the KPPS
    it was lost; without the verdict the listeners would wait), and the page is handed over at the next
    press."""
    write_photo(photos / "01.jpg", 220)
    write_photo(photos / "02.jpg", 220)
    cfg = make_config(tmp_path / "state", photos)
    courier = RecordingCourier()
    with KitHarness(cfg, courier=courier) as h:
        courier.fail = True
        real = h.store.mark_submitted

        def broken(capture_id, *, error=None):
            raise RuntimeError("bookkeeping failed")

        monkeypatch.setattr(h.store, "mark_submitted", broken)
        h.press()
        assert h.verdict().pattern == "ok"  # told, and handed to the listeners (soak, demo) all the same
        time.sleep(0.3)
        assert h.verdicts.empty() and h.kit.verdicts == 1 and h.kit.state == "ready"
        assert not any("kesalahan" in m for m in h.messages)
        monkeypatch.setattr(h.store, "mark_submitted", real)
        courier.fail = False
        h.press()
        assert h.verdict().pattern == "ok" and h.kit.verdicts == 2
        assert len(courier.submitted) == 2  # the first page too, before the second


def test_reader_crash_is_an_error_not_a_dead_kit(tmp_path, photos):
    write_photo(photos / "01.jpg", 220)
    write_photo(photos / "02.jpg", 220)
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg, reader=StubReader(fail_on=1)) as h:
        h.press()
        assert h.verdict().pattern == "error"
        h.press()
        assert h.verdict().pattern == "ok"


class RecordingCourier:
    """Courier double for loop tests without MQTT (the MQTT path is tested in test_app_courier.py)."""

    def __init__(self):
        self.submitted: list[str] = []
        self.alive = False
        self.fail = False

    def start(self):
        self.alive = True

    def stop(self):
        self.alive = False

    def close(self):
        pass

    def is_alive(self):
        return self.alive

    def kick(self):
        pass

    def status(self):
        return {"connected": False, "queued": len(self.submitted), "sent": 0}

    def submit_reading(self, *, capture_id, halaman, reading, photo_jpeg, taken_at, time_source):
        if self.fail:
            raise RuntimeError("outbox full")
        assert photo_jpeg[:2] == b"\xff\xd8"
        if capture_id not in self.submitted:
            self.submitted.append(capture_id)
        return capture_id


def test_a_long_press_without_a_signal_says_how_many_messages_wait_and_that_they_are_safe(tmp_path, photos):
    """No link: 'trying to resend' alone would leave the KPPS wondering; the kit says how many messages wait
    for a signal and that they are kept. With the link up it says it resends them."""
    write_photo(photos / "01.jpg", 220)
    cfg = make_config(tmp_path / "state", photos)
    courier = RecordingCourier()
    with KitHarness(cfg, courier=courier) as h:
        h.press()
        assert h.verdict().pattern == "ok"
        h.press(1.3)  # hold_s = 1.0
        waiting = msg.QUEUED.format(n=1)
        deadline = time.monotonic() + 5
        while waiting not in h.messages and time.monotonic() < deadline:
            time.sleep(0.02)
        assert waiting in h.messages and msg.RESEND not in h.messages
        assert "Belum ada sinyal" in waiting and "aman" in waiting
        assert h.kit._sending_text(1, connected=True) == msg.RESEND
        assert h.kit._sending_text(0, connected=False) == msg.SENT_ALL


class ScriptedReading:
    """A page reading given as the reader's dict (``to_dict``)."""

    def __init__(self, data: dict) -> None:
        self.data, self.status, self.annotated = data, data["status"], None

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self.data))


class ScriptedReader:
    """Reads each photo as the next of the given page dicts."""

    def __init__(self, pages: list[dict]) -> None:
        self.pages = list(pages)

    def read(self, image):
        return ScriptedReading(self.pages.pop(0))


def test_a_page_that_does_not_agree_with_the_pages_read_before_goes_to_review_at_once(tmp_path, photos):
    """Page 3's V.C must equal page 1's I.B.4: the kit checks it when page 3 is read, while the KPPS still has
    the form, instead of leaving it to the collector. Photographed again with the slip corrected, the page is
    ok. Only pages taken within the window count (an H-1 practice page is older)."""
    from inference.synth import make_tps

    numbers = make_tps(np.random.default_rng(5))[0]

    def page(h: int, **change) -> dict:
        return {"form": "C.HASIL-PPWP-2024", "page": h, "status": "ok", "reasons": [], "checks": [],
                "fields": {k: {"value": v} for k, v in {**numbers[h], **change}.items()}}

    for i in range(4):
        write_photo(photos / f"{i}.jpg", 220)
    cfg = make_config(tmp_path / "state", photos)
    slip = numbers[3]["total_suara"] + 10
    reader = ScriptedReader([page(1), page(2), page(3, total_suara=slip), page(3)])
    with KitHarness(cfg, reader=reader) as h:
        for _ in range(2):
            h.press()
            assert h.verdict().pattern == "ok"
        h.press()
        v = h.verdict()
        assert v.pattern == "review" and "Tidak cocok dengan halaman lain" in v.message and "V.C" in v.message
        assert v.record.status == "review" and v.record.reading["reasons"][-1]["code"] == "tps_rule_failed"
        h.press()  # the form corrected and page 3 photographed again
        assert h.verdict().pattern == "ok"
    newest = h.store.newest_pages(since=0)
    assert [p["page"] for p in newest] == [1, 2, 3] and newest[2]["status"] == "ok"  # the corrected page 3
    assert h.store.newest_pages(since=time.time() + 1) == []  # pages taken before the window: not compared


def test_unsent_captures_are_resubmitted_at_start(tmp_path, photos):
    for i in range(3):
        write_photo(photos / f"{i}.jpg", 220)
    cfg = make_config(tmp_path / "state", photos)
    courier = RecordingCourier()
    courier.fail = True
    with KitHarness(cfg, courier=courier) as h:
        h.press()
        first = h.verdict()
        assert h.leds()["green"]
    assert courier.submitted == [] and h.store.counts()["unsubmitted"] == 1
    courier = RecordingCourier()
    with KitHarness(cfg, courier=courier) as h2:
        assert courier.submitted == [first.record.id]  # re-submitted before READY
        h2.press()
        second = h2.verdict()
        time.sleep(0.2)
    assert courier.submitted == [first.record.id, second.record.id]
    assert h2.store.counts()["unsubmitted"] == 0


def test_a_capture_whose_hand_over_failed_is_handed_over_before_the_next_one(tmp_path, photos):
    """Halaman 1 is stored but the outbox refuses it; the KPPS corrects the form and photographs halaman 1
    again. The older capture goes to the outbox first, so the collector (newest message of a halaman wins)
    keeps the corrected photo, not the older one re-submitted later by a long press or a restart."""
    for i in range(2):
        write_photo(photos / f"{i}.jpg", 220)
    cfg = make_config(tmp_path / "state", photos)
    courier = RecordingCourier()
    with KitHarness(cfg, courier=courier) as h:
        courier.fail = True
        h.press()
        first = h.verdict()
        courier.fail = False
        h.press()
        second = h.verdict()
        assert first.record.halaman == second.record.halaman == 1
        assert courier.submitted == [first.record.id, second.record.id]
    assert h.store.counts()["unsubmitted"] == 0


def test_critical_battery_finishes_write_then_powers_off(tmp_path, photos):
    from firmware.power import BatteryMonitor

    write_photo(photos / "01.jpg", 220)
    factory = MockFactory()
    cfg = make_config(tmp_path / "state", photos, power={"low_battery_pin": 5, "shutdown_command": ["true"]})
    battery = BatteryMonitor(cfg.power, pin_factory=factory, bounce_s=None)
    powered_off = threading.Event()
    with KitHarness(cfg, battery=battery, factory=factory, power_off=powered_off.set,
                    reader=StubReader(delay_s=0.3)) as h:
        h.press()
        time.sleep(0.1)  # the press is being processed
        factory.pin(5).drive_low()  # the UPS HAT asserts low battery
        v = h.verdict()
        assert v.pattern == "ok"
        rc = None
        deadline = time.monotonic() + 10
        while h.rc is None and time.monotonic() < deadline:
            time.sleep(0.05)
        rc = h.rc
    assert rc == EXIT_POWEROFF and powered_off.is_set()
    assert any("Baterai hampir habis" in m for m in h.messages)
    assert h.store.counts()["total"] == 1 and h.store.integrity_ok()


def test_low_battery_warning_keeps_running(tmp_path, photos):
    write_photo(photos / "01.jpg", 220)
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg) as h:
        h.kit.post(LowBattery(level=14.0, critical=False))
        h.press()
        assert h.verdict().pattern == "ok"
        assert any("Baterai lemah (14%)" in m for m in h.messages)


def test_watchdog_pings_only_while_courier_alive(tmp_path, photos):
    import socket

    from firmware.notify import SystemdNotifier

    sock_path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(sock_path)
    server.settimeout(0.2)
    notifier = SystemdNotifier(socket_path=sock_path, env={"WATCHDOG_USEC": "400000"})
    courier = RecordingCourier()
    cfg = make_config(tmp_path / "state", photos)
    got: queue.Queue = queue.Queue()

    def drain(seconds):
        end = time.monotonic() + seconds
        out = []
        while time.monotonic() < end:
            try:
                out.append(server.recv(4096).decode())
            except TimeoutError:
                pass
        return out

    with KitHarness(cfg, courier=courier, notifier=notifier):
        first = drain(1.0)
        assert any(m.startswith("READY=1") for m in first)
        assert any(m == "WATCHDOG=1" for m in first)
        courier.alive = False  # the courier thread died
        drain(0.5)
        assert not any(m == "WATCHDOG=1" for m in drain(1.0))
    server.close()
    del got


def test_status_file_and_cmd_status(tmp_path, photos):
    from firmware.cmd_status import collect, render

    write_photo(photos / "01.jpg", 220)
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg) as h:
        h.press()
        h.verdict()
        info = collect(cfg.paths.state_dir)
        assert info["daemon"]["running"] and info["ready"]
        assert info["captures"]["total"] == 1 and info["last_captures"][0]["status"] == "ok"
        assert "READY" in render(info)
    info = collect(cfg.paths.state_dir)
    assert not info["ready"] and "daemon not running" in info["problems"]


def test_queued_offline_pattern_after_verdict(tmp_path, photos):
    write_photo(photos / "01.jpg", 220)
    cfg = make_config(tmp_path / "state", photos, gpio={"verdict_s": 1.0})
    courier = RecordingCourier()  # never connected: what it holds stays queued
    with KitHarness(cfg, courier=courier) as h:
        h.press()
        assert h.verdict().pattern == "ok"
        deadline = time.monotonic() + 5
        while h.kit._shown != "queued" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert h.kit._shown == "queued"
        yellow = h.factory.pin(cfg.gpio.led_yellow)
        n = len(yellow.states)
        time.sleep(2.2)  # the slow pulse: 0.1 s on every 2 s
        assert len(yellow.states) > n
        assert h.leds()["green"] is True and h.leds()["red"] is False


def test_real_reader_through_the_button(tmp_path, photos):
    """The real page reader and digit model on generated pages: ok page, spoiled photo -> retake."""
    from inference.digits import DEFAULT_MODEL

    if not DEFAULT_MODEL.is_file():
        pytest.skip("digit model not present")
    from firmware.app import load_reader
    from inference import synth

    sample = synth.make_sample(11, 2, condition="clean", scale=0.75)
    (photos / "1-page2.jpg").write_bytes(sample.jpeg)
    (photos / "2-hand.jpg").write_bytes(synth.make_sample(12, 2, spoiled="hand", scale=0.75).jpeg)
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg, reader=load_reader(cfg)) as h:
        h.press()
        v = h.verdict(timeout=60)
        assert v.pattern in ("ok", "review") and v.record.halaman == 2
        values = {k: f["value"] for k, f in v.reading["fields"].items()}
        if v.pattern == "ok":  # an ok page must be right
            assert all(values[k] == w for k, w in sample.written.items() if k in values and w is not None)
        h.press()
        bad = h.verdict(timeout=60)
        assert bad.pattern == "retake" and "Foto tidak bisa dibaca" in bad.message
        # the reason's own advice, then how to retake: said once, not twice
        assert "tertutup" in bad.message and bad.message.count("foto ulang") == 1
        assert bad.message.endswith("Tekan tombol untuk memotret ulang.")
        assert bad.record.annotated_path.exists()
    assert h.store.counts()["total"] == 2


def test_the_provisioned_dpt_reaches_the_reader_and_a_page_1_that_differs_goes_to_review(tmp_path, photos):
    """kit.dpt (provisioning) is what the kit knows of its TPS: page 1 whose DPT reads otherwise is stored
    for review, and the KPPS is told which number differs from what."""
    from inference.digits import DEFAULT_MODEL

    if not DEFAULT_MODEL.is_file():
        pytest.skip("digit model not present")
    from firmware.app import load_reader
    from inference import synth

    sample = synth.make_sample(201, 1, condition="clean", scale=0.6)
    (photos / "1-page1.jpg").write_bytes(sample.jpeg)
    cfg = make_config(tmp_path / "state", photos)
    cfg.kit.dpt = sample.written["dpt_jml"] + 10
    reader = load_reader(cfg)
    assert reader.known == {"dpt": cfg.kit.dpt}
    with KitHarness(cfg, reader=reader) as h:
        h.press()
        v = h.verdict(timeout=60)
        assert v.pattern == "review" and v.record.halaman == 1
        assert "known_mismatch" in [r["code"] for r in v.reading["reasons"]]
        assert f"tertulis {sample.written['dpt_jml']}, terdaftar {cfg.kit.dpt}" in v.message


class ReadinessCourier(RecordingCourier):
    def __init__(self):
        super().__init__()
        self.readiness: list[dict] = []

    def publish_retained(self, kind, body):
        assert kind == "readiness"
        self.readiness.append(body)
        return f"r{len(self.readiness)}"


def test_running_kit_refreshes_its_readiness(tmp_path, photos, monkeypatch):
    """Fleet readiness treats an old report as stale: a kit that keeps running says so again now and then."""
    import firmware.app

    monkeypatch.setattr(firmware.app, "READINESS_EVERY_S", 0.3)
    courier = ReadinessCourier()
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg, courier=courier):
        deadline = time.monotonic() + 5
        while len(courier.readiness) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(courier.readiness) >= 3
    assert courier.readiness[0]["trigger"] == "boot"
    assert {b["trigger"] for b in courier.readiness[1:]} == {"running"}
    assert courier.readiness[-1]["checked_at"] > courier.readiness[0]["checked_at"]


def test_readiness_is_published_again_once_ntp_synced_the_clock(tmp_path, photos, monkeypatch):
    """No RTC: the boot readiness of a kit switched on after storage carries the last saved time; once NTP
    has synced the clock the kit reports again (once), so the operators do not see it as days stale."""
    import firmware.app
    import firmware.clock

    clock = ["unsynced"]
    monkeypatch.setattr(firmware.clock, "time_source", lambda: clock[0])
    monkeypatch.setattr(firmware.app.status_file, "STATUS_EVERY_S", 0.1)
    courier = ReadinessCourier()
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg, courier=courier, time_source=lambda: clock[0]):
        time.sleep(0.5)
        assert [(b["trigger"], b["time_source"]) for b in courier.readiness] == [("boot", "unsynced")]
        clock[0] = "ntp"
        deadline = time.monotonic() + 5
        while len(courier.readiness) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    assert [(b["trigger"], b["time_source"]) for b in courier.readiness] == [
        ("boot", "unsynced"), ("clock", "ntp")]


def test_watchdog_is_fed_while_a_slow_camera_is_waited_for(tmp_path, photos):
    """camera.timeout_s may exceed WatchdogSec: a hung camera ends in an error, not a watchdog kill."""
    import socket

    from firmware.notify import SystemdNotifier

    write_photo(photos / "01.jpg", 220)
    sock_path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(sock_path)
    server.settimeout(0.05)
    watchdog_s = 1.0
    notifier = SystemdNotifier(socket_path=sock_path, env={"WATCHDOG_USEC": str(int(watchdog_s * 1e6))})
    cam = HangingCamera(photos / "01.jpg")
    cam.runner.timeout_s = 3 * watchdog_s  # a camera timeout longer than the watchdog
    cfg = make_config(tmp_path / "state", photos)
    pings: list[float] = []
    try:
        with KitHarness(cfg, camera=cam, notifier=notifier) as h:
            h.press()
            deadline = time.monotonic() + 10
            got = None
            while got is None and time.monotonic() < deadline:
                try:
                    if server.recv(4096).decode() == "WATCHDOG=1":
                        pings.append(time.monotonic())
                except TimeoutError:
                    pass
                try:
                    got = h.verdicts.get_nowait()
                except queue.Empty:
                    pass
            assert got is not None and got.pattern == "error" and "Kamera tidak merespons" in got.message
    finally:
        server.close()
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert pings and max(gaps) < watchdog_s, gaps


def test_the_retake_message_gives_each_reasons_advice_or_the_checklist():
    """Each reason of the reader says what to do; a reason with no text of its own gets the checklist."""
    from firmware import messages as msg

    covered = {"code": "covered", "message": "Sebagian formulir tertutup. Singkirkan, lalu foto ulang."}
    text = msg.retake_text({"reasons": [covered]})
    assert text == "Foto tidak bisa dibaca: Sebagian formulir tertutup. Singkirkan, lalu foto ulang. " \
                   "Tekan tombol untuk memotret ulang."
    for bare in ({"reasons": ["blurred"]}, {"reasons": [{"code": "x"}]}, {"reasons": []}, {}):
        assert "Rapikan halaman" in msg.retake_text(bare)


def test_a_picture_too_large_to_decode_is_an_error_and_the_kit_stays_ready(tmp_path, photos):
    """A file whose header claims 100000 x 100000 px makes OpenCV raise while decoding: the press is an
    error saying the file is no readable image, the kit stays ready and the next press reads the next
    photo."""
    import struct

    (photos / "01-huge.bmp").write_bytes(b"BM" + struct.pack("<IHHI", 0, 0, 0, 54)
                                         + struct.pack("<IiiHHIIiiII", 40, 100000, 100000, 1, 24,
                                                       0, 0, 0, 0, 0, 0))
    write_photo(photos / "02-good.jpg", 220)
    cfg = make_config(tmp_path / "state", photos)
    with KitHarness(cfg) as h:
        h.press()
        assert h.verdict().pattern == "error"
        assert h.leds()["red"] is True and h.kit.state == "ready"
        texts = [m for m in h.messages if m.startswith("Gagal memotret")]
        assert any("01-huge.bmp: not an image OpenCV can read" in t for t in texts)
        assert not any("Assertion" in t for t in texts)
        h.press()
        assert h.verdict().pattern == "ok"
