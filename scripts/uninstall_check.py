"""Before `install.sh --uninstall --purge` deletes the kit's state: would anything be lost?

Run by install.sh with the *installed* venv's python (before it removes the venv), so the kit's own code of
the installed version decides: the config is read with ``firmware.config.load``, the outbox's unacked
messages are counted with ``comms.outbox.Outbox.unacked_count`` and captures not yet handed to the outbox
with ``firmware.store.capture_counts``. Prints one line per finding, for the shell to read:

    state PATH    a state directory (system path, without --root)
    key PATH      the kit's private signing key (system path)
    held TEXT     something that would be lost (unacked messages, captures not in the outbox, photos)
    error TEXT    something that could not be read: not proof that it is empty
    broken TEXT   the check itself failed (the installed code is older than this script, or damaged)

Exit 0: nothing would be lost; 1: something would; 3: something could not be read (then nothing is known).
Reads only (the outbox connection is closed, so its -wal/-shm go away again); ``--fix-ownership`` (a live
run as root) gives the state back to the service user afterwards, as provision does after a root command.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path


def staged(root: str, path: Path) -> Path:
    """*path* under the staging root (install.sh --destdir), or itself."""
    return Path(root + str(path)) if root else path


def check_db(db: Path) -> tuple[list[str], list[str]]:
    """(held, errors) for one kit database."""
    from comms.outbox import Outbox, connect_reading
    from firmware.store import capture_counts

    held: list[str] = []
    if not db.is_file():
        return held, [f"{db}: not a file" if db.exists() else f"{db} missing beside its -wal/-shm files"]
    try:
        # a reading connection first: which tables there are (Outbox() would create its own in a foreign file)
        con = connect_reading(db)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            quick = con.execute("PRAGMA quick_check").fetchone()[0]
            unsubmitted = capture_counts(con)["unsubmitted"] if "captures" in tables and quick == "ok" else 0
        finally:
            con.close()
        if quick != "ok":
            return held, [f"{db}: database check failed ({quick})"]
        if "outbox" in tables:
            with Outbox(db) as ob:
                n = ob.unacked_count()
            if n:
                held.append(f"{n} pesan belum di-ack collector / messages the collector has not acked, "
                            f"in {db}")
        if unsubmitted:
            held.append(f"{unsubmitted} foto halaman belum masuk outbox / captures not yet in the outbox, "
                        f"in {db}")
    except (sqlite3.Error, OSError) as exc:
        return held, [f"{db}: cannot be read ({exc})"]
    return held, []


def _files(path: Path) -> int:
    """Files under *path*; an unreadable folder raises (os.walk and glob would skip it silently)."""
    def fail(exc: OSError) -> None:
        raise exc

    return sum(len(files) for _, _, files in os.walk(path, onerror=fail))


def check_state(state: Path) -> tuple[list[str], list[str]]:
    """(held, errors) for one state directory: its database, those provision archived, unrecorded photos."""
    held: list[str] = []
    errors: list[str] = []
    if not state.exists():
        return held, errors
    try:
        places = [state]
        if "archive" in os.listdir(state):
            places += sorted(state / "archive" / n for n in os.listdir(state / "archive"))
        for place in places:
            if not place.is_dir():
                continue
            if any(n.startswith("tpskit.db") for n in os.listdir(place)):
                h, e = check_db(place / "tpskit.db")
                held += h
                errors += e
            elif (place / "photos").is_dir():
                # without their database nothing tells whether these pages' readings were delivered
                n = sum(1 for _ in (place / "photos").glob("*.jpg"))
                if n:
                    errors.append(f"{n} foto halaman tanpa database / page photos with no database to tell "
                                  f"whether they were delivered, in {place / 'photos'}")
            uncommitted = place / "photos" / "uncommitted"
            n = _files(uncommitted) if uncommitted.is_dir() else 0
            if n:
                held.append(f"{n} foto yang tidak pernah tercatat / photos never recorded, in {uncommitted}")
    except OSError as exc:
        errors.append(f"{state}: cannot be read ({exc})")
    return held, errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="", help="staging directory (install.sh --destdir)")
    p.add_argument("--config", type=Path, default=Path("/etc/tpskit/config.toml"))
    p.add_argument("--default-state", type=Path, default=Path("/var/lib/tpskit"),
                   help="the unit's StateDirectory, checked whatever the config says")
    p.add_argument("--fix-ownership", action="store_true")
    args = p.parse_args(argv)
    root = args.root.rstrip("/")

    from firmware import config as config_mod

    states = [args.default_state]
    key: Path | None = args.default_state / "keys" / "kit.key"
    errors: list[str] = []
    if staged(root, args.config).exists():
        try:
            cfg = config_mod.load(staged(root, args.config))
        except config_mod.ConfigError as exc:
            errors.append(f"the config says where the kit's data is, and cannot be read: {exc}")
            key = None
        else:
            if cfg.paths.state_dir not in states:
                states.append(cfg.paths.state_dir)
            key = cfg.signing_key_path
    held: list[str] = []
    for state in states:
        print(f"state {state}")
        h, e = check_state(staged(root, state))
        held += h
        errors += e
    if key is not None:
        print(f"key {key}")
    if args.fix_ownership and not root:
        from firmware.provision import fix_state_ownership

        for state in states:
            fix_state_ownership(state)
    for line in held:
        print(f"held {line}")
    for line in errors:
        print(f"error {line}")
    return 3 if errors else 1 if held else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # an installed version that cannot answer: nothing is known
        print(f"broken {type(exc).__name__}: {exc}")
        sys.exit(3)
