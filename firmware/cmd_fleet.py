"""`tpskit fleet readiness`: operators see which kits are ready, not ready (why) or silent, per kabupaten;
`tpskit fleet results`: which TPS sent all three halaman, read and consistent, and which need a person."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from firmware.argtypes import at_least_zero, seconds

DEFAULT_MAX_AGE_HOURS = 24.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="fleet_command", required=True, metavar="SUBCOMMAND")
    r = sub.add_parser("readiness", help="kits by region: ready / not ready (why) / silent",
                       description="Kits by region: ready / not ready (why) / silent, with counts and "
                                   "% ready per kabupaten, as a table, CSV or JSON.")
    r.add_argument("--registry", help="collector registry of the kits that should report: a JSON or CSV "
                   "file, or a folder of <kit_id>.csv rows (provision --export)")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--broker", help="read the retained readiness and heartbeat messages from this broker "
                     "(mqtt[s]://host:port); a later heartbeat in fault makes a ready kit not ready")
    src.add_argument("--collector-db", help="read the latest readiness (and heartbeat) from a collector "
                     "database")
    r.add_argument("--username", help="broker username (operator account, read access to readiness and "
                   "heartbeat)")
    r.add_argument("--password-file", help="file with the broker password")
    r.add_argument("--ca-file", help="CA bundle of the broker")
    r.add_argument("--prefix", default="tpskit/v1", help="topic prefix (default tpskit/v1)")
    r.add_argument("--wait", type=seconds, default=5.0, help="seconds to collect retained messages (broker)")
    r.add_argument("--max-age-hours", type=at_least_zero, default=DEFAULT_MAX_AGE_HOURS,
                   help="a readiness older than this counts as not ready (default %(default)g: a running kit "
                        "reports every 6 h; 0 = no limit)")
    r.add_argument("--kabupaten", help="only this kabupaten/kota (NN.NN)")
    r.add_argument("--csv", metavar="FILE", help="also write one row per kit to FILE ('-' = stdout)")
    r.add_argument("--json", action="store_true", help="print JSON instead of the table")
    res = sub.add_parser("results",
                         help="TPS by region: complete and consistent / to check / incomplete / none",
                         description="Per TPS, from a collector database: all three halaman received, read "
                                     "and consistent (cross-page rules), or what is missing or must be "
                                     "checked; counts per kabupaten.")
    res.add_argument("--collector-db", required=True,
                     help="collector database (SQLite file or PostgreSQL URL)")
    res.add_argument("--registry",
                     help="collector registry (a JSON or CSV file, or a folder of <kit_id>.csv rows): its "
                          "TPS that sent nothing are listed too")
    res.add_argument("--kabupaten", help="only this kabupaten/kota (NN.NN)")
    res.add_argument("--since", metavar="WHEN",
                     help="only pages photographed from WHEN on, e.g. the polling day 2024-02-14 (00:00 "
                          "WIB) or 2024-02-14T07:00+08:00: practice pages of H-1 are left out (and counted "
                          "per TPS). A page's time is the kit's clock if it was synchronised, else when the "
                          "collector received it")
    res.add_argument("--csv", metavar="FILE", help="also write one row per TPS to FILE ('-' = stdout)")
    res.add_argument("--json", action="store_true", help="print JSON instead of the table")


def run(args: argparse.Namespace) -> int:
    if args.fleet_command == "results":
        return _results(args)
    from firmware import fleet

    if not args.broker and not args.collector_db:
        print("tpskit fleet readiness: pilih sumber: --broker URL atau --collector-db PATH", file=sys.stderr)
        return 2
    if args.kabupaten and not re.fullmatch(r"\d\d\.\d\d", args.kabupaten):  # as fleet results (else: no kit)
        print(f"tpskit fleet readiness: kabupaten {args.kabupaten!r}: tulis NN.NN, mis. 31.71 "
              "/ write it as NN.NN", file=sys.stderr)
        return 2
    registry = None
    try:
        if args.registry:
            from comms.signing import load_kit_registry

            registry = load_kit_registry(args.registry)
        if args.broker:
            password = None
            if args.password_file:
                from firmware.config import read_secret

                password = read_secret(args.password_file)
            observations = fleet.from_broker(args.broker, registry=registry, prefix=args.prefix,
                                             username=args.username, password=password, ca_file=args.ca_file,
                                             wait_s=args.wait)
        else:
            observations = fleet.from_collector_db(args.collector_db)
    except (OSError, ValueError, ConnectionError) as exc:
        print(f"tpskit fleet readiness: {exc}", file=sys.stderr)
        return 2
    max_age = args.max_age_hours * 3600 if args.max_age_hours else None
    states = fleet.assess(registry, observations, max_age_s=max_age)
    if args.kabupaten:
        states = [s for s in states if s.kabupaten == args.kabupaten]
    summary = fleet.summarize(states)
    if args.csv and not _write_csv(fleet.to_csv(states), args.csv, "readiness"):
        return 2
    if args.json:
        print(json.dumps(fleet.to_json(states, summary), indent=2, ensure_ascii=False))
    elif args.csv != "-":
        print(fleet.table(states, summary))
        if registry is None:
            print("(tanpa --registry: kit yang diam tidak bisa diketahui)")
    return 0


def _results(args: argparse.Namespace) -> int:
    from firmware import results

    try:
        registry = None
        if args.registry:
            from comms.signing import load_kit_registry

            registry = load_kit_registry(args.registry)
        since = results.parse_since(args.since) if args.since else None
        where = {"kabupaten": args.kabupaten, "since": since}
        pages = results.pages_from_collector_db(args.collector_db, **where)
        rejected = results.rejected_from_collector_db(args.collector_db, **where)
    except (OSError, ValueError, ConnectionError) as exc:
        print(f"tpskit fleet results: {exc}", file=sys.stderr)
        return 2
    found = results.assess(registry, pages, rejected=rejected)
    if args.kabupaten:
        found = [r for r in found if r.kabupaten == args.kabupaten]
    if args.csv and not _write_csv(results.to_csv(found), args.csv, "results"):
        return 2
    if args.json:
        print(json.dumps(results.to_json(found), indent=2, ensure_ascii=False))
    elif args.csv != "-":
        print(results.table(found))
        if registry is None:
            print("(tanpa --registry: TPS yang belum mengirim apa pun tidak bisa diketahui)")
    return 0


def _write_csv(text: str, target: str, command: str) -> bool:
    """Write a CSV report to ``target`` ('-' = stdout); False, having said why, if it cannot be written."""
    if target == "-":
        sys.stdout.write(text)
        return True
    try:
        Path(target).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"tpskit fleet {command}: file CSV {target} tidak bisa ditulis ({exc.strerror or exc}) "
              "/ cannot write the CSV file", file=sys.stderr)
        return False
    return True
