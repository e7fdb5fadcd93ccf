#!/usr/bin/env python3
"""Soak bench: ≥ 500 simulated presses through the real daemon (`tpskit run --soak --mock-gpio`).

The daemon runs as its own process (so its memory is measured alone) with a folder camera looping over
generated C.HASIL photos, the real page reader, the real courier sending to a local mosquitto, and the
reference collector in this process. Reports press → verdict latency (median, p99), the daemon's peak RSS
(target ≤ 150 MB) and RSS growth over the run (after warm-up).

    .venv/bin/python scripts/bench_soak.py --presses 500 [--interval 0] [--no-send] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LINE = re.compile(r"^\[soak\]\s+(\w+)\s+([\d.]+) ms")


def render_photos(folder: Path, *, pages: int, seed: int, scale: float) -> list[str]:
    import numpy as np

    from inference import synth

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    numbers = synth.make_tps(np.random.default_rng(seed), slip=False)
    for i in range(pages):
        page = 1 + i % 3
        if i == pages - 1 and pages > 3:
            s = synth.make_sample(seed + i, page, tps=numbers, spoiled="blurred", scale=scale)
        else:
            s = synth.make_sample(seed + i, page, tps=numbers, condition=("clean", "field", "hard")[i % 3],
                                  scale=scale)
        name = f"{i:02d}-halaman{page}.jpg"
        (folder / name).write_bytes(s.jpeg)
        names.append(name)
    return names


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS = VmHWM) of *pid* in MB."""
    cur = peak = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return cur, peak


def slope_mb_per_100(samples: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS over presses, in MB per 100 presses."""
    if len(samples) < 3:
        return 0.0
    xs = [s[0] for s in samples]
    ys = [s[1] for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presses", type=int, default=500)
    ap.add_argument("--interval", type=float, default=0.0, help="s from a verdict to the next press")
    ap.add_argument("--pages", type=int, default=7, help="distinct photos the folder camera loops over")
    ap.add_argument("--scale", type=float, default=0.75, help="photo size relative to the 12 MP sensor")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-send", action="store_true", help="no broker/courier (store only)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from comms.signing import load_or_create_private_key, registry_add
    from firmware import tomlwrite

    work = Path(tempfile.mkdtemp(prefix="tpskit-soak-"))
    state = work / "state"
    state.mkdir()
    started = []
    try:
        print(f"rendering {args.pages} photos (scale {args.scale}) in {work}", file=sys.stderr)
        render_photos(work / "camera", pages=args.pages, seed=args.seed, scale=args.scale)
        url = "mqtt://127.0.0.1:1"
        collector_db = work / "collector.db"
        cfg = {
            "kit": {"kit_id": "soak-kit", "kode_wilayah": "31.71.01.1001", "tps": 1},
            "paths": {"state_dir": str(state), "volatile_ok": True, "min_free_mb": 100},
            "camera": {"backend": "folder", "folder": str(work / "camera"), "loop": True, "timeout_s": 30},
            "gpio": {"pin_factory": "mock", "verdict_s": 5},
            "soak": {"enabled": True, "interval_s": args.interval, "presses": args.presses},
        }
        if not args.no_send:
            from comms.collector import Collector
            from firmware.demo_broker import LocalBroker

            broker = LocalBroker(workdir=work).start()
            started.append(broker)
            url = broker.url
            key = load_or_create_private_key(state / "keys" / "kit.key")
            registry_add(work / "kits.json", "soak-kit", key, kode_wilayah="31.71.01.1001", tps=1)
            collector = Collector(broker_url=url, db_path=collector_db, registry=work / "kits.json").start()
            started.append(collector)
            collector.connected.wait(10)
        cfg["mqtt"] = {"url": url, "heartbeat_s": 60}
        (work / "config.toml").write_text(tomlwrite.dumps(cfg))

        cmd = [sys.executable, "-m", "firmware.cli", "--config", str(work / "config.toml"), "run", "--soak"]
        if args.no_send:
            cmd.append("--no-send")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env=env)
        latencies: list[float] = []
        patterns: dict[str, int] = {}
        samples: list[tuple[int, float]] = []
        peak = 0.0
        stop = threading.Event()

        def sampler():
            nonlocal peak
            while not stop.is_set():
                cur, hwm = rss_mb(proc.pid)
                if cur:
                    samples.append((len(latencies), cur))
                    peak = max(peak, hwm, cur)
                stop.wait(0.25)

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        for line in proc.stdout:
            m = LINE.match(line.strip())
            if m:
                patterns[m.group(1)] = patterns.get(m.group(1), 0) + 1
                latencies.append(float(m.group(2)))
                if len(latencies) % 50 == 0:
                    rss = samples[-1][1] if samples else 0
                    print(f"  {len(latencies)}/{args.presses} presses, RSS {rss:.0f} MB", file=sys.stderr)
        rc = proc.wait()
        stop.set()
        th.join()
        elapsed = time.monotonic() - t0
        lat = sorted(latencies)
        idle = [r for n, r in samples if n == 0]
        warm = [s for s in samples if s[0] >= max(10, args.presses // 10)]
        first = [r for n, r in warm if n < args.presses * 0.3]
        last = [r for n, r in warm if n >= args.presses * 0.8]
        growth = (statistics.median(last) - statistics.median(first)) if first and last else None
        delivered = None
        if not args.no_send:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                conn = sqlite3.connect(collector_db)
                delivered = conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
                conn.close()
                expected = patterns.get("ok", 0) + patterns.get("review", 0)
                if delivered >= expected:
                    break
                time.sleep(0.5)
        conn = sqlite3.connect(state / "tpskit.db")
        stored = conn.execute("SELECT COUNT(*) FROM captures").fetchone()[0]
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        conn.close()
        result = {
            "presses": len(latencies), "exit_code": rc, "elapsed_s": round(elapsed, 1), "verdicts": patterns,
            "latency_ms": {"median": round(statistics.median(lat), 1) if lat else None,
                           "p99": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None,
                           "max": round(lat[-1], 1) if lat else None},
            "rss_mb": {"peak": round(peak, 1), "target": 150,
                       "before_first_press": round(idle[-1], 1) if idle else None,
                       "growth_first30_to_last20": round(growth, 1) if growth is not None else None,
                       "slope_per_100_presses": round(slope_mb_per_100(warm), 2)},
            "captures_stored": stored, "db_integrity": integrity, "collector_readings": delivered,
            "photo_scale": args.scale, "send": not args.no_send,
        }
        if args.json:
            print(json.dumps(result))
        else:
            print(f"soak: {result['presses']} presses in {result['elapsed_s']} s (exit {rc}); "
                  f"verdicts {patterns}")
            print(f"press→verdict latency: median {result['latency_ms']['median']} ms, "
                  f"p99 {result['latency_ms']['p99']} ms, max {result['latency_ms']['max']} ms")
            print(f"daemon RSS: {result['rss_mb']['before_first_press']} MB when ready, "
                  f"peak {result['rss_mb']['peak']} MB (target ≤ 150 MB); growth after warm-up "
                  f"{result['rss_mb']['growth_first30_to_last20']} MB, slope "
                  f"{result['rss_mb']['slope_per_100_presses']} MB/100 presses")
            print(f"stored {stored} captures (integrity {integrity}); collector holds {delivered} readings")
        return 0 if rc == 0 and len(latencies) >= args.presses else 1
    finally:
        for part in reversed(started):
            try:
                part.stop()
            except Exception:  # noqa: BLE001
                pass
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
