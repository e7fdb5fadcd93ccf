"""A read-only view of a folder for one subprocess, as when the kernel remounts a failing SD card read-only.

- root (the tests may run as root, which ignores permission bits): a read-only bind mount of the folder in a
  private mount namespace of the subprocess (``unshare --mount``), so every write fails with EROFS exactly as
  on a remounted card; nothing outside that subprocess sees the mount, and it goes away with it.
- not root: the write bits of the folder and of everything in it are taken away for the test (EACCES; SQLite
  takes the same read-only path for both errors) and given back afterwards.
- root where mount namespaces are not allowed (an unprivileged container): the test is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

_BIND_RO = 'mount --bind -o ro -- "$1" "$1" && shift && exec "$@"'


class ReadOnlyView:
    """``with ReadOnlyView(folder) as view: subprocess.run(view.command([...]))``."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder).resolve()
        self._modes: dict[Path, int] = {}
        self._bind = False

    def __enter__(self) -> ReadOnlyView:
        if os.geteuid() == 0:
            if not _bind_mount_works(self.folder):
                pytest.skip("needs a mount namespace (unshare --mount) to make a folder read-only as root")
            self._bind = True
        else:
            for path in [self.folder, *self.folder.rglob("*")]:
                self._modes[path] = path.stat().st_mode
                path.chmod(path.stat().st_mode & ~0o222)
        return self

    def __exit__(self, *exc) -> None:
        for path, mode in reversed(self._modes.items()):
            path.chmod(mode)

    def command(self, argv: list[str]) -> list[str]:
        """*argv* run with the folder read-only."""
        if not self._bind:
            return list(argv)
        return _unshare_prefix() + ["sh", "-c", _BIND_RO, "sh", str(self.folder), *argv]


def _unshare_prefix() -> list[str]:
    return [shutil.which("unshare") or "unshare", "--mount", "--propagation", "private", "--"]


def _bind_mount_works(folder: Path) -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = folder / ".rw-probe"
    res = subprocess.run(
        _unshare_prefix() + ["sh", "-c", _BIND_RO, "sh", str(folder), "sh", "-c", '! touch "$0"', str(probe)],
        capture_output=True,
        timeout=30,
    )
    probe.unlink(missing_ok=True)
    return res.returncode == 0
