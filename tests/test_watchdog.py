"""firmware.watchdog: pings reach a real notify socket only while the loop and workers are alive."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from firmware.notify import SystemdNotifier
from firmware.watchdog import LivenessGate


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield str(path), sock
    sock.close()


def drain(sock, wait_s: float = 0.0) -> list[str]:
    """All datagrams that arrive within wait_s (non-blocking after that)."""
    out = []
    deadline = time.monotonic() + wait_s
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            if time.monotonic() >= deadline:
                return out


def test_gate_pings_only_when_all_alive(notify_socket):
    path, sock = notify_socket
    clock = FakeClock()
    worker_ok = [True]
    gate = LivenessGate(SystemdNotifier(env={"NOTIFY_SOCKET": path}), interval_s=5, clock=clock)
    gate.register("main", max_silence_s=10)
    gate.register("courier", probe=lambda: worker_ok[0])
    assert gate.tick()
    assert drain(sock) == ["WATCHDOG=1"]
    clock.t += 1
    assert not gate.tick()  # not due yet
    clock.t += 5
    gate.alive("main")
    worker_ok[0] = False  # the courier thread died
    assert not gate.tick()
    assert gate.failing() == ["courier"]
    assert drain(sock) == ["STATUS=not alive: courier"]
    worker_ok[0] = True
    clock.t += 20  # main silent for 20 s > 10 s
    assert not gate.tick()
    assert gate.failing() == ["main"]
    gate.alive("main")
    assert gate.tick()
    assert drain(sock) == ["STATUS=not alive: main", "WATCHDOG=1"]


def test_probe_that_raises_counts_as_dead(notify_socket):
    path, _ = notify_socket
    gate = LivenessGate(SystemdNotifier(env={"NOTIFY_SOCKET": path}), interval_s=1)

    def probe():
        raise RuntimeError("boom")

    gate.register("courier", probe=probe)
    assert not gate.tick()
    with pytest.raises(ValueError):
        gate.register("nothing")
    with pytest.raises(KeyError):
        gate.alive("unknown")


def test_hung_main_loop_stops_the_pings(notify_socket):
    """A real loop thread pings through the gate; once it hangs no WATCHDOG=1 arrives any more."""
    path, sock = notify_socket
    gate = LivenessGate(SystemdNotifier(env={"NOTIFY_SOCKET": path}), interval_s=0.02)
    gate.register("main", max_silence_s=0.5)
    hang = threading.Event()
    release = threading.Event()
    stop = threading.Event()

    def main_loop():
        while not stop.is_set():
            if hang.is_set():
                release.wait()  # e.g. a capture that never returns
            gate.alive("main")
            gate.tick()
            time.sleep(0.005)

    t = threading.Thread(target=main_loop, daemon=True)
    t.start()
    try:
        before = drain(sock, 0.3)
        assert before.count("WATCHDOG=1") >= 2
        hang.set()
        drain(sock, 0.1)  # a ping may have been in flight when the loop hung
        assert "WATCHDOG=1" not in drain(sock, 0.5)
    finally:
        stop.set()
        release.set()
        t.join(5)


def test_dead_worker_stops_the_pings_while_loop_runs(notify_socket):
    path, sock = notify_socket
    gate = LivenessGate(SystemdNotifier(env={"NOTIFY_SOCKET": path}), interval_s=0.02)
    worker_stop = threading.Event()
    worker = threading.Thread(target=worker_stop.wait, daemon=True)
    worker.start()
    gate.register("courier", probe=worker.is_alive)
    pinged = 0
    for _ in range(10):
        pinged += gate.tick()
        time.sleep(0.025)
    assert pinged >= 2
    worker_stop.set()
    worker.join(5)
    drain(sock, 0.05)
    for _ in range(10):
        assert not gate.tick()
        time.sleep(0.025)
    assert "WATCHDOG=1" not in drain(sock, 0.05)


def test_a_bounded_call_ticks_while_waiting_and_is_bounded():
    from capture.base import BoundedCall

    ticks = []
    wait = BoundedCall(limit_s=0.6, tick=lambda: ticks.append(1), every_s=0.05, name="camera")
    assert wait.call(lambda: (time.sleep(0.3), "frame")[1]) == "frame"
    assert len(ticks) >= 3  # ticked all through the wait
    with pytest.raises(ValueError, match="bad frame"):
        wait.call(lambda: (_ for _ in ()).throw(ValueError("bad frame")))
    release = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="within 0.6 s"):
        wait.call(lambda: release.wait(10))  # a backend that overruns its own timeout
    assert 0.55 <= time.monotonic() - t0 < 2
    with pytest.raises(TimeoutError, match="still stuck"):
        wait.call(lambda: "never called")
    release.set()
    time.sleep(0.1)
    assert wait.call(lambda: "again") == "again"
