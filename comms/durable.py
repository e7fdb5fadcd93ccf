"""Files that survive a power cut or a pulled USB stick: written whole to a temp file in the same folder,
fsynced, renamed over the target, and the folder fsynced so that the rename is on disk too. A reader sees
the old file or the new one, never half of one; a failed write leaves no temp file behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def fsync_dir(path: Path | str) -> None:
    """Make the folder's entries (a rename, a new or removed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path | str, data: bytes | str | Iterable[bytes], *, mode: int | None = 0o644) -> None:
    """Replace *path* with *data* (bytes, text as UTF-8, or chunks of bytes written as they come); the file
    gets *mode* before a byte is written, so a secret is never readable by others, even briefly. None
    leaves the temp file's 0600 (a FAT USB stick refuses most chmods: its modes come from the mount)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # ".<name>.<random>.tmp": what a crash leaves behind is hidden, and found by its suffix (the photo store
    # removes its ``.*.tmp`` when it opens)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            if isinstance(data, str):
                data = data.encode("utf-8")
            for chunk in (data,) if isinstance(data, bytes | bytearray | memoryview) else data:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
