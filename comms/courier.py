"""The Courier: the API the firmware uses to send readings, and the MQTT link that drains the outbox.

    courier = Courier(db_path=..., kit_id="kit-001", kode_wilayah="31.71.01.1001", tps=7,
                      signing_key=Path("/var/lib/tpskit/keys/kit.key"), broker_url="mqtts://broker:8883",
                      username="kit-001", password="...", ca_file=Path("ca.pem"))
    courier.start()
    courier.submit_reading(capture_id="c-0001", halaman=1, reading={...}, photo_jpeg=jpeg,
                           taken_at=time.time(), time_source="rtc")
    courier.status()   # {"connected": True, "queued": 0, "sent": 0, "acked": 12, ...}
    courier.stop(timeout=5)

``submit_reading`` returns once the signed messages are committed to the outbox (SQLite, synchronous=FULL);
the link thread publishes them (QoS 1) and marks them ``sent`` on PUBACK and ``acked`` only when the
collector's end-to-end ack arrives on ``<prefix>/<kw>/<tps>/ack``. paho's session lives in memory only:
every connection uses a fresh client with a clean start, and the outbox decides what to (re)send.
"""

from __future__ import annotations

import logging
import random
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from nacl.signing import VerifyKey

from comms import payloads, topics
from comms.outbox import PRIORITY_NUMBERS, PRIORITY_PHOTO, Outbox, Row
from comms.signing import canonical_json, coerce_signing_key, load_public_key

log = logging.getLogger("tpskit.comms.courier")


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) from mqtt://host[:port] or mqtts://host[:port]."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"broker url {url!r} must look like mqtt://host:1883 or mqtts://host:8883")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port
    except ValueError:  # not a number, or above 65535
        raise ValueError(f"broker url {url!r}: the port must be a number 1-65535 (usually 8883 for mqtts://, "
                         "1883 for mqtt://)") from None
    return parts.hostname, port or (8883 if tls else 1883), tls


def check_tls_files(ca_file=None, cert_file=None, key_file=None) -> None:
    """ValueError naming the file when a CA, client certificate or key file given for TLS is missing or
    is not a file (paho's own error names none of them)."""
    for what, path in (("CA", ca_file), ("client certificate", cert_file), ("client key", key_file)):
        if path and not Path(path).is_file():
            raise ValueError(f"{what} file {path} not found (or not a file): check the path")


def collector_keys(cfg) -> list[VerifyKey]:
    """The collectors' ack public keys named by the kit's config (``mqtt.collector_key_file``; none: []).
    Raises OSError (unreadable) or KeyFileError (not a public key)."""
    key_file = getattr(cfg.mqtt, "collector_key_file", None)
    if not key_file:
        return []
    return [load_public_key(Path(key_file).read_text(encoding="ascii"))]


class Backoff:
    """Exponential backoff with jitter: base·2^n capped at max, times a random factor in [0.5, 1]."""

    def __init__(self, *, base_s: float = 1.0, max_s: float = 120.0, rng: random.Random | None = None):
        self.base_s, self.max_s = base_s, max_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay = min(self.max_s, self.base_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return delay * self._rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0


def make_mqtt_client(
    *,
    client_id: str,
    protocol: str,
    tls: bool,
    ca_file=None,
    cert_file=None,
    key_file=None,
    username: str | None = None,
    password: str | None = None,
    manual_ack: bool = False,
    reconnect: bool = False,
    clean_session: bool = True,
):
    """A paho 2.x client (VERSION2 callbacks) with TLS verification and credentials set."""
    import paho.mqtt.client as mqtt

    proto = mqtt.MQTTv5 if protocol == "mqtt5" else mqtt.MQTTv311
    kwargs = {
        "callback_api_version": mqtt.CallbackAPIVersion.VERSION2,
        "client_id": client_id,
        "protocol": proto,
        "reconnect_on_failure": reconnect,
        "manual_ack": manual_ack,
    }
    if proto == mqtt.MQTTv311:
        kwargs["clean_session"] = clean_session
    client = mqtt.Client(**kwargs)
    if tls:
        check_tls_files(ca_file, cert_file, key_file)
        try:
            client.tls_set(
                ca_certs=str(ca_file) if ca_file else None,
                certfile=str(cert_file) if cert_file else None,
                keyfile=str(key_file) if key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except ssl.SSLError as exc:
            files = ", ".join(str(f) for f in (ca_file, cert_file, key_file) if f)
            raise ValueError(f"TLS files {files} cannot be used ({exc.reason or exc}): give PEM files "
                             "(the broker's CA, -----BEGIN CERTIFICATE-----; a client key that matches "
                             "its certificate)") from None
        client.tls_insecure_set(False)
    elif cert_file:
        raise ValueError("a client certificate needs an mqtts:// broker url")
    if username:
        client.username_pw_set(username, password)
    client.on_socket_open = _no_delay
    return client


def _no_delay(client, userdata, sock) -> None:
    """TCP_NODELAY on every (re)opened MQTT socket: a lone small message (the probe, an ack, a live
    reading) goes out at once instead of waiting up to ~40 ms on Nagle's algorithm and delayed ACKs."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a plain TCP/TLS socket (e.g. a websocket wrapper)
        pass


class Courier:
    """Signs, queues and delivers the kit's messages. All options are keyword-only plain values."""

    def __init__(
        self,
        *,
        db_path: Path | str,
        kit_id: str,
        kode_wilayah: str,
        tps: int,
        signing_key,
        broker_url: str = "mqtt://127.0.0.1:1883",
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | str | None = None,
        cert_file: Path | str | None = None,
        key_file: Path | str | None = None,
        topic_prefix: str = topics.DEFAULT_PREFIX,
        keepalive_s: int = 60,
        heartbeat_s: float = 300,
        chunk_bytes: int = 64_000,
        max_bytes: int = 2_000_000_000,
        retention_s: float = 30 * 86400,
        ack_timeout_s: float = 60.0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 120.0,
        max_inflight: int = 64,
        pack_max_bytes: int = 16_384,
        pack_max_count: int = 100,
        protocol: str = "mqtt5",
        client_id: str | None = None,
        heartbeat_info: Callable[[], dict] | None = None,
        collector_keys: list | None = None,
    ):
        if protocol not in ("mqtt5", "mqtt311"):
            raise ValueError(f"protocol {protocol!r}: use 'mqtt5' or 'mqtt311'")
        self.db_path = Path(db_path)
        self.kit_id, self.kode_wilayah, self.tps = kit_id, kode_wilayah, int(tps)
        self._key = coerce_signing_key(signing_key)
        self.broker_url = broker_url
        self._host, self._port, self._tls = parse_broker_url(broker_url)
        self._username, self._password = username, password
        self._ca_file, self._cert_file, self._key_file = ca_file, cert_file, key_file
        self.prefix = topic_prefix.strip("/")
        self.keepalive_s = int(keepalive_s)
        self.heartbeat_s = float(heartbeat_s)
        if not 1 <= int(chunk_bytes) <= payloads.MAX_CHUNK_BYTES:
            raise ValueError(
                f"chunk_bytes {chunk_bytes}: use 1 .. {payloads.MAX_CHUNK_BYTES} (as base64 in its signed "
                f"envelope a larger chunk is over the broker's message_size_limit "
                f"{payloads.BROKER_MESSAGE_LIMIT} and would be refused and resent for ever)"
            )
        self.chunk_bytes = int(chunk_bytes)
        self.ack_timeout_s = float(ack_timeout_s)
        self.max_inflight = int(max_inflight)
        # While a backlog drains, up to pack_max_count signed envelopes of one topic (≤ pack_max_bytes
        # together) travel in one MQTT message (a pack, docs/payloads.md); 0 sends every message alone.
        # A larger pack would be refused by the broker (message_size_limit) or whole by every collector,
        # and resent for ever: refuse it here.
        pack_limit = min(payloads.PACK_MAX_BYTES, payloads.BROKER_MESSAGE_LIMIT)
        if not 0 <= int(pack_max_bytes) <= pack_limit:
            raise ValueError(
                f"pack_max_bytes {pack_max_bytes}: use 0 (no packs) .. {pack_limit} (the broker's "
                "message_size_limit)"
            )
        if not 1 <= int(pack_max_count) <= payloads.PACK_MAX_COUNT:
            raise ValueError(f"pack_max_count {pack_max_count}: use 1 .. {payloads.PACK_MAX_COUNT}")
        self.pack_max_bytes, self.pack_max_count = int(pack_max_bytes), int(pack_max_count)
        self.protocol = protocol
        self.client_id = client_id or kit_id
        self._backoff = Backoff(base_s=backoff_base_s, max_s=backoff_max_s)
        self._max_bytes, self._retention_s = int(max_bytes), float(retention_s)
        self._outbox = Outbox(self.db_path, max_bytes=max_bytes, retention_s=retention_s)
        self._epoch = self._outbox.epoch
        self._heartbeat_info = heartbeat_info
        # Public keys of the collectors (base64/PEM/VerifyKey): when given, only acks they signed count.
        self._collector_keys = [
            k if isinstance(k, VerifyKey) else load_public_key(k) for k in collector_keys or []
        ]
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._work_gen = 0
        self._lock = threading.Lock()
        self._connected = False
        self._connected_at: float | None = None  # Unix time the current (or last) connection was accepted
        self._last_error: str | None = None
        self._last_ack_at: float | None = None
        self._started_at = time.time()
        self._kicked = False
        self._heartbeat_now = False
        self._counters = {"mqtt_messages": 0, "envelopes": 0}  # outbox rows published, and in how many

    @classmethod
    def from_config(cls, cfg, *, signing_key=None, password: str | None = None, **overrides) -> Courier:
        """Build from a firmware Config-like object (duck-typed: kit, paths, mqtt, outbox, signing)."""
        kw = dict(
            db_path=cfg.paths.state_dir / "tpskit.db",
            kit_id=cfg.kit.kit_id,
            kode_wilayah=cfg.kit.kode_wilayah,
            tps=cfg.kit.tps,
            signing_key=signing_key or cfg.signing.key_file or cfg.paths.state_dir / "keys" / "kit.key",
            broker_url=cfg.mqtt.url,
            username=cfg.mqtt.username,
            password=password,
            ca_file=cfg.mqtt.ca_file,
            cert_file=cfg.mqtt.cert_file,
            key_file=cfg.mqtt.key_file,
            topic_prefix=cfg.mqtt.topic_prefix,
            keepalive_s=cfg.mqtt.keepalive_s,
            heartbeat_s=cfg.mqtt.heartbeat_s,
            backoff_max_s=cfg.mqtt.backoff_max_s,
            chunk_bytes=cfg.outbox.chunk_bytes,
            max_bytes=cfg.outbox.max_bytes,
            retention_s=cfg.outbox.retention_days * 86400.0,
        )
        for name in ("ack_timeout_s", "max_inflight", "protocol", "pack_max_bytes", "pack_max_count"):
            if hasattr(cfg.mqtt, name):
                kw[name] = getattr(cfg.mqtt, name)
        keys = collector_keys(cfg)
        if keys:
            kw["collector_keys"] = keys
        kw.update(overrides)
        return cls(**kw)

    # --- topics ----------------------------------------------------------------------------------------

    def topic(self, kind: str) -> str:
        return topics.topic(self.prefix, self.kode_wilayah, self.tps, kind)

    def _build(
        self, *, kind: str, msg_id: str, seq: int | None, body: dict, now: float, epoch: int | None = None
    ) -> bytes:
        """Sign an envelope (a queued one, with a seq, always carries the epoch). A queued one larger than
        the broker or the collector takes raises ValueError: it would be refused (message_size_limit,
        too_large), never acked, and resent for ever."""
        payload = payloads.build(
            self._key,
            kind=kind,
            msg_id=msg_id,
            kit_id=self.kit_id,
            kode_wilayah=self.kode_wilayah,
            tps=self.tps,
            seq=seq,
            created_at=now,
            body=body,
            epoch=self._epoch if seq is not None else epoch,
        )
        limit = min(payloads.MAX_MESSAGE_BYTES, payloads.BROKER_MESSAGE_LIMIT)
        if seq is not None and len(payload) > limit:
            raise ValueError(
                f"{kind} message {msg_id} is {len(payload)} bytes, too large for the broker and the "
                f"collector (at most {limit}, message_size_limit): nothing queued; keep the reading compact"
            )
        return payload

    # --- API used by the firmware ----------------------------------------------------------------------

    def submit_reading(
        self,
        *,
        capture_id: str,
        halaman: int | None,
        reading: dict,
        photo_jpeg: bytes | None,
        taken_at: float,
        time_source: str,
    ) -> str:
        """Sign and queue the numbers of one page, then its photo chunks, in one transaction.

        Returns the reading's message id. Idempotent per capture_id: a second call changes nothing.
        Raises OutboxFull (nothing queued) or ValueError for bad input.
        """
        rid = payloads.reading_id(self.kit_id, capture_id)
        try:
            body = payloads.reading_body(
                capture_id=capture_id,
                halaman=halaman,
                reading=reading,
                taken_at=taken_at,
                time_source=time_source,
                photo=photo_jpeg,
                chunk_bytes=self.chunk_bytes,
            )
            canonical_json(body)  # numpy numbers, NaN, … are refused here, not inside the transaction
        except Exception as exc:
            raise ValueError(
                f"reading {capture_id!r} cannot be queued: {exc} (use plain JSON values: int, float, str)"
            ) from None
        chunks = (
            payloads.photo_chunk_bodies(
                capture_id=capture_id, halaman=halaman, photo=photo_jpeg, chunk_bytes=self.chunk_bytes
            )
            if photo_jpeg
            else []
        )
        now = time.time()
        with self._outbox.transaction() as b:
            if b.exists(rid):
                return rid
            seq = b.next_seq()
            payload = self._build(kind="reading", msg_id=rid, seq=seq, body=body, now=now)
            if len(payload) > payloads.READING_MAX_BYTES:
                log.warning(
                    "reading %s is %d bytes on the wire (target %d): keep the reading dict compact",
                    capture_id,
                    len(payload),
                    payloads.READING_MAX_BYTES,
                )
            b.add(
                msg_id=rid,
                seq=seq,
                kind="reading",
                topic=self.topic("reading"),
                payload=payload,
                priority=PRIORITY_NUMBERS,
                capture_id=capture_id,
                now=now,
            )
            for cb in chunks:
                cid = payloads.photo_chunk_id(self.kit_id, capture_id, cb["index"])
                cseq = b.next_seq()
                b.add(
                    msg_id=cid,
                    seq=cseq,
                    kind="photo",
                    topic=self.topic("photo"),
                    payload=self._build(kind="photo", msg_id=cid, seq=cseq, body=cb, now=now),
                    priority=PRIORITY_PHOTO,
                    capture_id=capture_id,
                    now=now,
                )
        self._poke()
        return rid

    def has_capture(self, capture_id: str) -> bool:
        """True if this capture is already in the outbox (for re-submitting after a restart)."""
        return self._outbox.has_capture(capture_id)

    def publish_retained(self, kind: str, body: dict) -> str:
        """Queue a signed, retained message (e.g. kind="readiness" after the H-1 selftest); returns its id."""
        if kind != "readiness":
            raise ValueError(f"retained kind {kind!r} is not supported; use 'readiness'")
        now = time.time()
        with self._outbox.transaction() as b:
            seq = b.next_seq()
            msg_id = f"{self.kit_id}:{kind}:{self._epoch}:{seq}"
            b.add(
                msg_id=msg_id,
                seq=seq,
                kind=kind,
                topic=self.topic(kind),
                retain=True,
                payload=self._build(kind=kind, msg_id=msg_id, seq=seq, body=dict(body), now=now),
                priority=PRIORITY_NUMBERS,
                now=now,
            )
        self._poke()
        return msg_id

    def heartbeat_info(self, func: Callable[[], dict] | None) -> None:
        """Set the callable that supplies battery, last capture, firmware/model versions for heartbeats."""
        self._heartbeat_info = func

    def heartbeat(self) -> None:
        """Send a heartbeat as soon as the link is up (besides the periodic ones)."""
        self._heartbeat_now = True
        self._wake.set()

    def kick(self) -> None:
        """Retry now: skip the current backoff wait and resend anything overdue."""
        self._backoff.reset()
        with self._lock:
            self._kicked = True
        self._poke()

    def status(self) -> dict:
        st = self._outbox.stats()
        with self._lock:
            return {
                "connected": self._connected,
                "connected_at": self._connected_at,
                "queued": st["queued"],
                "sent": st["sent"],
                "acked": st["acked"],
                "oldest_unsent_age_s": st["oldest_unsent_age_s"],
                "bytes": st["unacked_bytes"],
                "max_bytes": st["max_bytes"],
                "last_seq": st["last_seq"],
                "last_error": self._last_error,
                "last_ack_at": self._last_ack_at,
                "broker": self.broker_url,
            }

    def delivery_counters(self) -> dict:
        """Outbox messages published since start (``envelopes``) and the MQTT messages that carried them
        (``mqtt_messages``; fewer when packs were used). Resends count again."""
        with self._lock:
            return dict(self._counters)

    def unacked_count(self) -> int:
        """Messages still waiting for the collector's ack (counts the pending index only)."""
        return self._outbox.unacked_count()

    def all_acked(self) -> bool:
        """True when the collector has acked every queued message (one index probe: cheap to poll)."""
        return not self._outbox.has_unacked()

    def is_alive(self) -> bool:
        """True while the link thread runs (the kit's watchdog gate asks this before each ping)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> Courier:
        if self._thread and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tpskit-courier", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Say offline, flush state and disconnect; returns within about *timeout* seconds."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("courier link did not stop within %.1f s", timeout)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self._outbox.close()

    def __enter__(self) -> Courier:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the link thread -------------------------------------------------------------------------------

    def _poke(self) -> None:
        with self._lock:
            self._work_gen += 1
        self._wake.set()

    def _set_error(self, msg: str | None) -> None:
        with self._lock:
            self._last_error = msg
        if msg:
            log.warning("%s", msg)

    def _open_outbox(self) -> Outbox | None:
        """The link thread's own outbox connection, retried with backoff while the database cannot be opened
        (locked beyond the busy timeout, disk trouble): the thread and the kit's watchdog pings live on.
        None once the courier is stopped."""
        while not self._stop.is_set():
            try:
                # Delivery-state updates only: NORMAL sync (a lost update means a harmless resend).
                return Outbox(self.db_path, max_bytes=self._max_bytes, retention_s=self._retention_s,
                              synchronous="NORMAL")
            except Exception as exc:  # noqa: BLE001 - sqlite3/OSError: retry, never end the link thread
                log.exception("courier cannot open the outbox")
                self._set_error(f"courier cannot open the outbox {self.db_path}: {exc}")
                self._wake.wait(self._backoff.next())
                self._wake.clear()
        return None

    def _run(self) -> None:
        outbox = self._open_outbox()
        if outbox is None:
            return
        with self._lock:
            if self._last_error and self._last_error.startswith("courier cannot open the outbox"):
                self._last_error = None
        try:
            try:
                outbox.purge()
            except Exception:  # noqa: BLE001 - purge is housekeeping, never fatal
                log.exception("outbox purge failed")
            while not self._stop.is_set():
                try:
                    connected = _Session(self, outbox).run()
                except Exception as exc:  # noqa: BLE001 - the link must outlive any single failure
                    log.exception("courier session failed")
                    self._set_error(f"courier session failed: {exc}")
                    connected = False
                if self._stop.is_set():
                    break
                if connected:
                    self._backoff.reset()
                delay = self._backoff.next()
                log.info("reconnecting to %s in %.1f s", self.broker_url, delay)
                self._wake.wait(delay)
                self._wake.clear()
        finally:
            with self._lock:
                self._connected = False
            outbox.close()


def _oversize_error(msg_id: str, size: int) -> str:
    """What to say when a queued message (from an older config) is larger than the broker takes."""
    return (
        f"message {msg_id} is {size} bytes, over the broker's message_size_limit "
        f"{payloads.BROKER_MESSAGE_LIMIT} (comms/mosquitto/mosquitto.conf): the broker refuses it on every "
        "send (MQTT 5 drops the connection, MQTT 3.1.1 drops the message); raise message_size_limit on the "
        "broker so that it can pass"
    )


def _refusal_hint(reason_code, size: int) -> str:
    """What to check when the broker refuses a message with this PUBACK reason code."""
    if size > payloads.BROKER_MESSAGE_LIMIT:
        return f"over the broker's message_size_limit {payloads.BROKER_MESSAGE_LIMIT}: raise it on the broker"
    if getattr(reason_code, "value", None) == 0x87:  # not authorized
        return "check the kit's ACL"
    return "see the broker's log"


class _Session:
    """One MQTT connection: a fresh paho client, a pass over the outbox, flushes of sent/acked states."""

    FLUSH_INTERVAL_S = 0.1  # acks are recorded at least this often, and at once when nothing is in flight
    SENT_AFTER_S = 0.5  # a PUBACKed row is recorded 'sent' only if its collector ack has not come by then
    PROBE_FIRST_S = 1.0
    PROBE_TRIES = 4
    FLUSH_BATCH = 500

    def __init__(self, courier: Courier, outbox: Outbox):
        self.c = courier
        self.outbox = outbox
        self.inflight: dict[int, tuple[str, ...]] = {}  # mid -> ids of the rows in that MQTT message
        self.early: dict[int, object] = {}  # PUBACKs seen before publish() returned: mid -> reason code
        self.sizes: dict[int, int] = {}  # mid -> payload bytes of the messages in self.inflight
        self.disconnect_reason: object | None = None
        self.untracked: set[int] = set()  # mids of heartbeats and status messages awaiting their PUBACK
        self.cursor = {PRIORITY_NUMBERS: 0, PRIORITY_PHOTO: 0}
        self.exhausted = {PRIORITY_NUMBERS: False, PRIORITY_PHOTO: False}
        self.last_published: dict[str, float] = {}
        self.pending_sent: list[tuple[float, tuple[str, ...]]] = []  # (PUBACK time, ids), oldest first
        self.pending_acked: list[str] = []
        self.first_pending_at: float | None = None  # when the oldest unrecorded ack came
        self.connack: object | None = None
        self.connected = False
        self.work_gen = -1
        self.next_heartbeat = 0.0
        self.next_stale_check = time.monotonic() + courier.ack_timeout_s
        self.refused_at: float | None = None  # last PUBACK with a failure code (its rows stay queued)
        self.stale_interval = courier.ack_timeout_s
        self.next_purge = time.monotonic() + 3600
        self.started = time.time()
        self.session: int | None = None  # this connection's number, set in run()
        # Until the collector has acked something in this session, only one message (the probe) is out:
        # after a broker restart the collector may not have re-subscribed yet, and a full window would be
        # dropped and then arrive out of order.
        self.e2e_ok = False
        self.probe_out = False
        self.probe_at = 0.0
        self.probe_interval = min(self.PROBE_FIRST_S, courier.ack_timeout_s)
        self.probe_tries = 0

    # paho callbacks (run inside client.loop(), in this thread)
    def on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code
        self.connected = not reason_code.is_failure

    def on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected = False
        self.disconnect_reason = reason_code

    def on_publish(self, client, userdata, mid, reason_code, properties):
        ids = self.inflight.pop(mid, None)
        if ids is not None:
            self._puback(ids, reason_code, self.sizes.pop(mid, 0))
        elif mid in self.untracked:  # a heartbeat or status message: nothing to record
            self.untracked.discard(mid)
        else:
            self.early[mid] = reason_code

    def on_message(self, client, userdata, msg):
        try:
            ids = payloads.parse_ack(msg.payload, keys=self.c._collector_keys)
        except payloads.MalformedMessage as exc:
            self.c._set_error(f"ignored ack on {msg.topic}: {exc}")
            return
        self.pending_acked.extend(ids)
        if not self.e2e_ok:
            self.e2e_ok = True
            with self.c._lock:
                self.c._work_gen += 1
        for i in ids:
            self.last_published.pop(i, None)
        with self.c._lock:
            self.c._last_ack_at = time.time()
        self.stale_interval = self.c.ack_timeout_s
        self._note_pending()

    def _puback(self, ids: tuple[str, ...], reason_code, size: int) -> None:
        if getattr(reason_code, "is_failure", False):
            what = ids[0] if len(ids) == 1 else f"{ids[0]} (+{len(ids) - 1} packed with it)"
            self.c._set_error(f"broker refused message {what} ({size} bytes): {reason_code} "
                              f"({_refusal_hint(reason_code, size)})")
            self.refused_at = time.monotonic()  # sent again after the ack timeout, like rows without an ack
            return
        self.pending_sent.append((time.monotonic(), ids))

    def _note_pending(self) -> None:
        if self.first_pending_at is None:
            self.first_pending_at = time.monotonic()

    # --- the session --------------------------------------------------------------------------------

    def _status_payload(self, state: str, reason: str | None = None, *, now: float | None = None) -> bytes:
        """online and the last will (offline/lost) carry the session start as created_at; every status of
        this connection carries its session number and the epoch (the collector orders by them, since the
        clock may run behind after a power cut)."""
        body = {"state": state} if reason is None else {"state": state, "reason": reason}
        if self.session is not None:
            body["session"] = self.session
        now = self.started if now is None else now
        return self.c._build(
            kind="status",
            msg_id=f"{self.c.kit_id}:status:{time.time_ns()}",
            seq=None,
            body=body,
            now=now,
            epoch=self.c._epoch if self.session is not None else None,
        )

    def _next_session(self) -> int | None:
        """This connection's number (durable: the courier's synchronous=FULL outbox); None when the database
        cannot be written (a read-only card): the status then goes without one, ordered by the clock."""
        try:
            return self.c._outbox.next_session()
        except sqlite3.Error as exc:
            log.warning("no session number for the status (%s): the collector orders it by the clock", exc)
            return None

    def run(self) -> bool:
        """Connect and pump until disconnected or stopped; True if the broker accepted us."""
        import paho.mqtt.client as mqtt

        c = self.c
        try:
            client = make_mqtt_client(
                client_id=c.client_id,
                protocol=c.protocol,
                tls=c._tls,
                ca_file=c._ca_file,
                cert_file=c._cert_file,
                key_file=c._key_file,
                username=c._username,
                password=c._password,
            )
        except (ValueError, OSError, ssl.SSLError) as exc:
            c._set_error(f"cannot set up MQTT client: {exc}")
            return False
        client.max_inflight_messages_set(max(c.max_inflight, 1))
        client.on_connect, client.on_disconnect = self.on_connect, self.on_disconnect
        client.on_publish, client.on_message = self.on_publish, self.on_message
        self.session = self._next_session()
        client.will_set(c.topic("status"), self._status_payload("offline", "lost"), qos=1, retain=True)
        try:
            if c.protocol == "mqtt5":
                client.connect(c._host, c._port, keepalive=c.keepalive_s, clean_start=True)
            else:
                client.connect(c._host, c._port, keepalive=c.keepalive_s)
        except (OSError, ssl.SSLError) as exc:
            c._set_error(f"cannot connect to {c.broker_url}: {exc}")
            return False
        deadline = time.monotonic() + max(10.0, c.keepalive_s)
        while self.connack is None and time.monotonic() < deadline and not c._stop.is_set():
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                break
        if not self.connected:
            c._set_error(f"broker {c.broker_url} refused or dropped the connection: {self.connack}")
            self._close(client)
            return False
        c._set_error(None)
        with c._lock:
            c._connected = True
            c._connected_at = time.time()
        log.info("connected to %s", c.broker_url)
        try:
            client.subscribe(c.topic("ack"), qos=1)
            self._publish_control(client, c.topic("status"), self._status_payload("online"), retain=True)
            self._pump_loop(client)
        finally:
            with c._lock:
                c._connected = False
            self._flush(force=True)
        return True

    def _publish_control(self, client, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish a message the courier does not track (heartbeat, status): its PUBACK is dropped, never
        kept (paho reuses message ids after 65,535: a kept one would be taken for a later row's)."""
        import paho.mqtt.client as mqtt

        info = client.publish(topic, payload, qos=1, retain=retain)
        if self.early.pop(info.mid, None) is None and info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.untracked.add(info.mid)

    def _pump_loop(self, client) -> None:
        import paho.mqtt.client as mqtt

        c = self.c
        while True:
            if c._stop.is_set():
                self._goodbye(client)
                return
            busy = self._pump(client)
            timeout = 0.0 if busy else (0.01 if self.inflight else 0.2)
            if client.loop(timeout=timeout) != mqtt.MQTT_ERR_SUCCESS or not self.connected:
                log.warning(
                    "lost connection to %s (%s) with %d messages in flight, the largest %d bytes",
                    c.broker_url,
                    self.disconnect_reason,
                    len(self.inflight),
                    max(self.sizes.values(), default=0),
                )
                self._close(client)
                return
            self._flush(idle=not self.inflight)
            self._housekeeping(client)
            c._wake.clear()

    def _pump(self, client) -> bool:
        """Publish more rows while the in-flight window has room; True if something was published.

        Rows pending together (a backlog) go out packed, several per MQTT message (``_fits``); a row
        pending alone (a live reading) goes alone at once, as do the probe and retained messages.
        """
        c = self.c
        with c._lock:
            gen = c._work_gen
            kicked, c._kicked = c._kicked, False
        if gen != self.work_gen:
            self.work_gen = gen
            self.exhausted = {PRIORITY_NUMBERS: False, PRIORITY_PHOTO: False}
        if kicked:
            self._new_pass(only_overdue=True)
        free = c.max_inflight - len(self.inflight)
        per_message = c.pack_max_count if c.pack_max_bytes else 1
        if not self.e2e_ok:
            free = 0 if self.probe_out else min(free, 1)
            per_message = 1
        published = False
        now = time.monotonic()
        for prio in (PRIORITY_NUMBERS, PRIORITY_PHOTO):
            while free > 0 and not self.exhausted[prio]:
                limit = min(free * per_message, 500)  # the first pack goes out after a short read
                rows = self.outbox.pending(priority=prio, after_seq=self.cursor[prio], limit=limit)
                self.exhausted[prio] = len(rows) < limit
                group: list[Row] = []
                size = 0
                for row in rows:
                    last = self.last_published.get(row.id)
                    if self.e2e_ok and last is not None and now - last < c.ack_timeout_s:
                        self.cursor[prio] = row.seq  # published recently, still within its ack time
                        continue
                    if group and not self._fits(group, size, row, per_message):
                        self._send(client, group, now)
                        published, free, group, size = True, free - 1, [], 0
                        if free == 0:
                            self.exhausted[prio] = False  # this row and the rest wait for room
                            break
                    group.append(row)
                    size += len(row.payload)
                    self.cursor[prio] = row.seq
                if group:
                    self._send(client, group, now)
                    published, free = True, free - 1
            if not self.exhausted[prio]:
                return published  # numbers first: no photo chunk while numbers wait
        return published

    def _fits(self, group: list[Row], size: int, row: Row, per_message: int) -> bool:
        """May *row* join the pack being built? Same topic, not retained, within the count and bytes."""
        first = group[0]
        return (
            len(group) < per_message
            and row.topic == first.topic
            and not row.retain
            and not first.retain
            and size + len(row.payload) + payloads.pack_overhead(len(group) + 1) <= self.c.pack_max_bytes
        )

    def _send(self, client, group: list[Row], now: float) -> None:
        """Publish one row alone, or several as a pack; track the MQTT message until its PUBACK."""
        import paho.mqtt.client as mqtt

        first = group[0]
        payload = first.payload if len(group) == 1 else payloads.pack([r.payload for r in group])
        info = client.publish(first.topic, payload, qos=1, retain=first.retain)
        ids = tuple(r.id for r in group)
        with self.c._lock:
            self.c._counters["mqtt_messages"] += 1
            self.c._counters["envelopes"] += len(ids)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            self.c._set_error(f"publish of {ids[0]} failed: {mqtt.error_string(info.rc)}")
        if len(payload) > payloads.BROKER_MESSAGE_LIMIT:
            self.c._set_error(_oversize_error(ids[0], len(payload)))
        for i in ids:
            self.last_published[i] = now
        self.untracked.discard(info.mid)  # the id is this message's now, whatever became of its last user
        early = self.early.pop(info.mid, None)
        if early is not None:
            self._puback(ids, early, len(payload))
        else:
            self.inflight[info.mid] = ids
            self.sizes[info.mid] = len(payload)
        self.probe_out = True
        self.probe_at = now

    def _new_pass(self, *, only_overdue: bool) -> None:
        self.probe_out = False
        self.cursor = {PRIORITY_NUMBERS: 0, PRIORITY_PHOTO: 0}
        self.exhausted = {PRIORITY_NUMBERS: False, PRIORITY_PHOTO: False}
        if not only_overdue:
            self.last_published.clear()

    def _flush(self, *, force: bool = False, idle: bool = False) -> None:
        """Record delivery states in one outbox transaction.

        Acks are written when FLUSH_BATCH are waiting, FLUSH_INTERVAL_S after the oldest, at once when
        nothing is in flight, and at the end of the session. A PUBACKed row is written ``sent`` only if
        its ack has not come SENT_AFTER_S after the PUBACK (while a backlog drains most rows go from
        ``queued`` straight to ``acked``: one write per row instead of two).
        """
        now = time.monotonic()
        acked = self.pending_acked
        due_acks = bool(acked) and (
            force
            or idle
            or len(acked) >= self.FLUSH_BATCH
            or now - self.first_pending_at >= self.FLUSH_INTERVAL_S
        )
        due_sent = bool(self.pending_sent) and (force or self.pending_sent[0][0] <= now - self.SENT_AFTER_S)
        if not (due_acks or due_sent):
            return
        self.pending_acked, self.first_pending_at = [], None
        done = set(acked)
        cutoff = now - self.SENT_AFTER_S
        sent: list[str] = []
        keep: list[tuple[float, tuple[str, ...]]] = []
        for t, ids in self.pending_sent:
            if force or t <= cutoff:
                sent.extend(i for i in ids if i not in done)
            else:
                rest = tuple(i for i in ids if i not in done) if done else ids
                if rest:
                    keep.append((t, rest))
        self.pending_sent = keep
        try:
            self.outbox.record(sent=sent, acked=acked, at=time.time())
        except Exception as exc:  # noqa: BLE001 - states are re-derived from resends and acks
            self.c._set_error(f"cannot record delivery states: {exc}")

    def _housekeeping(self, client) -> None:
        c = self.c
        now = time.monotonic()
        if c.heartbeat_s > 0 and now >= self.next_heartbeat:
            self.next_heartbeat = now + c.heartbeat_s
            # retained: the broker keeps the kit's latest state and faults for `tpskit fleet readiness
            # --broker` (a kit whose card refuses writes cannot queue the readiness that would say so)
            self._publish_control(client, c.topic("heartbeat"), self._heartbeat_payload(), retain=True)
        if c._heartbeat_now:
            c._heartbeat_now = False
            self.next_heartbeat = now
        if not self.e2e_ok and self.probe_out and now - self.probe_at >= self.probe_interval:
            # No collector answered the probe (e.g. it had not re-subscribed yet): send it again, soon.
            # After a few silent probes open the window anyway, so that one message the collector
            # refuses (see its rejects table) can never hold back the rest.
            self.probe_tries += 1
            if self.probe_tries >= self.PROBE_TRIES:
                log.warning("no collector ack after %d probes: sending the whole queue", self.probe_tries)
                self.e2e_ok = True
            self.probe_interval = min(self.probe_interval * 2, c.ack_timeout_s)
            self._new_pass(only_overdue=True)
            return
        if now >= self.next_stale_check and all(self.exhausted.values()) and not self.inflight:
            self.next_stale_check = now + max(1.0, self.stale_interval / 4)
            refused = self.refused_at is not None and now - self.refused_at >= c.ack_timeout_s
            if refused or self.outbox.has_stale_sent(older_than=time.time() - c.ack_timeout_s):
                self.refused_at = None
                log.info("messages without collector ack for %.0f s: resending", c.ack_timeout_s)
                self._new_pass(only_overdue=True)
                self.stale_interval = min(self.stale_interval * 2, 3600.0)
        if now >= self.next_purge:
            self.next_purge = now + 3600
            self.outbox.purge()

    def _heartbeat_payload(self) -> bytes:
        c = self.c
        st = self.outbox.stats()
        body: dict = {
            "queue": {"queued": st["queued"], "sent": st["sent"], "bytes": st["unacked_bytes"]},
            "oldest_unsent_age_s": st["oldest_unsent_age_s"],
            "uptime_s": round(time.time() - c._started_at, 1),
        }
        if c._heartbeat_info is not None:
            try:
                body.update(c._heartbeat_info() or {})
            except Exception as exc:  # noqa: BLE001 - a broken sensor must not stop delivery
                body["info_error"] = str(exc)[:200]
        msg_id = f"{c.kit_id}:heartbeat:{time.time_ns()}"
        try:
            return c._build(kind="heartbeat", msg_id=msg_id, seq=None, body=body, now=time.time())
        except (TypeError, ValueError) as exc:  # e.g. a numpy value from heartbeat_info
            base = {k: body[k] for k in ("queue", "oldest_unsent_age_s", "uptime_s")}
            base["info_error"] = f"heartbeat info is not plain JSON: {exc}"[:200]
            return c._build(kind="heartbeat", msg_id=msg_id, seq=None, body=base, now=time.time())

    def _goodbye(self, client) -> None:
        """Clean stop: retained offline status, wait briefly for outstanding PUBACKs, disconnect."""
        try:
            self._publish_control(
                client,
                self.c.topic("status"),
                self._status_payload("offline", "stopped", now=time.time()),
                retain=True,
            )
            deadline = time.monotonic() + 1.0
            while self.inflight and time.monotonic() < deadline:
                client.loop(timeout=0.05)
            client.loop(timeout=0.05)
        finally:
            self._flush(force=True)
            self._close(client)

    @staticmethod
    def _close(client) -> None:
        try:
            client.disconnect()
            client.loop(timeout=0.05)
        except Exception:  # noqa: BLE001
            pass
        try:
            client.socket() and client.socket().close()
        except Exception:  # noqa: BLE001
            pass
