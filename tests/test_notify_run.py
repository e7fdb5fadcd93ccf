"""`tpskit run` as systemd runs it: READY=1, WATCHDOG=1 and STOPPING=1 on a real notify socket."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from inference.digits import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_boot", ROOT / "scripts" / "bench_boot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="digit model not committed yet")
def test_run_notifies_ready_watchdog_stopping(tmp_path):
    bench = _bench()
    conf = bench.make_kit(tmp_path)
    res = bench.measure_boot(conf, timeout_s=120, watchdog_usec=1_000_000)
    msgs = res["messages"]
    ready = next(m for m in msgs if m.startswith("READY=1"))
    assert "STATUS=" in ready
    assert msgs.index(ready) < msgs.index("WATCHDOG=1")
    assert any(m.startswith("STOPPING=1") for m in msgs)
    assert res["exit_code"] == 0
    assert res["ready_ms"] > 0


@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="digit model not committed yet")
def test_run_without_a_camera_is_ready_in_its_fault_state_not_a_failed_start(tmp_path):
    """A camera that does not open no longer fails the start (20 of those rebooted the Pi every ~3 min and
    stopped the sending): READY=1 comes with the fault as STATUS, and SIGTERM stops it cleanly."""
    import shutil

    bench = _bench()
    conf = bench.make_kit(tmp_path)
    shutil.rmtree(tmp_path / "photos")  # the camera is gone
    res = bench.measure_boot(conf, timeout_s=120, watchdog_usec=1_000_000)
    ready = next(m for m in res["messages"] if m.startswith("READY=1"))
    assert "KIT RUSAK" in ready and "kamera" in ready
    assert res["exit_code"] == 0


@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="digit model not committed yet")
@pytest.mark.parametrize("lasting", [True, False], ids=["state-on-disk", "state-on-tmpfs"])
def test_run_under_systemd_asks_for_one_reboot_when_the_camera_stays_down(tmp_path, monkeypatch, lasting):
    """Under systemd a camera that stays down gets one reboot (exit 76), but only with a state directory that
    survives it: on tmpfs the marker allowing just one would be lost and the Pi would reboot for ever."""
    import argparse
    import os
    import shutil
    import signal
    import socket
    import threading
    import time

    import firmware.app
    import firmware.config
    from firmware import cmd_run

    bench = _bench()
    conf = bench.make_kit(tmp_path)
    shutil.rmtree(tmp_path / "photos")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setattr(firmware.app, "FAULT_REBOOT_AFTER_S", 0.5)
    if lasting:  # tmp_path is under /tmp: let it stand for /var/lib/tpskit
        monkeypatch.setattr(firmware.config, "VOLATILE_DIRS", ())
    status = tmp_path / "state" / "status.json"

    def stop_later():  # SIGTERM once the kit runs (its handler is in place) and the reboot time is past
        deadline = time.monotonic() + 60
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)
        if status.exists():
            os.kill(os.getpid(), signal.SIGTERM)

    args = argparse.Namespace(config=str(conf), verbose=False, soak=False, presses=None, interval=None,
                              mock_gpio=True, no_send=True)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    stopper = threading.Thread(target=stop_later, daemon=True)
    try:
        if not lasting:
            stopper.start()
        rc = cmd_run.run(args)
    finally:
        sock.close()
        for sig, handler in handlers.items():  # run() installed the kit's own
            signal.signal(sig, handler)
    marker = tmp_path / "state" / firmware.app.FAULT_REBOOT_MARKER
    if lasting:
        assert rc == firmware.app.EXIT_REBOOT and marker.exists()
    else:
        stopper.join(5)
        assert rc == 0 and not marker.exists()  # stayed up in its fault state until stopped
