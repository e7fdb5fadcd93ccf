#!/usr/bin/env python3
"""Boot-to-ready time of `tpskit run`: process start to READY=1 on a notify socket, as systemd sees it.

A kit is provisioned in a temporary directory (folder camera with one generated page, mock GPIO, broker on a
closed loopback port unless --broker is given: READY must not wait for the network). Each run binds a unix
datagram socket, starts `python -m firmware.cli --config ... run` with NOTIFY_SOCKET and WATCHDOG_USEC set,
times READY=1 and the first WATCHDOG=1, then sends SIGTERM and times STOPPING=1 and the exit.

    .venv/bin/python scripts/bench_boot.py [--runs 5] [--broker mqtt://127.0.0.1:1883] [--no-camera] [--json]

--no-camera removes the folder camera's folder: the kit starts in its fault state (READY=1 with the fault as
STATUS, stored data still sent) instead of failing the start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_kit(root: Path, *, broker: str | None = None, model: Path | None = None) -> Path:
    """Provision a kit under *root* with a folder camera; returns the config path."""
    from firmware.provision import ProvisionRequest, provision
    from inference.synth import make_sample

    photos = root / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    (photos / "page1.jpg").write_bytes(make_sample(11, 1, condition="clean", scale=0.5).jpeg)
    (root / "pw").write_text("rahasia\n")
    if broker is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            broker = f"mqtt://127.0.0.1:{s.getsockname()[1]}"  # closed: nobody listens
    conf = root / "config.toml"
    provision(ProvisionRequest(kode_wilayah="31.71.01.1001", tps=5, broker=broker, username="kit5",
                               password_file=root / "pw", state_dir=root / "state"),
              config_out=conf, volatile_ok=True)
    conf.write_text(conf.read_text() + f'\n[camera]\nbackend = "folder"\nloop = true\nfolder = "{photos}"\n'
                    '\n[gpio]\npin_factory = "mock"\n')
    if model is not None:
        conf.write_text(conf.read_text().replace("[paths]\n", f'[paths]\nmodel = "{model}"\n'))
    return conf


def measure_boot(conf: Path, *, timeout_s: float = 120.0, watchdog_usec: int = 2_000_000) -> dict:
    """One start/stop of `tpskit run`; times in ms from process start. Raises RuntimeError on failure."""
    with tempfile.TemporaryDirectory(prefix="tpskit-notify-") as d:
        path = os.path.join(d, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(watchdog_usec),
               "PYTHONPATH": str(ROOT)}
        env.pop("WATCHDOG_PID", None)
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "firmware.cli", "--config", str(conf), "run"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=d)
        out: dict = {"messages": []}
        try:
            def wait_for(prefix: str, limit: float) -> float:
                deadline = time.monotonic() + limit
                while time.monotonic() < deadline:
                    if proc.poll() is not None:
                        err = proc.stderr.read().decode(errors="replace")[-800:] if proc.stderr else ""
                        raise RuntimeError(f"tpskit run exited {proc.returncode} before {prefix}: {err}")
                    sock.settimeout(0.2)
                    try:
                        msg = sock.recv(4096).decode()
                    except TimeoutError:
                        continue
                    out["messages"].append(msg)
                    if msg.startswith(prefix):
                        return (time.monotonic() - t0) * 1000
                raise RuntimeError(f"no {prefix} within {limit:.0f} s")

            out["ready_ms"] = round(wait_for("READY=1", timeout_s), 1)
            out["first_watchdog_ms"] = round(wait_for("WATCHDOG=1", watchdog_usec / 1e6 * 2), 1)
            t_term = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out["stopping_ms"] = round(wait_for("STOPPING=1", 30) - (t_term - t0) * 1000, 1)
            out["exit_code"] = proc.wait(30)
            out["exit_ms"] = round((time.monotonic() - t_term) * 1000, 1)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if proc.stderr:
                proc.stderr.close()
            sock.close()
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--broker", help="broker URL (default: a closed loopback port)")
    ap.add_argument("--model", type=Path, help="digit model .tflite (default: the shipped one)")
    ap.add_argument("--no-camera", action="store_true", help="no camera: time READY=1 in the fault state")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tpskit-bench-boot-") as d:
        conf = make_kit(Path(d), broker=args.broker, model=args.model)
        if args.no_camera:
            shutil.rmtree(Path(d) / "photos")
        runs = [measure_boot(conf) for _ in range(args.runs)]
    ready = [r["ready_ms"] for r in runs]
    status = next((m.split("STATUS=", 1)[1].split("\n")[0] for m in runs[-1]["messages"]
                   if m.startswith("READY=1") and "STATUS=" in m), "")
    summary = {"runs": len(runs), "ready_ms_first": ready[0], "ready_ms_median": statistics.median(ready),
               "ready_ms_min": min(ready), "ready_ms_max": max(ready),
               "stop_ms_median": statistics.median(r["exit_ms"] for r in runs),
               "exit_codes": sorted({r["exit_code"] for r in runs}), "status_at_ready": status,
               "machine": os.uname().machine,
               "python": sys.version.split()[0]}
    if args.json:
        print(json.dumps({"summary": summary, "runs": [{k: v for k, v in r.items() if k != "messages"}
                                                       for r in runs]}, indent=2))
    else:
        for i, r in enumerate(runs, 1):
            print(f"run {i}: READY=1 after {r['ready_ms']:.0f} ms, "
                  f"first WATCHDOG=1 {r['first_watchdog_ms']:.0f} ms, "
                  f"SIGTERM->exit {r['exit_ms']:.0f} ms (code {r['exit_code']})")
        s = summary
        print(f"boot-to-ready: median {s['ready_ms_median']:.0f} ms (first {s['ready_ms_first']:.0f}, "
              f"min {s['ready_ms_min']:.0f}, max {s['ready_ms_max']:.0f}) on {s['machine']}")
        print(f"status at READY=1: {s['status_at_ready']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
