"""`tpskit status`: queue depth, last captures, readiness.

Reads the database (read-only) and the status file the daemon rewrites at least every 30 s.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

from comms.outbox import reading
from firmware.status_file import daemon_state
from firmware.store import capture_counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object for machines")
    parser.add_argument("-n", "--last", type=int, default=5, help="how many recent captures to list")


def collect(state_dir: Path, *, last: int = 5) -> dict:
    """Everything `tpskit status` shows, as a dict (the --json contract)."""
    db_path = state_dir / "tpskit.db"
    out: dict = {"state_dir": str(state_dir), "db": str(db_path), "daemon": daemon_state(state_dir)}
    problems: list[str] = []
    if not db_path.exists():
        problems.append("no database yet (the kit has not run)")
        out.update(captures=None, outbox=None, last_captures=[])
    else:
        with reading(db_path) as conn:
            _read_db(conn, out, problems, last=last)
    if not out["daemon"].get("running"):
        problems.append("daemon not running")
    elif not out["daemon"].get("ready"):
        faults = out["daemon"].get("faults")
        detail = "; ".join(f"{k}: {v}" for k, v in faults.items()) if isinstance(faults, dict) else ""
        problems.append(f"daemon {out['daemon'].get('state')}" + (f" ({detail})" if detail else ""))
    out["ready"] = not problems
    out["problems"] = problems
    return out


def _read_db(conn: sqlite3.Connection, out: dict, problems: list[str], *, last: int) -> None:
    """The captures, the outbox and the database check, into *out*; what is wrong into *problems*."""
    conn.row_factory = sqlite3.Row
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "captures" in tables:
        counts = capture_counts(conn)
        out["captures"] = {"total": counts["total"], "ok": counts["ok"], "review": counts["review"],
                           "retake": counts["retake"], "not_in_outbox": counts["unsubmitted"]}
        out["last_captures"] = [
            {"seq": r["seq"], "id": r["id"], "halaman": r["halaman"], "status": r["status"],
             "taken_at": r["taken_at"], "time_source": r["time_source"],
             "reasons": json.loads(r["reasons"] or "[]"),
             "in_outbox": r["submitted_at"] is not None}
            for r in conn.execute("SELECT * FROM captures ORDER BY seq DESC LIMIT ?", (last,))]
    else:
        out.update(captures=None, last_captures=[])
    if "outbox" in tables:
        states = dict(conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
        oldest = conn.execute("SELECT MIN(created_at) FROM outbox WHERE state != 'acked'").fetchone()[0]
        out["outbox"] = {"waiting": states.get("queued", 0) + states.get("sent", 0),
                         "queued": states.get("queued", 0), "sent": states.get("sent", 0),
                         "acked": states.get("acked", 0),
                         "oldest_waiting_age_s": round(time.time() - oldest, 1) if oldest else None}
    else:
        out["outbox"] = None
    integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
    out["db_ok"] = integrity == "ok"
    if integrity != "ok":
        problems.append(f"database check: {integrity}")


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def render(info: dict) -> str:
    d = info["daemon"]
    lines = []
    if d.get("kit_id"):
        lines.append(f"Kit {d['kit_id']}  TPS {d.get('tps')}  kode wilayah {d.get('kode_wilayah')}")
    running = f"running (pid {d.get('pid')}), {d.get('state')}, status {d.get('age_s')} s old"
    lines.append("Daemon:   " + (running if d.get("running") else "not running"))
    if d.get("last_message"):
        lines.append(f"          last message: {d['last_message']}")
    c = info.get("captures")
    if c:
        lines.append(f"Captures: {c['total']} (ok {c['ok']}, review {c['review']}, retake {c['retake']}); "
                     f"not yet in outbox: {c['not_in_outbox']}")
    o = info.get("outbox")
    if o:
        age = o["oldest_waiting_age_s"]
        lines.append(f"Outbox:   {o['waiting']} waiting (queued {o['queued']}, awaiting ack {o['sent']}), "
                     f"acked {o['acked']}" + (f", oldest waiting {age:.0f} s" if age is not None else ""))
    link = (d.get("courier") or {}).get("connected")
    if d.get("running") and link is not None:
        lines.append(f"Broker:   {'connected' if link else 'NOT connected'}")
    if info.get("last_captures"):
        lines.append("Last captures:")
        for r in info["last_captures"]:
            unsent = "" if r["in_outbox"] or r["status"] == "retake" else "  NOT IN OUTBOX"
            lines.append(f"  #{r['seq']:<5} halaman {r['halaman'] or '?'}  {r['status']:<7} "
                         f"{_when(r['taken_at'])} ({r['time_source']}){unsent}")
    lines.append("Readiness: " + ("READY" if info["ready"] else "NOT READY: " + "; ".join(info["problems"])))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from firmware import config as config_mod

    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(f"tpskit status: {exc}", file=sys.stderr)
        return 2
    try:
        info = collect(cfg.paths.state_dir, last=args.last)
    except sqlite3.Error as exc:
        print(f"tpskit status: database {cfg.db_path} cannot be read: {exc}", file=sys.stderr)
        return 1
    except PermissionError as exc:  # the state directory is the daemon's (0700, user tpskit)
        print(f"tpskit status: no permission to read {exc.filename or cfg.paths.state_dir}: "
              "run 'sudo tpskit status'", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, ensure_ascii=False, default=str))
    else:
        print(render(info))
    return 0 if info["ready"] else 1
