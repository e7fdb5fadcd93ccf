"""USB bundles for blank spots: export every unacked signed message to one file, publish it elsewhere.

Bundle file (``tpskit-<kit_id>-<UTC time>.tpsbundle``), JSON Lines, UTF-8:

- line 1, the manifest, signed by the kit key: ``{"v": 1, "kind": "bundle", "kit_id", "kode_wilayah", "tps",
  "created_at", "count", "public_key": "<base64>", "messages": [["<id>", "<sha256 of payload>"], ...],
  "sig"}``
- then one line per message, in delivery order: ``{"id", "topic", "retain", "payload"}`` where ``payload`` is
  the exact signed message text (each message also carries its own signature).

The export streams (one read transaction, a few rows at a time: bounded memory on a Pi Zero 2 W) and
changes nothing in the outbox: rows become ``acked`` only when the collector's acks reach the kit
(when it next connects it resends them; the collector answers duplicates with acks and stores nothing twice).

The import publishes the intact lines of a bundle (each addressed as its signed message says: a line's topic
and retain flag are not in the manifest's checksums, so they are checked against the message) and writes the
acks it hears next to it (``<bundle name>.acks``, ``write_acks``); ``tpskit export`` applies them to the
outbox first (``apply_acks``: only acks the kit's collector key verifies), so the stick carries the
collector's acks back to a kit that never connects.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from nacl.signing import VerifyKey

from comms import payloads, topics
from comms.durable import write_atomic
from comms.outbox import Outbox, WalSnapshot
from comms.signing import (
    KeyFileError,
    canonical_json,
    coerce_signing_key,
    load_public_key,
    public_key_b64,
    sign_document,
    verify_document,
)

SUFFIX = ".tpsbundle"


class BundleError(ValueError):
    """The bundle cannot be written or used; the message says what and what to do."""


@dataclass(frozen=True)
class BundleMessage:
    id: str
    topic: str
    retain: bool
    payload: bytes


def export_bundle(
    *,
    db_path: Path | str,
    out_dir: Path | str,
    signing_key,
    kit_id: str,
    kode_wilayah: str,
    tps: int,
    now: float | None = None,
) -> tuple[Path | None, int]:
    """Write all unacked messages of the outbox to one bundle file in *out_dir*; returns (path, count).

    With nothing unacked no file is written (path None): an empty bundle on the stick would only be carried
    and imported for nothing."""
    out_dir = _check_paths(db_path, out_dir)
    key = coerce_signing_key(signing_key)
    now = now if now is not None else time.time()
    name = f"tpskit-{kit_id}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}{SUFFIX}"
    with ExitStack() as stack:
        ob, listed = _open_unacked(Path(db_path), stack, scratch_dirs=[None, out_dir])
        if not listed:
            return None, 0
        manifest = sign_document(
            key,
            {
                "v": 1,
                "kind": "bundle",
                "kit_id": kit_id,
                "kode_wilayah": kode_wilayah,
                "tps": int(tps),
                "created_at": now,
                "count": len(listed),
                "public_key": public_key_b64(key),
                "messages": listed,
            },
        )
        try:
            path = _write_new(out_dir, name, chain([canonical_json(manifest)], _lines(ob, listed)))
        except sqlite3.Error as exc:
            raise _unreadable(Path(db_path), exc) from None
    return path, len(listed)


# where USB sticks are mounted: a folder below these that is not on a mounted stick is the SD card's own
STICK_ROOTS = (Path("/media"), Path("/mnt"), Path("/run/media"))


def _check_paths(db_path: Path | str, out_dir: Path | str) -> Path:
    """*out_dir* as a Path; a BundleError unless it is a folder (on a mounted stick, when it is below
    ``STICK_ROOTS``) and the kit database exists."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BundleError(
            f"{out_dir} bukan folder / is not a folder: give the folder where the USB stick is mounted, e.g. "
            "/media/usb; nothing was exported"
        )
    if not out_dir.is_dir():
        raise BundleError(
            f"folder {out_dir} tidak ada / does not exist: plug in the USB stick, mount it (sudo mkdir -p "
            "/media/usb && sudo mount /dev/sda1 /media/usb) and give its mount point, e.g. /media/usb"
        )
    if not _on_a_mounted_stick(out_dir):
        raise BundleError(
            f"tidak ada USB stick terpasang di {out_dir} / no USB stick is mounted at {out_dir}: the folder "
            "is on the kit's own SD card, and a bundle written there would never leave the kit. Plug the "
            f"stick in and mount it (sudo mount /dev/sda1 {out_dir}), then export again; nothing was written"
        )
    if Path(db_path).is_dir():
        raise BundleError(f"kit database {db_path} is a folder: give the database file in it (tpskit.db); "
                          "nothing was exported")
    if not Path(db_path).is_file():
        raise BundleError(
            f"kit database {db_path} not found: give the kit's database (--db, default "
            "<state_dir>/tpskit.db from the config); nothing was exported"
        )
    return out_dir


def _on_a_mounted_stick(folder: Path) -> bool:
    """False for a folder below ``STICK_ROOTS`` whose nearest mount point is not a stick mounted there (the
    empty mount folder /media/usb when the stick is not plugged in or not mounted); True otherwise."""
    path = folder.resolve()
    root = next((r for r in STICK_ROOTS if path.is_relative_to(r)), None)
    if root is None:
        return True
    mount = path
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    return mount != root and mount.is_relative_to(root)


EXPORT_PAGE = 16  # outbox rows read at a time by an export (≈ 1.4 MB of photo chunks)


def _lines(ob: Outbox, listed: list[list[str]]) -> Iterator[bytes]:
    """The bundle's message lines, one row at a time, in the order of *listed* (same read transaction)."""
    rows = ob.unacked(page=EXPORT_PAGE)
    for (mid, sha), r in zip(listed, rows, strict=True):
        if r.id != mid or hashlib.sha256(r.payload).hexdigest() != sha:
            raise sqlite3.DatabaseError(f"message {mid} changed while it was exported")
        yield canonical_json(
            {"id": r.id, "topic": r.topic, "retain": r.retain, "payload": r.payload.decode("utf-8")}
        )


def _write_new(out_dir: Path, name: str, lines: Iterable[bytes], *, replace: bool = False) -> Path:
    """Write *lines* to a file *name* in *out_dir* (``comms.durable.write_atomic``); its path. A failed
    write leaves no file behind. Without *replace* an existing file is kept and the new one gets a free
    name (``_free_name``); with it, the file *name* is replaced in one rename."""
    path = out_dir / name if replace else _free_name(out_dir, name)
    try:
        write_atomic(path, (line + b"\n" for line in lines), mode=None)
    except OSError as exc:
        what = "the acks file" if replace else "the bundle"
        raise BundleError(
            f"cannot write {what} to {out_dir} ({exc.strerror or exc}): check the USB stick is "
            "writable and has free space"
        ) from None
    return path


def _free_name(out_dir: Path, name: str) -> Path:
    """*name* in *out_dir*, or with -2, -3, ... before the suffix when taken: an export never replaces a
    bundle already on the stick (same second, a clock restarted at the same time, another --db). On a FAT
    stick ``exists`` ignores case, as the stick does."""
    stem = name[: -len(SUFFIX)]
    path, n = out_dir / name, 1
    while path.exists():
        n += 1
        path = out_dir / f"{stem}-{n}{SUFFIX}"
    return path


def _open_unacked(
    db_path: Path, stack: ExitStack, *, scratch_dirs: list[Path | None]
) -> tuple[Outbox, list[list[str]]]:
    """The outbox in one read transaction (closed with *stack*) and its unacked messages' [id, sha256],
    read one page at a time; from a snapshot when the database cannot be opened for writing (a card the
    kernel remounted read-only after errors: exactly when the bundle is the rescue path)."""
    try:
        return _enter_and_list(stack, lambda s: Outbox(db_path))
    except (sqlite3.Error, OSError) as exc:
        first = exc
    try:
        return _enter_and_list(
            stack, lambda s: Outbox(s.enter_context(WalSnapshot(db_path, scratch_dirs=scratch_dirs)))
        )
    except (sqlite3.Error, OSError):
        raise _unreadable(db_path, first) from None


def _enter_and_list(stack: ExitStack, opener) -> tuple[Outbox, list[list[str]]]:
    """``opener(stack)``'s outbox, a read transaction on it, and its unacked [id, sha256]; on success what
    was opened moves to *stack*, on failure it is closed."""
    with ExitStack() as attempt:
        ob = attempt.enter_context(opener(attempt))
        attempt.enter_context(ob.snapshot())
        listed = [[r.id, hashlib.sha256(r.payload).hexdigest()] for r in ob.unacked(page=EXPORT_PAGE)]
        stack.push(attempt.pop_all())
        return ob, listed


def _unreadable(db_path: Path, exc: BaseException) -> BundleError:
    return BundleError(
        f"kit database {db_path} cannot be read ({exc}): nothing was exported; keep the SD card for a "
        "technician"
    )


def read_bundle(path: Path | str, *, public_key=None) -> tuple[dict, list[BundleMessage]]:
    """Read and check a whole bundle: manifest signature and every payload's SHA-256 (in memory: for
    large bundles use ``check_bundle`` then ``iter_bundle``).

    With *public_key* (the kit's key from the registry) the manifest must be signed by it; without, it is
    checked against the key it carries (catches damage, not forgery; the collector still verifies every
    message against its registry).
    """
    manifest = check_bundle(path, public_key=public_key)
    return manifest, list(iter_bundle(path, manifest))


def check_bundle(path: Path | str, *, public_key=None) -> dict:
    """Check a bundle as ``read_bundle`` does, one line at a time (bounded memory); its manifest. Strict:
    one damaged line is a BundleError (``import_bundle`` imports the intact lines of a damaged bundle)."""
    manifest = read_manifest(path, public_key=public_key)
    for _m in iter_bundle(path, manifest):
        pass
    return manifest


def read_manifest(path: Path | str, *, public_key=None) -> dict:
    """The bundle's signature-verified manifest (line 1 only: the message lines are checked when read).
    A damaged or unverifiable manifest is a BundleError: nothing in the bundle can be trusted then."""
    path = Path(path)
    with _open(path) as f:
        manifest = _manifest(path, f.readline(), public_key)
    _listed(path, manifest)
    return manifest


def _listed(path: Path, manifest: dict) -> list[tuple[str, str]]:
    """The manifest's [id, sha256] entries; a BundleError when its count disagrees."""
    listed = [tuple(m) for m in manifest["messages"]]
    if manifest.get("count") != len(listed):
        count = manifest.get("count")
        raise BundleError(f"{path}: manifest count {count}, {len(listed)} listed: {_TRUNCATED}")
    return listed


def iter_bundle(path: Path | str, manifest: dict) -> Iterator[BundleMessage]:
    """The messages of the bundle at *path*, one line at a time, each checked against *manifest* (from
    ``check_bundle``): a file changed since is a BundleError, raised when reached."""
    path = Path(path)
    listed = _listed(path, manifest)
    with _open(path) as f:
        f.readline()
        entries = (line for line in f if line.strip())
        for i, (mid, sha) in enumerate(listed):
            line = next(entries, None)
            if line is None:
                raise BundleError(f"{path}: {i} messages, the manifest lists {len(listed)}: {_TRUNCATED}")
            yield _message(path, mid, sha, line)
        if next(entries, None) is not None:
            raise BundleError(f"{path}: more messages than the {len(listed)} in its manifest: {_TRUNCATED}")


def iter_intact(path: Path | str, manifest: dict, damaged: list[str]) -> Iterator[BundleMessage]:
    """The intact messages of the bundle at *path*, in manifest order, one line at a time: each line whose
    id is listed in *manifest* (after the previous intact one) and whose payload matches its checksum. The
    ids of the others (a changed byte, a cut-off file, a lost line) are appended to *damaged*, in manifest
    order, as soon as known; lines the manifest does not list are ignored."""
    path = Path(path)
    listed = _listed(path, manifest)
    index = {mid: i for i, (mid, _sha) in enumerate(listed)}
    nxt = 0  # manifest index of the next message expected
    with _open(path) as f:
        f.readline()
        for line in f:
            try:
                mid = json.loads(line).get("id")
                i = index[mid] if mid in index else -1
            except (*_BAD_JSON, AttributeError, TypeError):
                continue
            if i < nxt:
                continue
            try:
                m = _message(path, mid, listed[i][1], line)
            except BundleError:
                continue
            damaged.extend(d for d, _sha in listed[nxt:i])
            nxt = i + 1
            yield m
    damaged.extend(d for d, _sha in listed[nxt:])


def _open(path: Path):
    try:
        return path.open("rb")
    except OSError as exc:
        raise BundleError(f"bundel {path} tidak bisa dibaca / cannot read bundle {path}: "
                          f"{exc.strerror or exc}; check the path (is the USB stick mounted?)") from None


def _message(path: Path, mid: str, sha: str, line: bytes) -> BundleMessage:
    """One message line, checked against its manifest entry (*mid*, *sha*)."""
    try:
        e = json.loads(line)
    except _BAD_JSON:
        raise BundleError(f"{path}: {_TRUNCATED}") from None
    if not (
        isinstance(e, dict)
        and isinstance(e.get("payload"), str)
        and isinstance(e.get("topic"), str)
        and isinstance(e.get("retain", False), bool)
    ):
        raise BundleError(f"{path}: message {mid} is damaged (not a bundle line); export it again")
    try:
        payload = e["payload"].encode("utf-8")
    except UnicodeEncodeError:
        payload = b""
    if e.get("id") != mid or hashlib.sha256(payload).hexdigest() != sha:
        raise BundleError(f"{path}: message {mid} is damaged (checksum mismatch); export it again")
    return BundleMessage(mid, e["topic"], e.get("retain", False), payload)


# what json.loads raises on a line that is not JSON: also RecursionError (a RuntimeError) on deeply nested
# brackets, which a garbled or crafted file on a stick can hold
_BAD_JSON = (json.JSONDecodeError, UnicodeDecodeError, RecursionError)

_TRUNCATED = (
    "file terpotong atau rusak / the file is truncated or damaged (the stick pulled while writing or "
    "copying?): copy it again, or export it again on the kit"
)


def _manifest(path: Path, line: bytes, public_key) -> dict:
    """The checked, signature-verified manifest (line 1) of the bundle at *path*."""
    try:
        manifest = json.loads(line)
    except _BAD_JSON:
        manifest = None
    if not _is_manifest(manifest):
        raise BundleError(f"{path} bukan bundel tpskit / is not a tpskit bundle v1 (its first line is not a "
                          "bundle manifest): give a .tpsbundle file written by 'tpskit export'")
    key = load_public_key(public_key) if isinstance(public_key, str | bytes) else public_key
    if key is None:
        try:
            key = load_public_key(manifest["public_key"])
        except KeyFileError:
            raise BundleError(f"{path} bukan bundel tpskit yang utuh / is not a tpskit bundle v1 (its "
                              "manifest's key is damaged): export it again on the kit") from None
    if not verify_document(key, manifest):
        raise BundleError(
            f"{path}: the manifest signature does not verify: the file was altered or comes from another kit"
        )
    return manifest


def _is_manifest(m) -> bool:
    """A v1 bundle manifest's shape (its signature is checked apart)."""
    return (
        isinstance(m, dict)
        and m.get("kind") == "bundle"
        and m.get("v") == 1
        and all(isinstance(m.get(f), str) for f in ("public_key", "kit_id", "kode_wilayah"))
        and isinstance(m.get("tps"), int)
        and not isinstance(m.get("tps"), bool)
        and isinstance(m.get("messages"), list)
        and all(isinstance(e, list) and len(e) == 2 for e in m["messages"])
    )


def import_bundle(
    path: Path | str,
    *,
    broker_url: str,
    username: str | None = None,
    password: str | None = None,
    ca_file=None,
    cert_file=None,
    key_file=None,
    public_key=None,
    wait_acks_s: float = 30.0,
    protocol: str = "mqtt5",
    topic_prefix: str = topics.DEFAULT_PREFIX,
) -> dict:
    """Publish the bundle's intact messages (QoS 1, in order) and wait up to *wait_acks_s* for the
    collector's acks.

    Returns {"messages", "published", "acked", "damaged", "acks_file", "acks_error"}: "damaged" lists the
    ids of the lines that were damaged or missing (not published: each message is signed on its own, so the
    intact ones still count; the kit keeps the others); the collector's acks are written next to the bundle
    (``write_acks``: "acks_file", or None; "acks_error" when it cannot be written), for ``tpskit export``
    to mark them acked when the stick goes back to the kit. A damaged or unverifiable manifest, or an intact
    line addressed otherwise (another kit's topic, another kind's, a changed retain flag), refuses the whole
    bundle before anything is published. The collector stores each message once, however often the bundle
    is imported.
    """
    from comms.courier import make_mqtt_client, parse_broker_url

    manifest = read_manifest(path, public_key=public_key)
    own = _own_topics(manifest, topic_prefix)
    expected = _check_topics(path, manifest, own, topic_prefix)  # whole file, before anything is published
    host, port, tls = parse_broker_url(broker_url)
    ids = {m[0] for m in manifest["messages"]}
    acked: set[str] = set()
    raw_acks: list[bytes] = []  # the ack payloads as received
    lock = threading.Lock()
    answered, lost = threading.Event(), threading.Event()
    refusal: list[str] = []  # the broker's reason when its CONNACK refuses us
    client = make_mqtt_client(
        client_id=f"tpskit-import-{manifest['kit_id']}-{os.getpid()}",
        protocol=protocol,
        tls=tls,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        username=username,
        password=password,
    )

    def on_connect(c, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            refusal.append(str(reason_code))
        answered.set()

    def on_message(c, userdata, msg):
        try:
            got = payloads.parse_ack(msg.payload)
        except payloads.MalformedMessage:
            return
        with lock:
            if any(i in ids for i in got):
                acked.update(i for i in got if i in ids)
                raw_acks.append(bytes(msg.payload))

    def on_disconnect(c, userdata, flags, reason_code, properties):
        lost.set()

    client.on_connect, client.on_message, client.on_disconnect = on_connect, on_message, on_disconnect
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise BundleError(
            f"cannot connect to {broker_url} ({exc}): is the broker running, the address right, the network "
            "up? run the import again when it is; the bundle is unchanged"
        ) from None
    client.loop_start()
    try:
        _check_connected(broker_url, answered, refusal)
        ack_topic = topics.topic(topic_prefix, manifest["kode_wilayah"], manifest["tps"], topics.ACK)
        client.subscribe(ack_topic, qos=1)
        time.sleep(0.2)
        damaged: list[str] = []
        published = _publish_all(client, _to_publish(path, manifest, own, damaged), lost)
        total = len(expected)
        if published < total and lost.is_set():
            raise BundleError(
                f"connection to {broker_url} lost after {published} of {total} messages (network, or a "
                "message over the broker's size limit: see its log): run the import again; the collector "
                "stores each message once"
            )
        deadline = time.monotonic() + wait_acks_s
        while time.monotonic() < deadline:
            with lock:
                if acked >= expected:
                    break
            time.sleep(0.1)
    finally:
        client.disconnect()
        client.loop_stop()
    written, error = None, None
    try:
        written = write_acks(path, manifest, raw_acks)
    except BundleError as exc:
        error = f"{exc}; the kit sends these messages again when it next connects, or in its next bundle"
    return {
        "messages": manifest["count"],
        "published": published,
        "acked": len(acked),
        "damaged": damaged,
        "acks_file": str(written) if written else None,
        "acks_error": error,
    }


def _to_publish(path, manifest: dict, own: set[str], damaged: list[str]) -> Iterator[BundleMessage]:
    """The intact messages to *own* topics (a line changed since ``_check_topics`` read it is damaged)."""
    for m in iter_intact(path, manifest, damaged):
        if m.topic in own:
            yield m
        else:
            damaged.append(m.id)


def _own_topics(manifest: dict, prefix: str) -> set[str]:
    kw, tps = manifest["kode_wilayah"], manifest["tps"]
    return {topics.topic(prefix, kw, tps, kind) for kind in topics.KIT_KINDS}


def _check_topics(path: Path | str, manifest: dict, own: set[str], prefix: str) -> set[str]:
    """Every intact message goes where its kit would publish it: a topic (*own*) of the manifest's own kit,
    never its ack topic, the topic of the message's own kind, retained only for a retained kind. An
    importer's broker account may publish for many kits, so a changed bundle must not speak for another TPS
    or for the collector; and the manifest signs each message's id and payload, not the line's topic and
    retain flag, so those are checked against the signed message itself (read line by line; damaged lines
    are skipped: they are not published). The ids of the intact messages."""
    intact: set[str] = set()
    for m in iter_intact(path, manifest, []):
        intact.add(m.id)
        if m.topic not in own:
            raise BundleError(
                f"{path}: message {m.id} goes to {m.topic!r}, not to a topic of kit {manifest['kit_id']} "
                f"({manifest['kode_wilayah']} TPS {manifest['tps']}, prefix {prefix!r}): the bundle was "
                "changed, or the kit uses another --prefix; nothing was imported"
            )
        problem = _misaddressed(m, manifest, prefix)
        if problem:
            raise BundleError(
                f"{path}: message {m.id} {problem}: the bundle was changed; nothing was imported"
            )
    return intact


def _misaddressed(m: BundleMessage, manifest: dict, prefix: str) -> str:
    """Why the line *m* is not how the manifest's kit publishes its signed message, or ""."""
    try:
        env = payloads.parse_wire(m.payload)
    except payloads.MalformedMessage as exc:
        return f"is not a tpskit message ({exc.reason})"
    owner = (env.kit_id, env.kode_wilayah, env.tps)
    if owner != (manifest["kit_id"], manifest["kode_wilayah"], manifest["tps"]):
        return "is a message of kit {} ({} TPS {}), not of this bundle's kit".format(*owner)
    if env.kind not in payloads.QUEUED_KINDS:
        return f"is a {env.kind} message, which a kit never queues"
    want = topics.topic(prefix, env.kode_wilayah, env.tps, env.kind)
    retain = env.kind in topics.RETAINED_KINDS
    if (m.topic, m.retain) != (want, retain):
        said = "retained" if m.retain else "not retained"
        return (f"is a {env.kind} message going to {m.topic!r} ({said}); the kit publishes it to {want!r} "
                f"({'retained' if retain else 'not retained'})")
    return ""


def _check_connected(broker_url: str, answered: threading.Event, refusal: list[str]) -> None:
    """Raise a BundleError unless the broker accepted the connection (CONNACK within 15 s)."""
    if not answered.wait(15):
        raise BundleError(
            f"broker {broker_url} did not answer the connection within 15 s (TLS? a proxy? the right port?)"
        )
    if refusal:
        raise BundleError(
            f"broker {broker_url} refused the connection ({refusal[0]}): check --username and "
            "--password-file (or the client certificate) and that this user may publish for the kit"
        )


PUBLISH_WINDOW = 32  # messages published and not yet PUBACKed at a time (≈ 2.7 MB of photo chunks)


def _publish_all(client, messages: Iterable[BundleMessage], lost: threading.Event) -> int:
    """Publish *messages* (QoS 1, in order), at most PUBLISH_WINDOW unacknowledged at a time; how many the
    broker PUBACKed (fewer when the connection is lost or the broker stalls)."""
    published, window = 0, []
    for m in chain(messages, [None]):
        if m is not None:
            window.append(client.publish(m.topic, m.payload, qos=1, retain=m.retain))
        if window and (m is None or len(window) >= PUBLISH_WINDOW):
            done = _wait_published(window, lost)
            published += done
            if done < len(window):
                break
            window = []
    return published


PUBLISH_STALL_S = 60.0  # the import gives up when no PUBACK has come for this long


def _wait_published(infos: list, lost: threading.Event, *, stall_s: float = PUBLISH_STALL_S) -> int:
    """How many of these publishes the broker PUBACKed, once all are, the connection is lost, or none
    came for *stall_s* seconds (one bound for the whole bundle, not one per message)."""
    def done() -> int:  # rc > 0: never queued (no connection); is_published() would raise
        return sum(1 for i in infos if i.rc <= 0 and i.is_published())

    last, deadline = -1, 0.0
    while not lost.is_set():
        n = done()
        if n == len(infos):
            return n
        if n > last:
            last, deadline = n, time.monotonic() + stall_s
        elif time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return done()


# --- acks files: the collector's acks carried back to a kit with no network ------------------------------

ACKS_SUFFIX = ".acks"
ACKS_LINE_MAX = 1 << 20  # longest line read from an acks file (an ack of 500 ids is ≈ 20 KB)
# largest acks file read (≈ 380 000 acked ids; a kit's whole outbox is far fewer): anything larger was not
# written by tpskit import, and checking it line by line would hold the export for minutes, all in memory
ACKS_FILE_MAX = 16 << 20


def acks_path(bundle: Path | str) -> Path:
    """The acks file of *bundle*: next to it, ``<bundle name>.acks``."""
    bundle = Path(bundle)
    return bundle.with_name(bundle.name + ACKS_SUFFIX)


def write_acks(bundle: Path | str, manifest: dict, acks: Iterable[bytes]) -> Path | None:
    """Write the collector's *acks* (raw signed ack payloads, as received) to the bundle's acks file, after
    those an earlier import of the bundle wrote there (each once); its path, or None when there is none.

    Line 1 ``{"v": 1, "kind": "acks", "bundle", "kit_id", "kode_wilayah", "tps", "written_at"}`` (not
    signed: the importer has no key; the kit trusts only acks its collector key verifies), then one ack
    payload per line. Written to a temp file, fsynced and renamed over the old one."""
    bundle = Path(bundle)
    path = acks_path(bundle)
    try:
        kept = [a for a in _acks_lines(path)[1] if _is_ack(a)] if path.exists() else []
    except (OSError, ValueError):  # unreadable or damaged: replaced by what this import got
        kept = []
    kept = list(dict.fromkeys(kept))
    known = set(kept)
    new = [a for a in dict.fromkeys(acks) if a not in known and _is_ack(a)]
    if not new:  # nothing to add: the file stays as it is
        return path if kept else None
    lines = kept + new
    header = {
        "v": 1,
        "kind": "acks",
        "bundle": bundle.name,
        "kit_id": manifest["kit_id"],
        "kode_wilayah": manifest["kode_wilayah"],
        "tps": manifest["tps"],
        "written_at": time.time(),
    }
    return _write_new(path.parent, path.name, [canonical_json(header), *lines], replace=True)


def _is_ack(payload: bytes) -> bool:
    """An ack payload that fits on one line of an acks file (its signature is the kit's to check)."""
    if b"\n" in payload or b"\r" in payload:
        return False
    try:
        payloads.parse_ack(payload)
    except payloads.MalformedMessage:
        return False
    return True


def _acks_lines(path: Path) -> tuple[dict | None, list[bytes]]:
    """The header (None when it is not an acks file v1) and the ack lines of the acks file at *path*; an
    OSError when it cannot be read, a ValueError when a line is longer than ACKS_LINE_MAX or the file than
    ACKS_FILE_MAX."""
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size > ACKS_FILE_MAX:
            raise ValueError(f"larger than {ACKS_FILE_MAX >> 20} MiB: not an acks file tpskit import wrote")
        try:
            header = json.loads(f.readline(ACKS_LINE_MAX))
        except _BAD_JSON:
            header = None
        if not (isinstance(header, dict) and header.get("kind") == "acks" and header.get("v") == 1):
            return None, []
        lines = []
        while line := f.readline(ACKS_LINE_MAX + 1):
            if len(line) > ACKS_LINE_MAX:
                raise ValueError(f"a line longer than {ACKS_LINE_MAX} bytes")
            if line.strip():
                lines.append(line.rstrip(b"\r\n"))
    return header, lines


def apply_acks(
    *,
    db_path: Path | str,
    folder: Path | str,
    kit_id: str,
    collector_keys: list | None,
    why_no_keys: str = "",
) -> dict:
    """Mark acked in the kit's outbox every id of the acks files (``*.acks``) in *folder* that one of
    *collector_keys* signed, exactly as the same acks received over MQTT would (``Outbox.record``).

    Returns {"files", "confirmed", "rejected", "problems"}: acks files read, messages newly marked acked,
    acks not accepted, and what to tell the user (a bad, foreign or malformed file is skipped, never fatal;
    without *collector_keys* every acks file is ignored: anyone can write a file on a stick, *why_no_keys*
    says why there is none). Acks only mark messages delivered; nothing is deleted. Files of other kits
    (their header's kit_id) are skipped. The database is opened only when there is an ack to record.
    """
    folder = _check_paths(db_path, folder)
    files = sorted(p for p in folder.glob(f"*{ACKS_SUFFIX}") if not p.name.startswith(".") and p.is_file())
    result: dict = {"files": len(files), "confirmed": 0, "rejected": 0, "problems": []}
    if not files:
        return result
    if not collector_keys:
        result["problems"].append(
            f"{len(files)} berkas acks di stick diabaikan / acks files on the stick ignored: "
            f"{why_no_keys or 'the kit has no collector key'} (mqtt.collector_key_file): without it anyone "
            "could write such a file; the messages stay unacked and are exported again"
        )
        result["rejected"] = len(files)
        return result
    keys = [k if isinstance(k, VerifyKey) else load_public_key(k) for k in collector_keys]
    ids: list[str] = []
    for path in files:
        try:
            header, lines = _acks_lines(path)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            result["problems"].append(f"{path.name}: cannot be read ({reason}); skipped")
            result["rejected"] += 1
            continue
        if header is None:
            result["problems"].append(f"{path.name}: not a tpskit acks file (damaged?); skipped")
            result["rejected"] += 1
            continue
        if header.get("kit_id") != kit_id:
            continue  # another kit's acks on a shared stick
        bad = 0
        for line in lines:
            try:
                ids.extend(payloads.parse_ack(line, keys=keys))
            except payloads.MalformedMessage:
                bad += 1
        if bad:
            result["problems"].append(
                f"{path.name}: {bad} of {len(lines)} acks not signed by the collector key of this kit, or "
                "damaged: ignored (those messages are exported again)"
            )
            result["rejected"] += bad
    if ids:
        try:
            with Outbox(db_path) as ob:
                result["confirmed"] = ob.record(acked=ids)
        except (sqlite3.Error, OSError) as exc:
            result["problems"].append(
                f"cannot record the collector's acks in the kit database {db_path} ({exc}): every unacked "
                "message is exported"
            )
    return result
