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
