"""`tpskit collector`: the reference collector (verify, store, ack), or register a kit's public key."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nacl.signing import SigningKey


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", help="broker URL, mqtt://host:1883 or mqtts://host:8883")
    p.add_argument(
        "--db",
        help="collector database: a SQLite file (created if missing) or a PostgreSQL URL "
        "postgresql://USER@HOST:PORT/DBNAME (password from ~/.pgpass, PGPASSFILE or ?passfile=FILE)",
    )
    p.add_argument(
        "--kits",
        type=Path,
        help="registry of kit public keys: JSON, CSV or a folder of <kit_id>.csv files "
        "(needed except with --gaps)",
    )
    p.add_argument("--username", help="collector MQTT username")
    p.add_argument("--password-file", type=Path, help="file holding the collector's MQTT password")
    p.add_argument("--ca-file", type=Path, help="CA bundle to verify the broker (mqtts)")
    p.add_argument("--cert-file", type=Path, help="client certificate (PEM)")
    p.add_argument("--key-file", type=Path, help="client certificate key (PEM)")
    p.add_argument("--prefix", default="tpskit/v1", help="topic prefix (default tpskit/v1)")
    p.add_argument(
        "--group",
        default="collectors",
        help="shared-subscription group; collectors in one group split the load; '' = no sharing",
    )
    p.add_argument(
        "--client-id",
        help="MQTT client id, stable and one per collector: the broker keeps its session while it restarts "
        "(without it: a generated id and a clean session)",
    )
    p.add_argument("--protocol", choices=("mqtt5", "mqtt311"), default="mqtt5",
                   help="MQTT version to the broker (mqtt5: shared subscriptions, so several collectors "
                        "split the load; mqtt311 for an older broker)")
    p.add_argument(
        "--ack-key",
        type=Path,
        help="collector key file (created if missing) that signs acks; its public key, written beside it as "
        "FILE.pub, goes to the kits (tpskit provision --collector-key FILE.pub → mqtt.collector_key_file)",
    )
    add = p.add_argument_group("register a kit instead of running (then exit)")
    add.add_argument("--add-kit", metavar="KIT_ID", help="add or replace this kit in --kits (JSON)")
    add.add_argument("--public-key", help="the kit's public key: base64, PEM, or @FILE")
    add.add_argument("--kode-wilayah", help="the kit's kode wilayah (optional, then enforced)")
    add.add_argument("--tps", type=int, help="the kit's TPS number (optional, then enforced)")
    p.add_argument(
        "--gaps", action="store_true", help="print missing sequence ranges per kit from --db and exit"
    )
    p.add_argument(
        "--print-acl",
        action="store_true",
        help="print mosquitto acl_file blocks for every registered kit (username = kit id) and exit",
    )


def _secret(path: Path | None) -> str | None:
    if path is None:
        return None
    from firmware.config import read_secret

    return read_secret(path)


def _open_store(args: argparse.Namespace, *, existing: bool = False):
    """The collector store named by --db, or None after printing why it cannot be used; with ``existing``
    (a report) only a collector database that is already there: opening another would create the tables."""
    from comms.collector_store import CollectorStore, StoreUnavailable, is_postgres, survives_path

    if is_postgres(args.db):
        try:
            from psycopg.conninfo import conninfo_to_dict

            if conninfo_to_dict(args.db).get("password"):
                print(
                    "tpskit collector: warning: --db holds a password (visible in ps and shell history); "
                    "put it in ~/.pgpass or a file given as ?passfile=FILE instead",
                    file=sys.stderr,
                )
        except Exception:  # noqa: BLE001 - CollectorStore reports a missing psycopg or a bad URL
            pass
        if not survives_path(args.db):
            print(
                "tpskit collector: write --db as postgresql://USER@HOST:PORT/DBNAME (with a host name and "
                "no '//' after it); for a Unix socket use ?host=/var/run/postgresql after the database name",
                file=sys.stderr,
            )
            return None
    elif "://" in args.db:  # postgres spelled wrong, or another database's URL: not a local file name
        print(f"tpskit collector: --db {args.db}: give a SQLite file or a postgresql://USER@HOST:PORT/DBNAME "
              "URL", file=sys.stderr)
        return None
    elif Path(args.db).is_dir():
        print(f"tpskit collector: --db {args.db} is a folder: give the database file in it, e.g. "
              f"{Path(args.db) / 'collector.db'}", file=sys.stderr)
        return None
    problem = _no_collector_db(args.db) if existing else None
    if problem:
        print(f"tpskit collector: {problem}", file=sys.stderr)
        return None
    import sqlite3

    try:
        return CollectorStore(args.db, prefix=args.prefix, reconnect_timeout_s=0)
    except (StoreUnavailable, OSError) as exc:
        print(f"tpskit collector: {exc}", file=sys.stderr)
        return None
    except sqlite3.Error as exc:
        print(f"tpskit collector: --db {args.db} cannot be used as the collector database ({exc}): give the "
              "collector's SQLite file (tpskit-collector.service: /var/lib/tpskit-collector/collector.db) or "
              "a new file name; nothing was changed", file=sys.stderr)
        return None


def _no_collector_db(db: str) -> str | None:
    """Why ``db`` is not a collector database to report on (read only: a report creates nothing), or None."""
    from comms.collector_store import StoreUnavailable, read_rows

    try:
        read_rows(db, "SELECT kit_id, epoch, seq FROM messages LIMIT 0")
    except (OSError, ValueError, StoreUnavailable) as exc:
        return str(exc)
    return None


def _checked_arguments(args: argparse.Namespace) -> tuple[dict, str | None, SigningKey | None]:
    """The registry, the MQTT password and the ack key (None if its file is still to be created), read
    without writing anything; KeyFileError, ValueError or OSError says which is wrong."""
    from comms.courier import make_mqtt_client, parse_broker_url
    from comms.signing import KeyFileError, load_kit_registry

    registry = load_kit_registry(args.kits)
    _host, _port, tls = parse_broker_url(args.broker)
    # the TLS files as the collector will load them (a client object only: nothing is connected)
    make_mqtt_client(client_id="tpskit-collector-check", protocol=args.protocol, tls=tls,
                     ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file)
    password = _secret(args.password_file)
    if args.ack_key and args.ack_key.suffix == ".pub":
        # its public half is a 32-byte base64 line too: it would load as a seed, and sign acks no kit takes
        raise KeyFileError(f"--ack-key {args.ack_key} is the public key the kits get: give the private key "
                           f"file beside it, {args.ack_key.with_suffix('')} (created if missing)")
    ack_key = _load_ack_key(args.ack_key) if args.ack_key and args.ack_key.exists() else None
    return registry, password, ack_key


def _load_ack_key(path: Path) -> SigningKey:
    """The collector's ack key; KeyFileError, saying what the file should be, for a file that is no key."""
    from comms.signing import KeyFileError, load_private_key

    try:
        return load_private_key(path)
    except KeyFileError:
        raise KeyFileError(f"--ack-key {path} is not a collector ack key (a base64 Ed25519 seed written by "
                           "'tpskit collector --ack-key'): give that file, or a new file name to create "
                           "one (then give its .pub to the kits again)") from None


def _create_ack_key(path: Path) -> SigningKey:
    """A new collector ack key in ``path``; its public key, for the kits, is printed."""
    from comms.signing import load_or_create_private_key, public_key_b64

    key = load_or_create_private_key(path)
    print(f"collector ack key created; public key for the kits: {public_key_b64(key)}")
    return key


def ack_public_key_path(ack_key: Path) -> Path:
    """Where the collector keeps its ack key's public half for the technicians: ``<ack key>.pub``."""
    return ack_key.with_name(ack_key.name + ".pub")


def write_ack_public_key(ack_key_path: Path, key: SigningKey) -> None:
    """``<ack key>.pub``, the file technicians give to ``tpskit provision --collector-key`` (kept current)."""
    from comms.durable import write_atomic
    from comms.signing import public_key_b64

    path = ack_public_key_path(ack_key_path)
    text = public_key_b64(key) + "\n"
    try:
        if not path.exists() or path.read_text(encoding="ascii") != text:
            write_atomic(path, text, mode=0o644)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"tpskit collector: cannot write {path} ({exc}); the public key for the kits is "
              f"{public_key_b64(key)}", file=sys.stderr)
        return
    print(f"collector ack public key for the kits (tpskit provision --collector-key): {path}")


def run(args: argparse.Namespace) -> int:
    from comms.signing import KeyFileError, load_kit_registry, registry_add

    if args.kits is None and not args.gaps:
        print("tpskit collector: --kits REGISTRY is needed (JSON, CSV or a folder of <kit_id>.csv files)",
              file=sys.stderr)
        return 2
    if args.add_kit:
        if not args.public_key:
            print("tpskit collector: --add-kit needs --public-key (base64, PEM or @FILE)", file=sys.stderr)
            return 2
        key = args.public_key
        try:
            if key.startswith("@"):
                key = Path(key[1:]).read_text(encoding="utf-8")
            registry_add(args.kits, args.add_kit, key, kode_wilayah=args.kode_wilayah, tps=args.tps)
        except (KeyFileError, OSError) as exc:
            print(f"tpskit collector: {exc}", file=sys.stderr)
            return 2
        print(f"kit {args.add_kit} registered in {args.kits}")
        return 0
    if args.print_acl:
        from comms.topics import acl_for_kit

        try:
            kits = load_kit_registry(args.kits)
        except KeyFileError as exc:
            print(f"tpskit collector: {exc}", file=sys.stderr)
            return 2
        for kit in kits.values():
            if kit.kode_wilayah and kit.tps:
                print(acl_for_kit(args.prefix, kit.kit_id, kit.kode_wilayah, kit.tps))
            else:
                print(f"# {kit.kit_id}: no kode_wilayah/tps in the registry, no ACL written", file=sys.stderr)
        return 0
    if args.gaps:
        if not args.db:
            print("tpskit collector: --gaps needs --db", file=sys.stderr)
            return 2
        store = _open_store(args, existing=True)
        if store is None:
            return 2
        try:
            print(json.dumps({k: store.gaps(k) for k in store.kit_ids()}))
        finally:
            store.close()
        return 0
    if not args.broker or not args.db:
        print("tpskit collector: --broker and --db are needed to run the collector", file=sys.stderr)
        return 2
    try:  # every argument before the database, which a first run creates: a typo leaves no empty database
        registry, password, ack_key = _checked_arguments(args)
    except (KeyFileError, ValueError, OSError) as exc:
        print(f"tpskit collector: {exc}", file=sys.stderr)
        return 2
    # Check the database before subscribing: a wrong URL or password is reported here, not in a thread.
    store = _open_store(args)
    if store is None:
        return 2
    store.close()
    from comms.collector import Collector

    try:
        if args.ack_key and ack_key is None:
            ack_key = _create_ack_key(args.ack_key)
        if ack_key is not None:
            write_ack_public_key(args.ack_key, ack_key)
        collector = Collector(
            broker_url=args.broker,
            db_path=args.db,
            registry=args.kits,
            username=args.username,
            password=password,
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
            topic_prefix=args.prefix,
            group=args.group or None,
            client_id=args.client_id,
            protocol=args.protocol,
            ack_key=ack_key,
        )
    except (KeyFileError, ValueError, OSError) as exc:
        print(f"tpskit collector: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tpskit").info(
        "collector: %d registered kits, broker %s, db %s", len(registry), args.broker, args.db
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    collector.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        collector.stop()
        logging.getLogger("tpskit").info("collector stopped: %s", dict(collector.stats))
    return 0
