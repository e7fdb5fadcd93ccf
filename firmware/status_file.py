"""The running kit's status file, ``<state_dir>/status.json``: the daemon rewrites it at least every
``STATUS_EVERY_S``; `tpskit status` shows it and `tpskit provision` reads it to see whether the kit runs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

STATUS_NAME = "status.json"
STATUS_EVERY_S = 30.0
STALE_S = 3 * STATUS_EVERY_S  # older than this, the daemon that wrote it is taken as gone


def status_path(state_dir: Path | str) -> Path:
    return Path(state_dir) / STATUS_NAME


def write_status(state_dir: Path | str, status: dict) -> None:
    """Replace the status file (temp file, rename): a reader never sees half of it."""
    path = status_path(state_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def daemon_state(state_dir: Path | str) -> dict:
    """What the running daemon last wrote, and whether it is alive."""
    try:
        data = json.loads(status_path(state_dir).read_text(encoding="utf-8"))
        age = time.time() - float(data.get("updated_at", 0))
    except (OSError, ValueError, TypeError, AttributeError):  # none, damaged, or not the daemon's
        return {"running": False, "ready": False, "detail": "the daemon has not written a status yet"}
    running = _pid_alive(data.get("pid")) and data.get("state") not in ("stopping",) and age < STALE_S
    data.update(running=running, age_s=round(age, 1))
    data["ready"] = bool(running and data.get("ready"))
    return data


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
