"""sd_notify for systemd ``Type=notify`` services, without dependencies.

systemd passes ``$NOTIFY_SOCKET`` (a unix datagram socket path, or ``@name`` for
the abstract namespace) and, with ``WatchdogSec=``, ``$WATCHDOG_USEC`` and
``$WATCHDOG_PID``. Outside systemd (tests, a laptop) every call is a no-op.

Sending never raises: a failed notification is logged once and the kit keeps
working (systemd will then restart it if the watchdog was missed).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Send state changes to systemd's notify socket.

    ``SystemdNotifier()`` reads the environment; pass ``socket_path`` or ``env`` to
    override (tests). ``unset_environment=True`` removes ``$NOTIFY_SOCKET`` etc. from
    ``os.environ`` so child processes do not talk to systemd on our behalf.
    """

    def __init__(self, *, socket_path: str | None = None, env: Mapping[str, str] | None = None,
                 unset_environment: bool = False) -> None:
        env = os.environ if env is None else env
        self._path = socket_path if socket_path is not None else env.get("NOTIFY_SOCKET") or None
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._sock: socket.socket | None = None
        self._warned = False
        if unset_environment and env is os.environ:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return bool(self._path)

    def _address(self) -> str | bytes:
        assert self._path
        if self._path.startswith("@"):
            return b"\0" + self._path[1:].encode()
        return self._path

    def notify(self, message: str) -> bool:
        """Send raw ``KEY=VALUE`` lines; return True if the datagram was sent."""
        if not self._path:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self._address())
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify to %s failed: %s", self._path, exc)
                self._warned = True
            return False

    def ready(self, status: str | None = None) -> bool:
        """READY=1: camera, model and database are open; the kit takes presses."""
        return self.notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def watchdog(self) -> bool:
        """WATCHDOG=1: only call when the main loop and its workers are known alive."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: a clean stop has begun."""
        return self.notify("STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> bool:
        """STATUS=...: one line shown by ``systemctl status tpskit``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC: ask for more start/stop time (e.g. a slow first model load)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog_timeout(self) -> float | None:
        """The watchdog timeout in seconds for this process, or None if no watchdog applies."""
        if not self._watchdog_usec:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        return usec / 1_000_000 if usec > 0 else None

    def watchdog_interval(self) -> float | None:
        """How often to ping: half the timeout (systemd's advice), or None without a watchdog."""
        timeout = self.watchdog_timeout()
        return timeout / 2 if timeout else None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
