"""firmware.notify against a real unix datagram socket (what systemd listens on)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from firmware.notify import SystemdNotifier

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()


def recv(sock) -> str:
    return sock.recv(4096).decode()


def test_ready_watchdog_stopping_status(notify_socket):
    path, sock = notify_socket
    n = SystemdNotifier(env={"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready(status="kamera, model, database siap")
    assert recv(sock) == "READY=1\nSTATUS=kamera, model, database siap"
    assert n.watchdog()
    assert recv(sock) == "WATCHDOG=1"
    assert n.status("antrian: 3\npesan")
    assert recv(sock) == "STATUS=antrian: 3 pesan"
    assert n.extend_timeout(2.5)
    assert recv(sock) == "EXTEND_TIMEOUT_USEC=2500000"
    assert n.stopping()
    assert recv(sock) == "STOPPING=1"
    n.close()


def test_abstract_namespace_socket():
    name = f"tpskit-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        n = SystemdNotifier(env={"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert recv(sock) == "READY=1"
    finally:
        sock.close()


def test_no_socket_is_a_noop():
    n = SystemdNotifier(env={})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.stopping() is False
    assert n.watchdog_interval() is None


def test_missing_socket_never_raises(tmp_path):
    n = SystemdNotifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.ready() is False
    assert n.watchdog() is False


def test_watchdog_interval_from_environment():
    pid = str(os.getpid())
    assert SystemdNotifier(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}).watchdog_timeout() == 30.0
    assert SystemdNotifier(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}).watchdog_interval() == 15.0
    assert SystemdNotifier(env={"WATCHDOG_USEC": "30000000"}).watchdog_interval() == 15.0
    # the watchdog belongs to another process (e.g. a parent shell): not ours
    assert SystemdNotifier(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval() is None
    assert SystemdNotifier(env={"WATCHDOG_USEC": "0"}).watchdog_interval() is None
    assert SystemdNotifier(env={"WATCHDOG_USEC": "junk"}).watchdog_interval() is None


def test_child_process_reads_environment(notify_socket):
    """As under systemd: the variables come from the environment of a separate process."""
    path, sock = notify_socket
    code = ("from firmware.notify import SystemdNotifier as N; import os;"
            "n = N(unset_environment=True); n.ready(); n.watchdog();"
            "assert 'NOTIFY_SOCKET' not in os.environ; n.stopping()")
    env = {**os.environ, "NOTIFY_SOCKET": path, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)
    assert [recv(sock) for _ in range(3)] == ["READY=1", "WATCHDOG=1", "STOPPING=1"]
