"""A real mosquitto broker on a free loopback port, for tests and benchmarks.

``MosquittoBroker`` writes a small config (listener 127.0.0.1 PORT, anonymous,
no persistence), starts ``mosquitto -c``, and waits until it accepts TCP
connections. ``stop()`` / ``start()`` reuse the same port, so a test can
simulate an outage and the clients reconnect to the same URL.

Used by the fixtures in ``tests/conftest.py`` and by ``scripts/bench_delivery.py``
(import it with ``sys.path`` pointing at the repository root).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DEFAULT_BINARY = "/usr/sbin/mosquitto"


class BrokerUnavailable(RuntimeError):
    """mosquitto is not installed or did not start."""


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or None (apt install mosquitto)."""
    env = os.environ.get("TPSKIT_MOSQUITTO")
    for candidate in (env, DEFAULT_BINARY, shutil.which("mosquitto"), "/usr/local/sbin/mosquitto"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class MosquittoBroker:
    """One mosquitto process on 127.0.0.1; restartable on the same port.

    ``extra_conf`` lines are appended to the generated config (e.g. an ACL file).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        binary: str | None = None,
        workdir: Path | str | None = None,
        extra_conf: str = "",
        start_timeout: float = 10.0,
        anonymous: bool = True,
        config: str | None = None,
    ):
        self.binary = binary or find_mosquitto()
        if not self.binary:
            raise BrokerUnavailable("mosquitto is not installed (apt-get install mosquitto)")
        self.host = host
        self.port = port or free_port(host)
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tpskit-mosq-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen | None = None
        self._log = None
        if config is not None:  # a complete config of the caller; {port} is this broker's port
            self.conf_path.write_text(config.replace("{port}", str(self.port)), encoding="utf-8")
            return
        self.conf_path.write_text(
            f"listener {self.port} {self.host}\n"
            f"allow_anonymous {'true' if anonymous else 'false'}\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 0\n"
            + (extra_conf if extra_conf.endswith("\n") or not extra_conf else extra_conf + "\n"),
            encoding="utf-8",
        )

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> MosquittoBroker:
        """Start the broker (no-op if running); return once it accepts connections."""
        if self.running:
            return self
        self._log = open(self.log_path, "ab")
        deadline = time.monotonic() + self.start_timeout
        while True:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                start_new_session=True,
            )
            if self._wait_listening(deadline):
                return self
            # The port may still be in TIME_WAIT/held right after a stop: retry until the deadline.
            self._terminate()
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"mosquitto did not start on {self.url}; log:\n{self.log_tail()}")
            time.sleep(0.2)

    def _wait_listening(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def _terminate(self, sig: int = signal.SIGTERM) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop the broker (clients see the connection drop); start() brings it back on the same port."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the broker (abrupt outage)."""
        self._terminate(signal.SIGKILL)

    def restart(self) -> MosquittoBroker:
        self.stop()
        return self.start()

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def close(self) -> None:
        """Stop and remove the temporary directory (if this object created it)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MosquittoBroker({self.url}, running={self.running})"
