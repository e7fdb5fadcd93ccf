"""`tpskit status` through the CLI entry point, on a real database."""

from __future__ import annotations

import json

from firmware import tomlwrite
from firmware.cli import main
from firmware.store import CaptureStore


def write_config(tmp_path, state):
    path = tmp_path / "config.toml"
    path.write_text(tomlwrite.dumps({"paths": {"state_dir": str(state), "volatile_ok": True}}))
    return path


def test_status_without_daemon_is_not_ready(tmp_path, capsys):
    state = tmp_path / "state"
    store = CaptureStore(state, volatile_ok=True)
    store.save(jpeg=b"\xff\xd8x\xff\xd9", status="ok", reading={"page": 2, "reasons": []}, taken_at=1.7e9,
               time_source="ntp")
    store.close()
    cfg = write_config(tmp_path, state)
    assert main(["--config", str(cfg), "status", "--json"]) == 1
    info = json.loads(capsys.readouterr().out)
    assert info["captures"]["total"] == 1 and info["captures"]["not_in_outbox"] == 1
    assert info["last_captures"][0]["halaman"] == 2
    assert info["ready"] is False and "daemon not running" in info["problems"]
    assert main(["--config", str(cfg), "status"]) == 1
    out = capsys.readouterr().out
    assert "Captures: 1" in out and "NOT READY" in out and "NOT IN OUTBOX" in out


def test_config_may_follow_the_command_name(tmp_path, capsys):
    """README: every command takes --config PATH; `tpskit status --config FILE` must not be refused."""
    cfg = write_config(tmp_path, tmp_path / "empty")
    assert main(["status", "--config", str(cfg), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["state_dir"] == str(tmp_path / "empty")
    bad = tmp_path / "bad.toml"
    bad.write_text("[camera]\nbackend = 'usb'\n")
    assert main(["run", "--config", str(bad)]) == 2
    assert main(["--config", str(cfg), "run", "-v", "--config", str(bad)]) == 2  # the later one wins
    assert "camera.backend" in capsys.readouterr().err


def test_status_with_bad_config_names_the_key(tmp_path, capsys):
    path = tmp_path / "config.toml"
    path.write_text("[paths]\nstate_dri = '/x'\n")
    assert main(["--config", str(path), "status"]) == 2
    assert "paths.state_dri" in capsys.readouterr().err


def test_status_before_first_run(tmp_path, capsys):
    cfg = write_config(tmp_path, tmp_path / "empty")
    assert main(["--config", str(cfg), "status", "--json"]) == 1
    info = json.loads(capsys.readouterr().out)
    assert "no database yet (the kit has not run)" in info["problems"]


def test_run_with_bad_config_exits_2(tmp_path, capsys):
    path = tmp_path / "config.toml"
    path.write_text("[camera]\nbackend = 'usb'\n")
    assert main(["--config", str(path), "run"]) == 2
    err = capsys.readouterr().err
    assert "camera.backend" in err and "'usb'" in err


def test_status_without_permission_says_so(tmp_path):
    """The state directory is 0700 for the tpskit user: `tpskit status` run by another user must say it
    cannot read it (and how to), not crash with a traceback or claim the kit never ran."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import pytest

    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run as another user")
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="tpskit-status-"))
    try:
        root.chmod(0o755)
        state = root / "state"
        store = CaptureStore(state, volatile_ok=True)
        store.save(jpeg=b"\xff\xd8x\xff\xd9", status="ok", reading={"page": 1, "reasons": []}, taken_at=1.7e9,
                   time_source="ntp")
        store.close()
        state.chmod(0o700)
        cfg = write_config(root, state)
        cfg.chmod(0o644)
        repo = Path(__file__).resolve().parent.parent
        res = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                              "-m", "firmware.cli", "--config", str(cfg), "status"],
                             capture_output=True, text=True, timeout=60, cwd="/",
                             env={**os.environ, "PYTHONPATH": str(repo)})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and "has not run" not in res.stdout
    assert "sudo tpskit status" in res.stderr, res.stderr


def _kit_db(state):
    from comms.outbox import Outbox

    store = CaptureStore(state, volatile_ok=True)
    store.save(jpeg=b"\xff\xd8x\xff\xd9", status="ok", reading={"page": 1, "reasons": []}, taken_at=1.7e9,
               time_source="ntp")
    store.close()
    with Outbox(state / "tpskit.db") as ob:
        ob.enqueue(msg_id="m1", kind="reading", topic="t", payload=b"{}")
    return sorted(p.name for p in state.iterdir())


def test_status_leaves_no_wal_files_behind(tmp_path, capsys):
    """`sudo tpskit status` on a stopped kit: a read-only SQLite open leaves tpskit.db-wal/-shm behind,
    owned by root, and the kit's service user then cannot write its own database ("attempt to write a
    readonly database") when it starts. The reading connection must leave the folder as it found it."""
    state = tmp_path / "state"
    before = _kit_db(state)
    assert "tpskit.db-wal" not in before and "tpskit.db-shm" not in before
    cfg = write_config(tmp_path, state)
    main(["--config", str(cfg), "status", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["captures"]["total"] == 1 and info["outbox"]
    assert sorted(p.name for p in state.iterdir()) == before


def test_status_reads_a_card_the_kernel_made_read_only(tmp_path):
    """A failing SD card remounted read-only: status still reads it (a read-only open, as it cannot write)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.readonly_fs import ReadOnlyView

    state = tmp_path / "state"
    before = _kit_db(state)
    cfg = write_config(tmp_path, state)
    repo = Path(__file__).resolve().parent.parent
    with ReadOnlyView(state) as view:
        argv = [sys.executable, "-m", "firmware.cli", "--config", str(cfg), "status", "--json"]
        res = subprocess.run(view.command(argv),
                             capture_output=True, text=True, timeout=60, cwd="/",
                             env={**os.environ, "PYTHONPATH": str(repo)})
    assert res.returncode == 1, res.stderr  # not ready: no daemon runs
    assert json.loads(res.stdout)["captures"]["total"] == 1
    assert sorted(p.name for p in state.iterdir()) == before


def test_status_on_a_card_read_only_everywhere_says_so_without_a_traceback(tmp_path):
    """A card remounted read-only holds / and /tmp too (Raspberry Pi OS keeps /tmp on the card): no folder
    takes the database copy a read-only WAL database is read from. status says what is wrong and what to
    do, exit 1, no traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.readonly_fs import ReadOnlyView

    state = tmp_path / "state"
    before = _kit_db(state)
    cfg = write_config(tmp_path, state)
    repo = Path(__file__).resolve().parent.parent
    script = ("import sys, tempfile; tempfile.tempdir = '/proc/no-such-folder'; "
              "from firmware.cli import main; sys.exit(main(sys.argv[1:]))")
    with ReadOnlyView(state) as view:
        argv = [sys.executable, "-c", script, "--config", str(cfg), "status"]
        res = subprocess.run(view.command(argv), capture_output=True, text=True, timeout=60, cwd="/",
                             env={**os.environ, "PYTHONPATH": str(repo)})
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert "cannot be read" in res.stderr and "read-only" in res.stderr
    assert sorted(p.name for p in state.iterdir()) == before


def test_a_damaged_status_file_is_a_daemon_that_is_not_running(tmp_path):
    from firmware.status_file import daemon_state, status_path

    for text in ("[1, 2]", '{"updated_at": "soon"}', "{not json", '{"updated_at": null}'):
        status_path(tmp_path).write_text(text)
        assert daemon_state(tmp_path)["running"] is False
