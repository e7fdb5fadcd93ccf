"""`tpskit demo`: the whole kit on a laptop, end to end, with nothing faked.

1. renders filled C.HASIL pages for a few TPS (inference.synth, fixed seed; one TPS with a KPPS slip, one
   spoiled photo that the kit must refuse);
2. starts mosquitto on a free loopback port (or reuses ``--broker``) and the reference collector;
3. for each TPS runs the real daemon loop (firmware.app.Kit) with a folder camera and gpiozero's
   MockFactory, pressing the button once per photo;
4. the last TPS (of two or more) is a blank spot: its kit's broker URL is a loopback port where nothing
   listens, so its readings and photos stay in its outbox; a technician then runs ``tpskit export`` to a
   "USB stick" folder, ``tpskit import`` of that bundle at a "networked PC" (the collector stores it and
   signs its acks, written next to the bundle), and ``tpskit export`` again on the kit, which applies those
   acks (verified with the collector's ack public key, ``mqtt.collector_key_file``) and carries nothing;
5. prints what was read, what was flagged, and what the collector stored, and how each TPS got there;
   stops everything it started.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

SHOW_FIELDS = {1: ("dpt_jml", "pengguna_total_jml", "surat_diterima", "surat_digunakan"),
               2: ("paslon_1", "paslon_2", "paslon_3"),
               3: ("suara_sah", "suara_tidak_sah", "total_suara")}
CONDITIONS = ("clean", "field", "field", "hard")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tps", type=int, default=3, help="how many TPS to simulate (default 3)")
    parser.add_argument("--seed", type=int, default=2024, help="random seed of the generated pages")
    parser.add_argument("--scale", type=float, default=0.75, help="photo size relative to the 12 MP sensor")
    parser.add_argument("--broker", help="reuse this broker (mqtt://host:port) instead of starting mosquitto")
    parser.add_argument("--dir", type=Path, help="work directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (databases, photos)")
    parser.add_argument("--json", action="store_true", help="print one JSON summary at the end")


def _p(text: str = "") -> None:
    print(text, flush=True)


def render_pages(root: Path, *, n_tps: int, seed: int, scale: float) -> list[dict]:
    """Photos for each TPS in <root>/tpsN/camera; returns [{tps, kode_wilayah, folder, shots:[...]}]."""
    import numpy as np

    from inference import synth

    plan = []
    spoiled_tps = n_tps if n_tps > 1 else 1
    for t in range(1, n_tps + 1):
        rng = np.random.default_rng(seed + 1000 * t)
        slip = t == 2 or n_tps == 1
        numbers = synth.make_tps(rng, slip=slip)
        folder = root / f"tps{t}" / "camera"
        folder.mkdir(parents=True, exist_ok=True)
        shots = []
        for page in (1, 2, 3):
            if t == spoiled_tps and page == 2:  # the KPPS's hand is over the page: the kit must ask again
                bad = synth.make_sample(seed + 100 * t + page + 50, page, tps=numbers, spoiled="hand",
                                        scale=scale)
                shots.append({"file": _write(folder, len(shots), page, bad.jpeg, "spoiled-hand"),
                              "page": page, "spoiled": "hand", "written": None})
            cond = CONDITIONS[(t + page) % len(CONDITIONS)]
            s = synth.make_sample(seed + 100 * t + page, page, tps=numbers, condition=cond, scale=scale)
            shots.append({"file": _write(folder, len(shots), page, s.jpeg, cond), "page": page,
                          "spoiled": None, "written": s.written, "condition": cond})
            _p(f"  TPS {t} halaman {page}: {cond} photo rendered"
               + (" (with a KPPS arithmetic slip: " + numbers[2] + ")" if numbers[2] and page == 1 else ""))
        page1 = numbers[0][1]
        plan.append({"tps": t, "kode_wilayah": f"31.71.01.{1000 + t}", "folder": folder, "shots": shots,
                     "slip": numbers[2], "dpt": page1["dpt_l"] + page1["dpt_p"]})  # the registered DPT
    return plan


def _write(folder: Path, i: int, page: int, jpeg: bytes, tag: str) -> str:
    name = f"{i:02d}-halaman{page}-{tag}.jpg"
    (folder / name).write_bytes(jpeg)
    return name


def blank_spot_tps(n_tps: int) -> int | None:
    """The TPS without any signal: the last one, when there are two or more (with one TPS the demo shows
    the ordinary path, over MQTT, as before)."""
    return n_tps if n_tps >= 2 else None


def _kit_settings(root: Path, item: dict, broker_url: str, collector_key: Path | None = None) -> dict:
    tps = item["tps"]
    return {
        "kit": {"kit_id": f"demo-kit-{tps}", "kode_wilayah": item["kode_wilayah"], "tps": tps,
                "dpt": item.get("dpt")},  # provisioned: the reader compares page 1's DPT with it
        "paths": {"state_dir": str(root / f"tps{tps}" / "state"), "volatile_ok": True, "min_free_mb": 20},
        "camera": {"backend": "folder", "folder": str(item["folder"]), "timeout_s": 30},
        "gpio": {"pin_factory": "mock", "verdict_s": 1},
        "mqtt": {"url": broker_url, "heartbeat_s": 30, "backoff_max_s": 2.0,
                 "collector_key_file": str(collector_key) if collector_key else None},
    }


def _kit_config(root: Path, item: dict, broker_url: str):
    from firmware import config as config_mod

    return config_mod.parse(_kit_settings(root, item, broker_url))


def write_kit_config(root: Path, item: dict, broker_url: str, collector_key: Path) -> Path:
    """The kit's config file, <root>/tpsN/config.toml, as `tpskit provision` would leave it: the daemon
    loop and `tpskit export --config FILE` read the same file."""
    from firmware import tomlwrite

    path = root / f"tps{item['tps']}" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomlwrite.dumps(_kit_settings(root, item, broker_url, collector_key),
                                    header=f"tpskit demo: kit of TPS {item['tps']}"), encoding="utf-8")
    return path


class NoBroker:
    """A loopback port where no broker listens (the blank spot's "broker"): bound, never listening, so a
    connection is refused and no other program can take the port while the demo runs."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"mqtt://127.0.0.1:{self._sock.getsockname()[1]}"

    def stop(self) -> None:
        self._sock.close()


def _fields_text(reading: dict, page: int | None) -> str:
    fields = reading.get("fields") or {}
    parts = []
    for name in SHOW_FIELDS.get(page or 0, ()):
        f = fields.get(name) or {}
        value = f.get("value")
        parts.append(f"{name}={'?' if value is None else value}")
    return " ".join(parts)


def _compare(reading: dict, written: dict | None) -> str:
    if not written:
        return ""
    fields = reading.get("fields") or {}
    wrong = [k for k, v in written.items() if k in fields and v is not None and fields[k].get("value") != v]
    read = sum(1 for k, v in written.items() if k in fields and v is not None)
    if not read:
        return ""
    return f"{read - len(wrong)}/{read} numbers as written" + (f" (differs: {', '.join(wrong[:4])})"
                                                              if wrong else "")


def _wait_delivered(kit, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = kit._courier_status()
        if st and st.get("queued", 1) == 0 and st.get("sent", 1) == 0:
            return True
        time.sleep(0.2)
    return False


def _wait_pattern(kit, pattern: str, timeout: float) -> str | None:
    """The pattern the kit's LEDs show once they show *pattern* (or after *timeout*)."""
    indicator = getattr(getattr(kit, "panel", None), "indicator", None)
    deadline = time.monotonic() + timeout
    while indicator is not None and indicator.current != pattern and time.monotonic() < deadline:
        time.sleep(0.1)
    return getattr(indicator, "current", None)


def run_tps(item: dict, cfg, *, reader, summary: dict, blank_spot: bool = False) -> None:
    from comms.courier import Courier
    from firmware.app import build_kit
    from firmware.soak import SoakPresser

    tps = item["tps"]
    courier = Courier.from_config(cfg, signing_key=cfg.signing_key_path, ack_timeout_s=5.0,
                                  backoff_base_s=0.3)
    kit = build_kit(cfg, reader=reader, courier=courier, say=lambda _t: None)
    shots = iter(item["shots"])
    verdicts = []

    def on_verdict(v):
        shot = next(shots, {})
        page = (v.reading or {}).get("page") or shot.get("page")
        line = f"  TPS {tps} · press {len(verdicts) + 1} · {shot.get('file', '?')}: "
        if v.pattern == "error":
            line += f"ERROR — {v.message}"
        else:
            line += f"{v.pattern.upper():6s} halaman {page} · {_fields_text(v.reading, page)}"
            cmp = _compare(v.reading, shot.get("written"))
            if cmp:
                line += f" · {cmp}"
            if v.pattern != "ok":
                line += f"\n      → {v.message}"
        _p(line + f"  [{v.latency_ms:.0f} ms]")
        verdicts.append({"tps": tps, "file": shot.get("file"), "expected_page": shot.get("page"),
                         "spoiled": shot.get("spoiled"), "status": v.pattern, "page": page,
                         "reasons": (v.reading or {}).get("reasons", []), "latency_ms": round(v.latency_ms),
                         "capture_id": v.record.id if v.record else None,
                         "annotated": str(v.record.annotated_path) if v.record and v.record.annotated_path
                         else None, "page_reading": v.page_reading})

    kit.on_verdict.append(on_verdict)
    presser = SoakPresser(kit, interval_s=0.1, presses=len(item["shots"]), stop_kit_when_done=False)
    loop = threading.Thread(target=kit.run, name=f"kit-tps{tps}", daemon=True)
    loop.start()
    kit.started.wait(60)
    presser.start()
    presser._thread.join()
    waiting = None
    if blank_spot:  # nothing to wait for: the kit tells the KPPS its data is safe and not yet sent
        led = _wait_pattern(kit, "queued", timeout=cfg.gpio.verdict_s + 3)
        st = kit._courier_status()
        delivered = False
        waiting = {"messages": int(st.get("queued", 0)) + int(st.get("sent", 0)),
                   "acked_over_mqtt": int(st.get("acked", 0)), "bytes": int(st.get("bytes") or 0),
                   "connected": bool(st.get("connected")), "led": led, "last_error": st.get("last_error")}
        _p(f"  TPS {tps} · no signal ({cfg.mqtt.url}: nothing listens there): the kit kept working; "
           f"{waiting['messages']} signed messages (readings and photo chunks, "
           f"{waiting['bytes'] // 1024} kB) are stored in its outbox, waiting; LEDs show '{led}'"
           + (f" · courier: {waiting['last_error']}" if waiting["last_error"] else ""))
    else:
        delivered = _wait_delivered(kit, timeout=60)
    kit.stop("demo: TPS done")
    loop.join(30)
    kit.close()
    cross = None
    try:
        cross = cross_page([v["page_reading"] for v in verdicts
                            if v["page_reading"] is not None and v["status"] != "retake"])
        _p(f"  TPS {tps} cross-page check: {cross.get('status')}"
           + (f" — {json.dumps(cross.get('reasons'), ensure_ascii=False)}" if cross.get("reasons") else ""))
    except Exception as exc:  # noqa: BLE001 - reported, never invented
        _p(f"  TPS {tps} cross-page check not available: {exc}")
    for v in verdicts:
        v.pop("page_reading", None)
    summary["presses"].extend(verdicts)
    summary["tps"].append({"tps": tps, "kit_id": cfg.kit.kit_id, "slip": item["slip"], "delivered": delivered,
                           "blank_spot": blank_spot, "delivered_by": "mqtt" if delivered else None,
                           "waiting": waiting,
                           "cross_page": {k: cross.get(k) for k in ("form", "status", "reasons")} if cross
                           else None})


def tpskit(argv: list[str]) -> int:
    """Run a `tpskit` command in this process (firmware.cli.main, what the technician types) and show the
    command and everything it prints, indented."""
    from firmware.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(argv)
    _p(f"  $ tpskit {shlex.join(argv)}")
    for line in (out.getvalue() + err.getvalue()).splitlines():
        _p(f"    {line}")
    if rc:
        _p(f"    (exit code {rc})")
    return rc


def _outbox_counts(db: Path) -> dict:
    from comms.outbox import Outbox

    with Outbox(db) as ob:
        st = ob.stats()
    return {"unacked": st["queued"] + st["sent"], "acked": st["acked"]}


def _kit_readings(collector_db: Path, kit_id: str) -> int:
    conn = sqlite3.connect(collector_db)
    try:
        return conn.execute("SELECT COUNT(*) FROM readings WHERE kit_id = ?", (kit_id,)).fetchone()[0]
    finally:
        conn.close()


def usb_round_trip(root: Path, cfg, config_file: Path, *, broker_url: str, registry: Path,
                   collector_db: Path) -> dict:
    """The blank spot's answer, as a KPPS and a technician would do it, with the real commands:
    `tpskit export` on the kit to a USB stick, `tpskit import` of the bundle at a networked PC (the collector
    stores it; its signed acks are written next to the bundle), then `tpskit export` again on the kit, which
    applies those acks and has nothing left to carry."""
    from comms.bundle import SUFFIX, acks_path, read_manifest

    tps, kit_id = cfg.kit.tps, cfg.kit.kit_id
    stick = root / "usb-stick"
    stick.mkdir(exist_ok=True)
    out: dict = {"tps": tps, "kit_id": kit_id, "stick": str(stick),
                 "collector_readings_before": _kit_readings(collector_db, kit_id)}

    def bundles() -> set[Path]:
        return set(stick.glob(f"*{SUFFIX}"))

    _p(f"  TPS {tps}: the collector holds {out['collector_readings_before']} readings of {kit_id}. "
       f"At the TPS, a USB stick ({stick}) goes into the kit:")
    before = bundles()
    out["export_rc"] = tpskit(["--config", str(config_file), "export", str(stick)])
    made = sorted(bundles() - before)
    if out["export_rc"] or len(made) != 1:
        out["error"] = "the export wrote no bundle"
        return out
    bundle = made[0]
    out["bundle"] = bundle.name
    out["exported"] = read_manifest(bundle)["count"]
    _p("  at a PC with a network (kantor desa, PPK), the stick's bundle goes to the collector's broker:")
    out["import_rc"] = tpskit(["import", str(bundle), "--broker", broker_url, "--kits", str(registry)])
    acks = acks_path(bundle)
    out["acks_file"] = acks.name if acks.is_file() else None
    out["collector_readings_after"] = _kit_readings(collector_db, kit_id)
    _p(f"  back at the TPS, the stick (with {out['acks_file'] or 'no acks file'}) goes into the kit again:")
    counts = _outbox_counts(cfg.db_path)
    before = bundles()
    out["second_export_rc"] = tpskit(["--config", str(config_file), "export", str(stick)])
    made = sorted(bundles() - before)
    after = _outbox_counts(cfg.db_path)
    out["confirmed"] = after["acked"] - counts["acked"]
    # nothing left unconfirmed: the export writes no bundle
    out["second_export"] = read_manifest(made[0])["count"] if len(made) == 1 else (0 if not made else None)
    out["left_unacked"] = after["unacked"]
    out["delivered"] = (out["import_rc"] == 0 and out["second_export_rc"] == 0 and out["left_unacked"] == 0
                        and out["second_export"] == 0)
    _p(f"  TPS {tps}: {out['confirmed']} messages confirmed by the collector's signed acks, "
       + ("nothing left to carry" if out["delivered"] else f"{out['left_unacked']} still unconfirmed"))
    return out


def cross_page(pages: list[dict]) -> dict:
    """The cross-page check of one TPS's read pages, under the form they are read as (pages of different
    forms are ``review``, ``mixed_forms``)."""
    from inference.reader import check_tps_pages

    return check_tps_pages(pages)


def collector_report(db: Path) -> dict:
    conn = sqlite3.connect(db)
    out = {"readings": [], "photos": 0, "rejects": 0}
    for kit_id, tps, halaman, reading, seq in conn.execute(
            "SELECT kit_id, tps, halaman, reading, seq FROM readings ORDER BY kit_id, seq"):
        r = json.loads(reading)
        out["readings"].append({"kit_id": kit_id, "tps": tps, "halaman": halaman, "seq": seq,
                                "status": r.get("status"), "fields": _fields_text(r, halaman)})
    out["photos"] = conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
    out["rejects"] = conn.execute("SELECT COUNT(*) FROM rejects").fetchone()[0]
    conn.close()
    return out


def _bad_option(args: argparse.Namespace) -> str | None:
    """What is wrong with the options (checked before anything is rendered or started), or None."""
    if not 1 <= args.tps <= 999:
        return f"--tps {args.tps}: give 1 to 999 TPS"
    if not 0.1 <= args.scale <= 2.0:
        return f"--scale {args.scale}: give 0.1 to 2.0 (1.0 = the 12 MP sensor)"
    if args.dir and Path(args.dir).exists() and not Path(args.dir).is_dir():
        return f"--dir {args.dir} is a file: give a folder (created if missing) or leave --dir out"
    if args.broker:
        from firmware.provision import ProvisionError, validate_broker

        try:
            validate_broker(args.broker)
        except ProvisionError:
            return f"--broker {args.broker!r}: give mqtt://host:port"
    return None


def run(args: argparse.Namespace) -> int:
    import logging

    bad = _bad_option(args)
    if bad:
        print(f"tpskit demo: {bad}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="tpskit-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    summary: dict = {"dir": str(root), "presses": [], "tps": []}
    started: list = []
    try:
        _p(f"tpskit demo — work directory {root}")
        _p("[1/5] loading the page reader and digit model")
        try:
            from firmware.app import load_reader

            cfg0 = _kit_config(root, {"tps": 1, "kode_wilayah": "31.71.01.1001", "folder": root}, "mqtt://x:1")
            reader = load_reader(cfg0)
        except Exception as exc:  # noqa: BLE001 - missing module or model: say so, never fake a reading
            _p(f"  the page reader cannot be loaded ({type(exc).__name__}: {exc});")
            _p("  nothing can be read, so the demo stops here.")
            return 1
        _p(f"[2/5] rendering filled C.HASIL pages for {args.tps} TPS (seed {args.seed})")
        plan = render_pages(root, n_tps=args.tps, seed=args.seed, scale=args.scale)
        _p("[3/5] broker and reference collector")
        from comms.cmd_collector import ack_public_key_path, write_ack_public_key
        from comms.collector import Collector
        from comms.signing import load_or_create_private_key, registry_add
        from firmware import config as config_mod

        if args.broker:
            url = args.broker
            _p(f"  reusing broker {url}")
        else:
            from firmware.demo_broker import LocalBroker

            (root / "broker").mkdir(exist_ok=True)
            broker = LocalBroker(workdir=root / "broker").start()
            started.append(broker)
            url = broker.url
            _p(f"  mosquitto started on {url}")
        registry = root / "collector" / "kits.json"
        registry.parent.mkdir(exist_ok=True)
        # the collector signs its acks (as `tpskit collector --ack-key FILE` does); every kit has the public
        # half (`tpskit provision --collector-key FILE.pub`) and takes only acks it verifies, over MQTT and
        # from a USB stick
        ack_key_file = root / "collector" / "ack.key"
        ack_key = load_or_create_private_key(ack_key_file)
        said = io.StringIO()
        with redirect_stdout(said), redirect_stderr(said):
            write_ack_public_key(ack_key_file, ack_key)
        for line in said.getvalue().splitlines():
            _p(f"  {line}")
        blank = blank_spot_tps(args.tps)
        if blank is not None:
            no_broker = NoBroker()
            started.append(no_broker)
            _p(f"  TPS {blank} is a blank spot: its kit's broker is {no_broker.url}, where nothing listens")
        configs, config_files = {}, {}
        ack_public = ack_public_key_path(ack_key_file)
        for item in plan:
            kit_url = no_broker.url if item["tps"] == blank else url
            config_files[item["tps"]] = write_kit_config(root, item, kit_url, ack_public)
            cfg = config_mod.load(config_files[item["tps"]])
            cfg.paths.state_dir.mkdir(parents=True, exist_ok=True)
            key = load_or_create_private_key(cfg.signing_key_path)
            registry_add(registry, cfg.kit.kit_id, key, kode_wilayah=cfg.kit.kode_wilayah, tps=cfg.kit.tps)
            configs[item["tps"]] = cfg
        collector_db = root / "collector" / "collector.db"
        collector = Collector(broker_url=url, db_path=collector_db, registry=registry,
                              ack_key=ack_key).start()
        started.append(collector)
        if not collector.connected.wait(10):
            _p("  the collector could not connect to the broker")
            return 1
        _p(f"  collector running, database {collector_db}")
        _p("[4/5] pressing the button of each kit once per photo (same daemon loop as `tpskit run`)")
        for item in plan:
            run_tps(item, configs[item["tps"]], reader=reader, summary=summary,
                    blank_spot=item["tps"] == blank)
        time.sleep(1.0)
        if blank is not None:
            _p(f"[5/5] no signal at TPS {blank}: the data goes by USB stick (tpskit export / tpskit import)")
            usb = usb_round_trip(root, configs[blank], config_files[blank], broker_url=url, registry=registry,
                                 collector_db=collector_db)
            summary["usb"] = usb
            for t in summary["tps"]:
                if t["tps"] == blank and usb.get("delivered"):
                    t["delivered_by"] = "usb"
        else:
            _p("[5/5] (one TPS: no blank spot; run with --tps 2 or more to see the USB stick path)")
        summary["collector"] = collector_report(collector_db)
        _print_summary(summary)
        from comms.signing import load_registry
        from firmware import results

        found = results.assess(load_registry(registry), results.pages_from_collector_db(collector_db))
        summary["results"] = results.to_json(found)
        _p("== TPS results as an operator sees them (tpskit fleet results) ==")
        for line in results.table(found).splitlines():
            _p(f"  {line}" if line else "")
        by_usb = [t["tps"] for t in summary["tps"] if t["delivered_by"] == "usb"]
        if by_usb:
            _p(f"  (TPS {', '.join(map(str, by_usb))}: no signal there; its pages came by USB stick)")
        if args.json:
            print(json.dumps(summary, ensure_ascii=False, default=str))
        return 0
    finally:
        for part in reversed(started):
            try:
                part.stop()
            except Exception:  # noqa: BLE001
                pass
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)
            _p("work directory removed (run with --keep to look at the photos and annotated pages)")
        elif args.keep:
            _p(f"kept: {root}")


def _print_summary(summary: dict) -> None:
    presses = summary["presses"]
    by = {s: sum(1 for p in presses if p["status"] == s) for s in ("ok", "review", "retake", "error")}
    _p("")
    _p("== What was read ==")
    _p(f"  {len(presses)} presses: {by['ok']} ok, {by['review']} need review, {by['retake']} retake, "
       f"{by['error']} errors")
    flagged = [p for p in presses if p["status"] != "ok"]
    _p("== What was flagged ==")
    for p in flagged:
        reasons = "; ".join(str(r.get("code", r)) if isinstance(r, dict) else str(r) for r in p["reasons"])
        _p(f"  TPS {p['tps']} {p['file']}: {p['status']} — {reasons or 'no reason given'}"
           + (f" (annotated: {p['annotated']})" if p.get("annotated") else ""))
    for t in summary["tps"]:
        if t["slip"]:
            _p(f"  TPS {t['tps']} had a KPPS slip ({t['slip']}); cross-page: "
               f"{(t['cross_page'] or {}).get('status', 'n/a')}")
    c = summary.get("collector", {})
    _p("== What the collector stored ==")
    _p(f"  {len(c.get('readings', []))} readings, {c.get('photos', 0)} complete photos, "
       f"{c.get('rejects', 0)} rejected messages")
    for r in c.get("readings", []):
        _p(f"  {r['kit_id']} TPS {r['tps']} halaman {r['halaman']} (seq {r['seq']}): "
           f"{r['status']} {r['fields']}")
    usb = summary.get("usb")
    if usb:
        _p(f"  TPS {usb['tps']} (blank spot, no signal) reached the collector by USB stick: "
           f"{usb.get('exported', 0)} messages exported, imported at a networked PC "
           f"({usb.get('collector_readings_after', 0)} readings stored), {usb.get('confirmed', 0)} confirmed "
           f"back on the kit by the collector's signed acks; "
           + ("nothing left to carry" if usb.get("delivered") else "NOT all delivered: see above"))
    undelivered = [t["tps"] for t in summary["tps"] if not t["delivered_by"]]
    if undelivered:
        _p(f"  not yet acknowledged by the collector: TPS {undelivered}", )
    sys.stdout.flush()
