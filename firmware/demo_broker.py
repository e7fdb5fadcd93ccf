"""A throwaway mosquitto on 127.0.0.1 for `tpskit demo` (and the soak bench): free port, no persistence."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_mosquitto() -> str | None:
    env = os.environ.get("TPSKIT_MOSQUITTO")
    if env:
        return env
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)


class LocalBroker:
    """``with LocalBroker() as b: b.url`` — starts mosquitto on a free loopback port, stops it on exit."""

    def __init__(self, *, workdir: Path | None = None) -> None:
        self.binary = find_mosquitto()
        if self.binary is None:
            raise RuntimeError("mosquitto not found: apt-get install mosquitto, or pass --broker URL")
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="tpskit-broker-"))
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> LocalBroker:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        "log_dest stderr\nlog_type error\nlog_type warning\n")
        log = open(self.workdir / "mosquitto.log", "wb")  # noqa: SIM115 - kept open for the process
        self._proc = subprocess.Popen([self.binary, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start: see {self.workdir / 'mosquitto.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout:g} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
