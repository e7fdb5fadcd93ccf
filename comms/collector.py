"""Reference collector: verify, store (idempotently) and acknowledge kit messages.

Runs anywhere (``tpskit collector --broker URL --db PATH --kits REGISTRY``). Readings, photo chunks and
heartbeats arrive through an MQTT 5 shared subscription (``$share/collectors/...``) so several collectors
split the load; retained readiness and status come through plain subscriptions. Each message is checked
(topic, schema, registered kit, TPS, Ed25519 signature, replay) before anything is stored; rejects are
logged and recorded in the ``rejects`` table only. A batch is committed (SQLite, synchronous=FULL) before
the broker PUBACK and before the end-to-end ack on ``<prefix>/<kw>/<tps>/ack``.

A *pack* (several signed envelopes in one MQTT message, docs/payloads.md) is unpacked and every envelope
is checked on its own: one tampered envelope is rejected, the others of the pack are stored and acked
(one ack message lists them all). Single messages are accepted as before.

Storage (``CollectorStore``) and the stateless checks (``precheck``) live in ``comms.collector_store``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from comms import payloads, topics
from comms.collector_store import (  # noqa: F401 (re-exported)
    Checked,
    CollectorStore,
    Outcome,
    StoreError,
    StoreUnavailable,
    is_postgres,
    open_store,
    precheck,
)
from comms.signing import (
    KitEntry,
    coerce_signing_key,
    empty_registry_problem,
    load_registry,
    registry_stamp,
)

log = logging.getLogger("tpskit.comms.collector")

ACK_MAX_IDS = 500  # ids per ack message (≈ 20 KB)


class Collector:
    """Subscribes, verifies, stores in batches, PUBACKs after commit and sends end-to-end acks."""

    WORKER_SHARE = 0.3  # of a batch's checks done by the worker itself when a pool thread helps

    def __init__(
        self,
        *,
        broker_url: str,
        db_path: Path | str,
        registry: Path | str | dict[str, KitEntry],
        username: str | None = None,
        password: str | None = None,
        ca_file=None,
        cert_file=None,
        key_file=None,
        topic_prefix: str = topics.DEFAULT_PREFIX,
        group: str | None = topics.SHARE_GROUP,
        client_id: str | None = None,
        protocol: str = "mqtt5",
        session_expiry_s: int = 86400,
        batch_max: int = 2000,
        batch_wait_s: float = 0.005,
        reconnect_max_s: int = 2,
        verify_threads: int = 0,
        ack_key=None,
    ):
        from comms.courier import parse_broker_url

        if verify_threads < 0 or batch_max < 1 or batch_wait_s < 0:
            raise ValueError(
                f"verify_threads {verify_threads} (>= 0), batch_max {batch_max} (>= 1), "
                f"batch_wait_s {batch_wait_s} (>= 0): a value is out of range"
            )
        self.broker_url = broker_url
        self._host, self._port, self._tls = parse_broker_url(broker_url)
        self._creds = dict(
            username=username, password=password, ca_file=ca_file, cert_file=cert_file, key_file=key_file
        )
        self.prefix = topic_prefix.strip("/")
        self.group = group
        self.client_id = client_id or f"tpskit-collector-{int(time.time() * 1000) % 10**9}"
        # A persistent session is resumed only under the same client id. A generated id is new at every
        # start: its session would stay in the share group at the broker, taking its share of the
        # readings, with nobody to receive them. So: persistent only with a client id given (stable).
        self.persistent = client_id is not None
        self.protocol = protocol
        self.session_expiry_s = session_expiry_s
        self.batch_max, self.batch_wait_s = batch_max, batch_wait_s
        self.reconnect_max_s = reconnect_max_s
        # Optional Ed25519 key (SigningKey, seed or key file) that signs the acks; kits configured with its
        # public key (mqtt.collector_key_file) ignore acks without a valid signature.
        self._ack_key = coerce_signing_key(ack_key) if ack_key is not None else None
        # a PostgreSQL URL stays a string (Path() would fold its '//'); a file path becomes a Path
        self.db_path = db_path if is_postgres(db_path) else Path(db_path)
        self._registry_path = None if isinstance(registry, dict) else Path(registry)
        # stamped before reading: a change while it is read is seen at the next look
        self._registry_stamp = registry_stamp(self._registry_path) if self._registry_path else ()
        self._registry: dict[str, KitEntry] = (
            registry if isinstance(registry, dict) else load_registry(registry)
        )
        self._last_reload = time.monotonic()
        self._q: queue.SimpleQueue = queue.SimpleQueue()  # C implementation: cheaper put/get per message
        self._stop = threading.Event()
        self._conn_gen = 0
        self._client = None
        self._worker: threading.Thread | None = None
        # verify_threads > 0: a pool thread checks most of the next batch while the worker stores the
        # current one. Off by default: libsodium releases the GIL, but the hand-offs (one per envelope) cost
        # ~40 µs of CPU per reading and gave no throughput in scripts/bench_delivery.py (docs/payloads.md);
        # for more cores run several collectors (processes) in one share group.
        self._threads = verify_threads
        self._pool = (
            ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="tpskit-verify")
            if self._threads
            else None
        )
        self.connected = threading.Event()
        self._unreachable_said = False  # one warning per outage, not one per retry
        self.stats: dict[str, int] = defaultdict(int)
        self._stats_lock = threading.Lock()

    # --- MQTT -----------------------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("broker refused the collector: %s", reason_code)
            return
        self._conn_gen += 1
        self._unreachable_said = False
        subs = [(f, 1) for f, _shared in topics.collector_filters(self.prefix, group=self.group)]
        client.subscribe(subs)
        self.connected.set()
        log.info(
            "collector connected to %s (session present: %s)",
            self.broker_url,
            getattr(flags, "session_present", None),
        )

    def _on_connect_fail(self, client, userdata):
        if not self._unreachable_said:
            self._unreachable_said = True
            log.warning("collector cannot reach the broker %s (is it running, the address right, the network "
                        "up?); retrying until it answers", self.broker_url)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("collector disconnected from %s: %s", self.broker_url, reason_code)

    def _on_message(self, client, userdata, msg):
        self._q.put((msg.topic, msg.payload, msg.mid, msg.qos, self._conn_gen))

    def start(self) -> Collector:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from comms.courier import make_mqtt_client

        client = make_mqtt_client(
            client_id=self.client_id,
            protocol=self.protocol,
            tls=self._tls,
            manual_ack=True,
            reconnect=True,
            clean_session=not self.persistent,
            **self._creds,
        )
        client.on_connect, client.on_disconnect = self._on_connect, self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=1, max_delay=max(1, self.reconnect_max_s))
        props = None
        if self.protocol == "mqtt5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s if self.persistent else 0
        self._client = client
        self._worker = threading.Thread(target=self._work, name="tpskit-collector", daemon=True)
        self._worker.start()
        if self.protocol == "mqtt5":
            client.connect_async(
                self._host, self._port, keepalive=30, clean_start=not self.persistent, properties=props
            )
        else:
            client.connect_async(self._host, self._port, keepalive=30)
        client.loop_start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._worker:
            self._worker.join(timeout)
        if self._client is not None:
            try:
                self._client.disconnect()
            finally:
                self._client.loop_stop()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    # --- worker ---------------------------------------------------------------------------------------
    def _reload_registry(self) -> None:
        if self._registry_path is None:
            return
        try:
            stamp = registry_stamp(self._registry_path)
            if stamp == self._registry_stamp:
                return
            self._registry_stamp = stamp  # read (and a failure reported) once per change
            registry = load_registry(self._registry_path)
            if not registry and self._registry:
                log.warning("kit registry not reloaded, the last one (%d kits) stays in use: %s",
                            len(self._registry), empty_registry_problem(self._registry_path))
                return
            self._registry = registry
            log.info("kit registry reloaded: %d kits", len(self._registry))
        except Exception as exc:  # noqa: BLE001 - keep the last good registry
            log.error("kit registry not reloaded (the last good one stays in use): %s", exc)

    def _collect(self, *, wait: bool) -> list:
        """The next batch from the queue: up to batch_max envelopes; with *wait*, block for the first
        message and then wait up to batch_wait_s for more; without, take only what is already queued."""
        try:
            first = self._q.get(timeout=0.2) if wait else self._q.get_nowait()
        except queue.Empty:
            return []
        batch = [first]
        n = self._count(first)
        deadline = time.monotonic() + (self.batch_wait_s if wait else 0.0)
        while n < self.batch_max:
            try:
                msg = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            batch.append(msg)
            n += self._count(msg)
        return batch

    def _work(self) -> None:
        """Batches in order; by default (verify_threads=0) the worker checks, then stores each batch. With a
        pool, a pool thread checks most of the next batch while the worker stores the current one."""
        store = self._open_store()
        if store is None:
            return
        current = None
        try:
            while not self._stop.is_set():
                if current is None:
                    batch = self._collect(wait=True)
                    if not batch:
                        continue
                    current = self._start_checks(batch)
                batch, mine, pooled = current
                try:
                    checked = self._check_msgs(mine)
                    if pooled is not None:
                        checked.extend(pooled.result())
                except Exception:  # noqa: BLE001 - a bug in a check must not stop the collector
                    log.exception("batch of %d messages not checked; the kits will resend", len(batch))
                    self._puback(batch)
                    current = None
                    continue
                nxt = self._collect(wait=False)
                current = self._start_checks(nxt) if nxt else None
                try:
                    self._process_batch(store, batch, checked)
                except Exception:  # noqa: BLE001 - e.g. a failed ack publish must not end the worker
                    # The batch is committed or rolled back; what was not PUBACKed/acked is resent.
                    log.exception("batch of %d messages not all acked; the kits will resend", len(batch))
        finally:
            store.close()

    def _open_store(self) -> CollectorStore | None:
        """The store, retried with backoff while the database cannot be reached (None once stopped)."""
        wait = 0.5
        while not self._stop.is_set():
            try:
                return CollectorStore(self.db_path, prefix=self.prefix)
            except (StoreUnavailable, StoreError, OSError) as exc:
                log.error("collector database not available (%s); retrying in %.0f s", exc, wait)
                self._stop.wait(wait)
                wait = min(wait * 2, 5.0)
        return None

    def _start_checks(self, batch: list) -> tuple[list, list, object | None]:
        """(batch, the messages the worker checks, the pool's future for the others, in order after)."""
        if time.monotonic() - self._last_reload > 1.0:  # checks use the registry as of now
            self._reload_registry()
            self._last_reload = time.monotonic()
        if self._pool is None or len(batch) < 2:
            return batch, batch, None
        counts = [self._count(m) for m in batch]
        # the worker also stores: it takes about a third of the checks, the pool thread the rest
        cut, acc, target = len(batch), 0, sum(counts) * self.WORKER_SHARE
        for i, n in enumerate(counts):
            if acc >= target:
                cut = i
                break
            acc += n
        if cut >= len(batch):
            return batch, batch, None
        return batch, batch[:cut], self._pool.submit(self._check_msgs, batch[cut:])

    @staticmethod
    def _count(msg: tuple) -> int:
        """Envelopes in one MQTT message (a pack holds several; its header says how many)."""
        payload = msg[1]
        if payloads.is_pack(payload):
            return max(1, payload.count(b"\n"))
        return 1

    def _check_pack(self, topic: str, payload: bytes) -> list[Checked]:
        """Every envelope of a pack through ``precheck``; a badly framed pack is one reject."""
        try:
            envelopes = payloads.unpack(payload)
        except payloads.MalformedMessage as exc:
            return [Checked(topic, payload, reject=(exc.reason, exc.detail, None, None))]
        registry, prefix = self._registry, self.prefix
        return [precheck(prefix, topic, env, registry) for env in envelopes]

    def _check_msgs(self, msgs: list) -> list[Checked]:
        """Checked envelopes of these MQTT messages, in order (packs unpacked in place). Thread-safe."""
        registry, prefix = self._registry, self.prefix
        out: list[Checked] = []
        for topic, payload, *_rest in msgs:
            if payloads.is_pack(payload):
                out.extend(self._check_pack(topic, payload))
            else:
                out.append(precheck(prefix, topic, payload, registry))
        return out

    def _puback(self, batch: list) -> None:
        """PUBACK the MQTT messages of a batch (those of the current connection).

        Also after a batch that was not checked or not stored: nothing of it was acked end to end, so the
        kits resend it; left without PUBACK its messages would hold the broker's in-flight window for this
        collector (mosquitto max_inflight_messages) until the broker stops delivering to it at all.
        """
        for _t, _p, mid, qos, gen in batch:
            if qos > 0 and gen == self._conn_gen:
                self._client.ack(mid, qos)

    def _process_batch(self, store: CollectorStore, batch: list, checked: list[Checked]) -> None:
        """Store the checked envelopes of a batch in one transaction, PUBACK after commit, then ack."""
        now = time.time()
        try:
            store.begin()
            outcomes = store.store_many(checked, now=now)
            store.commit()
        except Exception:
            log.exception("batch of %d messages not stored; the kits will resend", len(batch))
            try:
                store.rollback()
            except Exception as exc:  # noqa: BLE001 - e.g. BEGIN itself failed: nothing to undo
                log.debug("rollback after a failed batch: %s", exc)
            self._puback(batch)
            return
        client = self._client
        acks: dict[tuple[str, int], list[str]] = defaultdict(list)
        with self._stats_lock:
            for out in outcomes:
                self.stats[out.status] += 1
                if out.ack:
                    acks[(out.kode_wilayah, out.tps)].append(out.msg_id)
        self._puback(batch)
        for (kw, tps), ids in acks.items():
            for i in range(0, len(ids), ACK_MAX_IDS):
                client.publish(
                    topics.topic(self.prefix, kw, tps, topics.ACK),
                    payloads.ack_payload(
                        ids[i : i + ACK_MAX_IDS], collector=self.client_id, at=now, key=self._ack_key
                    ),
                    qos=1,
                )
        with self._stats_lock:
            self.stats["acks"] += sum(len(v) for v in acks.values())
            self.stats["mqtt_messages"] += len(batch)
