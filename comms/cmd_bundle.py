"""`tpskit export DIR` (kit: unsent messages to a USB stick) and `tpskit import BUNDLE` (any networked PC)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _name(parser_or_args) -> str:
    prog = getattr(parser_or_args, "prog", None)
    if prog:
        return prog.split()[-1]
    return getattr(parser_or_args, "command", "export")


def add_arguments(p: argparse.ArgumentParser) -> None:
    if _name(p) == "import":
        p.add_argument("bundle", type=Path, help="bundle file written by 'tpskit export', or a folder of "
                       "them (a USB stick from several kits): each is imported in turn")
        p.add_argument("--broker", required=True, help="broker URL, mqtt://host:1883 or mqtts://host:8883")
        p.add_argument("--username", help="MQTT username allowed to publish for this kit")
        p.add_argument("--password-file", type=Path, help="file holding the MQTT password")
        p.add_argument("--ca-file", type=Path, help="CA bundle to verify the broker (mqtts)")
        p.add_argument("--cert-file", type=Path, help="client certificate (PEM)")
        p.add_argument("--key-file", type=Path, help="client certificate key (PEM)")
        p.add_argument(
            "--kits", type=Path, help="registry: require the manifest to be signed by the kit's key"
        )
        p.add_argument("--prefix", default="tpskit/v1", help="topic prefix (default tpskit/v1)")
        p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the collector's acks")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
    else:
        p.add_argument("dir", type=Path, help="folder to write the bundle into (the mounted USB stick)")
        p.add_argument("--db", type=Path, help="kit database (default <state_dir>/tpskit.db from the config)")
        p.add_argument("--json", action="store_true", help="print the result as JSON")


def _collector_keys(cfg) -> tuple[list, str]:
    """The collector public key of the kit's config (``mqtt.collector_key_file``), or why there is none."""
    from comms.courier import collector_keys

    try:
        keys = collector_keys(cfg)
    except (OSError, ValueError) as exc:
        return [], f"the collector key {cfg.mqtt.collector_key_file} cannot be read ({exc})"
    return keys, "" if keys else "the kit has no collector key"


def _export(args) -> int:
    """Apply the collector's acks found on the stick, then export what is still unacked."""
    from comms.bundle import BundleError, apply_acks, export_bundle
    from comms.signing import KeyFileError
    from firmware.config import ConfigError, load

    try:
        cfg = load(args.config)
        keys, why = _collector_keys(cfg)
        acks = apply_acks(
            db_path=args.db or cfg.db_path,
            folder=args.dir,
            kit_id=cfg.kit.kit_id,
            collector_keys=keys,
            why_no_keys=why,
        )
        for problem in acks["problems"]:
            print(f"tpskit export: {problem}", file=sys.stderr)
        path, n = export_bundle(
            db_path=args.db or cfg.db_path,
            out_dir=args.dir,
            signing_key=cfg.signing_key_path,
            kit_id=cfg.kit.kit_id,
            kode_wilayah=cfg.kit.kode_wilayah,
            tps=cfg.kit.tps,
        )
    except (BundleError, KeyFileError, ConfigError, OSError) as exc:
        print(f"tpskit export: GAGAL / FAILED: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "bundle": str(path) if path is not None else None,
                    "messages": n,
                    "acks_files": acks["files"],
                    "acks_confirmed": acks["confirmed"],
                    "acks_rejected": acks["rejected"],
                }
            )
        )
        return 0
    if acks["files"]:
        print(
            f"Dari stick: {acks['confirmed']} pesan dikonfirmasi collector / from the stick: "
            f"{acks['confirmed']} messages confirmed by the collector, now marked delivered "
            f"({acks['files']} acks files)."
        )
    if path is None:
        print(
            "Tidak ada yang perlu dibawa / nothing left to carry: the kit has no message the collector has "
            "not confirmed, so no bundle was written. Semua data sudah diterima collector."
        )
        return 0
    print(f"Bundel ditulis / bundle written: {path} ({n} pesan / messages).")
    print(
        "Bawa ke komputer yang punya jaringan / take it to a networked PC: "
        f"tpskit import {path.name} --broker URL"
    )
    print("Data di kit tetap disimpan sampai server mengonfirmasi / the kit keeps it until acked.")
    return 0


def _import(args) -> int:
    """One bundle, or every bundle of a folder in name order (each on its own; the worst exit code)."""
    from comms.bundle import SUFFIX

    if not args.bundle.is_dir():
        return _import_one(args, args.bundle)
    found = sorted(p for p in args.bundle.glob(f"*{SUFFIX}") if not p.name.startswith("."))
    if not found:
        print(f"tpskit import: GAGAL / FAILED: tidak ada berkas *{SUFFIX} di / no *{SUFFIX} file in "
              f"{args.bundle}: give the bundle file or the folder 'tpskit export' wrote it into",
              file=sys.stderr)
        return 2
    worst = 0
    for path in found:
        if not args.json:
            print(f"== {path.name}")
        worst = max(worst, _import_one(args, path))
    return worst


def _import_one(args, bundle: Path) -> int:
    from comms.bundle import BundleError, import_bundle
    from comms.signing import KeyFileError, load_registry

    try:
        public_key = None
        if args.kits:
            from comms.bundle import read_manifest

            manifest = read_manifest(bundle)  # damaged lines are reported by the import
            entry = load_registry(args.kits).get(manifest["kit_id"])
            if entry is None:
                raise BundleError(f"kit {manifest['kit_id']} is not in the registry {args.kits}")
            public_key = entry.public_key
        password = None
        if args.password_file:
            from firmware.config import read_secret

            password = read_secret(args.password_file)
        result = import_bundle(
            bundle,
            broker_url=args.broker,
            username=args.username,
            password=password,
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
            public_key=public_key,
            wait_acks_s=args.wait,
            topic_prefix=args.prefix,
        )
    except (BundleError, KeyFileError, ValueError, OSError) as exc:
        print(f"tpskit import: GAGAL / FAILED: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"bundle": str(bundle), **result}))
    else:
        print(
            f"{result['published']}/{result['messages']} pesan terkirim / published, "
            f"{result['acked']} dikonfirmasi collector / acked by the collector"
        )
        if result["acks_file"]:
            print(
                f"Konfirmasi di / the collector's acks are in: {result['acks_file']}: put the stick back "
                "into the kit and run 'tpskit export' there (it marks these messages delivered and carries "
                "only the rest)"
            )
    if result["acks_error"]:
        print(f"tpskit import: {result['acks_error']}", file=sys.stderr)
    damaged = result["damaged"]
    if damaged:
        print(_damaged_message(damaged), file=sys.stderr)
    intact = result["messages"] - len(damaged)
    if result["acked"] < intact:
        what = f"{intact} intact messages" if damaged else f"{intact} messages"
        print(
            f"tpskit import: BELUM SELESAI / NOT DONE: {result['acked']} of {what} "
            "confirmed by the collector (running? the kit in its registry? see its log and rejects); "
            "run the import again: nothing is stored twice, and the kit keeps its data until it is confirmed",
            file=sys.stderr,
        )
    return 1 if damaged or result["acked"] < result["messages"] else 0


def _damaged_message(damaged: list[str], *, shown: int = 10) -> str:
    more = f" (+{len(damaged) - shown} more)" if len(damaged) > shown else ""
    return (
        f"tpskit import: {len(damaged)} pesan rusak atau hilang di bundel, tidak dikirim / {len(damaged)} "
        f"messages damaged or missing in the bundle (checksum mismatch, or the file cut off: the stick "
        f"pulled while writing or copying?), not imported: {', '.join(damaged[:shown])}{more}. "
        "Ekspor lagi dari kit / export again from the kit: it still has them (the other messages were "
        "imported)"
    )


def run(args: argparse.Namespace) -> int:
    return _import(args) if _name(args) == "import" else _export(args)
