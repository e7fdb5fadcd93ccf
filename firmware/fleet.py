"""Fleet readiness for operators (H-1): which kits are ready, not ready (why) or silent, per kabupaten.

Sources of the kits' latest readiness (signed, retained ``<prefix>/<kw>/<tps>/readiness``):

- the broker itself: subscribe, collect the retained messages, verify each signature against the registry;
- a collector database (``kit_readiness`` table, already verified by the collector).

Either way a later heartbeat that says the kit is in ``fault`` (its ``state`` and ``faults``) makes a 'ready'
kit not ready: heartbeats are not queued, so they still come from a kit whose card refuses the readiness it
would queue. From the broker: the kit's retained heartbeat (``<prefix>/<kw>/<tps>/heartbeat``, signature
checked like the readiness; one that does not verify, or of a kit the registry does not list there, is
ignored) created after the readiness by the kit's clock (``created_at``); from a collector database: the
``kit_heartbeat`` row received after the readiness. A kit with a heartbeat but no readiness stays *silent*;
its reason says it is alive (and its faults).

The registry (``comms.signing`` format) says which kits should exist: a registered kit without a readiness
message is *silent*. A readiness older than ``max_age_s`` counts as not ready (stale: a running kit reports
again every 6 hours, ``firmware.app.READINESS_EVERY_S``), and so does one whose self-test
skipped checks on request (``skipped``: "ready except skipped").

A report's age is measured from its ``checked_at`` when the kit's clock was synchronised (``time_source``
"ntp"). The Pi has no RTC: until NTP syncs, its clock is the last saved time (fake-hwclock), days behind
after storage, so a kit just switched on would look stale. Such a report is aged from the collector's
``received_at`` instead (the collector's clock; the newest report a kit delivers is at most one
re-report interval older than its delivery). From the broker there is no receive time: the kit reports
again as soon as NTP has synced its clock.
"""

from __future__ import annotations

import csv
import io
import json
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from firmware.clock import FUTURE_TOLERANCE_S

READY, NOT_READY, SILENT = "ready", "not_ready", "silent"
BeatKey = tuple[str, str, int]  # a heartbeat's kit id, kode wilayah and TPS
STATE_LABELS = {READY: "SIAP", NOT_READY: "BELUM SIAP", SILENT: "DIAM"}


@dataclass
class Observation:
    """One kit's latest readiness message."""

    kit_id: str
    kode_wilayah: str
    tps: int
    body: dict
    created_at: float | None = None
    seq: int | None = None
    verified: bool = True
    problem: str = ""
    epoch: int | None = None
    received_at: float | None = None  # the collector's clock (collector database only)
    # the body of the kit's latest heartbeat when it came after this readiness (by the collector's receive
    # time, or from the broker by the kit's clock): its ``state`` and ``faults`` (heartbeats are not queued,
    # so they still come from a kit whose storage refuses the readiness it would queue)
    heartbeat: dict | None = None
    # False: no readiness from this kit, only a verified heartbeat (``heartbeat``, ``created_at`` its time):
    # the kit stays silent, but alive (from the broker only)
    readiness: bool = True


@dataclass
class KitState:
    kit_id: str
    kode_wilayah: str | None
    tps: int | None
    state: str
    reasons: list[str] = field(default_factory=list)
    checked_at: float | None = None
    trigger: str | None = None
    battery_percent: float | None = None
    registered: bool = True
    skipped: list[str] = field(default_factory=list)  # checks its self-test skipped (--skip): not tested

    @property
    def kabupaten(self) -> str:
        return ".".join(self.kode_wilayah.split(".")[:2]) if self.kode_wilayah else "?"


@dataclass
class RegionSummary:
    kabupaten: str
    total: int = 0
    ready: int = 0
    not_ready: int = 0
    silent: int = 0

    @property
    def percent_ready(self) -> float:
        return round(100.0 * self.ready / self.total, 1) if self.total else 0.0


# --- sources ------------------------------------------------------------------------------------

def from_broker(broker_url: str, *, registry: dict | None, prefix: str = "tpskit/v1",
                username: str | None = None, password: str | None = None, ca_file=None, wait_s: float = 5.0,
                quiet_s: float = 0.7, client_id: str | None = None) -> list[Observation]:
    """Collect the retained readiness and heartbeat messages from the broker (read-only; nothing is acked).

    One Observation per kit with a readiness (its heartbeat attached when created after it), plus one
    ``readiness=False`` per kit with a verified heartbeat only."""
    from comms import payloads
    from comms.courier import make_mqtt_client, parse_broker_url

    host, port, tls = parse_broker_url(broker_url)
    client = make_mqtt_client(client_id=client_id or f"tpskit-fleet-{int(time.time() * 1000) % 10**9}",
                              protocol="mqtt5", tls=tls, ca_file=ca_file, username=username,
                              password=password)
    got: dict[str, Observation] = {}
    beats: dict[BeatKey, tuple[float, dict]] = {}  # the newest verified heartbeat (its time, its body)
    lock = threading.Lock()
    last = [time.monotonic()]
    subscribed = threading.Event()
    failed: list[str] = []

    def on_connect(c, _u, _f, rc, _p):
        if rc.is_failure:
            failed.append(str(rc))
            subscribed.set()
            return
        c.subscribe([(f"{prefix.strip('/')}/+/+/{kind}", 1) for kind in ("readiness", "heartbeat")])

    def on_subscribe(*_a):
        last[0] = time.monotonic()
        subscribed.set()

    def on_message(_c, _u, msg):
        parsed = _parse(msg.payload, payloads)
        if parsed is None:
            return
        env, raw = parsed
        if env.kind == "heartbeat":
            beat = _heartbeat(env, raw, registry, payloads)
            with lock:
                if beat is not None:
                    key, at, body = beat
                    if key not in beats or at >= beats[key][0]:
                        beats[key] = (at, body)
                last[0] = time.monotonic()
            return
        obs = _readiness(env, raw, registry, payloads)
        if obs is None:
            return
        with lock:
            prev = got.get(obs.kit_id)
            if prev is None or _supersedes(obs, prev):
                got[obs.kit_id] = obs
            last[0] = time.monotonic()

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise ConnectionError(f"broker {broker_url} tidak terjangkau: {exc}") from None
    client.loop_start()
    try:
        if not subscribed.wait(wait_s) or failed:
            why = failed[0] if failed else "timeout"
            raise ConnectionError(f"broker {broker_url} menolak / tidak menjawab: {why}")
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and time.monotonic() - last[0] < quiet_s:
            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    with lock:
        return _with_heartbeats(list(got.values()), beats)


def _with_heartbeats(observations: list[Observation], beats: dict[BeatKey, tuple[float, dict]]
                     ) -> list[Observation]:
    """Attach to each readiness its kit's heartbeat from the same TPS when the kit created the heartbeat
    after it (the kit's clock, the only one a retained message has); a kit with a heartbeat and no readiness
    gets a ``readiness=False`` observation."""
    out = []
    for obs in observations:
        beat = beats.get((obs.kit_id, obs.kode_wilayah, obs.tps))
        if beat is not None and _finite(obs.created_at) and beat[0] > obs.created_at:
            obs.heartbeat = beat[1]
        out.append(obs)
    reported = {o.kit_id for o in observations}
    alive: dict[str, Observation] = {}  # the newest heartbeat of each kit without a readiness
    for (kit_id, kw, tps), (at, body) in beats.items():
        if kit_id not in reported and (kit_id not in alive or at > alive[kit_id].created_at):
            alive[kit_id] = Observation(kit_id, kw, tps, {}, created_at=at, heartbeat=body, readiness=False)
    return out + list(alive.values())


def _supersedes(obs: Observation, prev: Observation) -> bool:
    """Whether ``obs`` replaces ``prev``, two retained readiness messages of one kit on different topics (a
    kit moved to another TPS leaves its old one behind): a valid one beats an invalid one; then, as the
    collector decides (``READINESS_NEWER``), the higher seq within one epoch, the later clock across epochs
    (a re-provisioned kit starts a new outbox, its seq again from 1)."""
    if obs.verified != prev.verified:
        return obs.verified
    if (obs.epoch or 0) == (prev.epoch or 0):
        return (obs.seq or 0) >= (prev.seq or 0)
    return (obs.created_at or 0) >= (prev.created_at or 0)


def _parse(payload: bytes, payloads):
    try:
        return payloads.parse(payload)
    except payloads.MalformedMessage:
        return None


def _heartbeat(env, raw: dict, registry: dict | None, payloads) -> tuple[BeatKey, float, dict] | None:
    """((kit, kw, tps), created_at, body) of a heartbeat the registry vouches for (signature, kit, TPS), or
    None: a heartbeat that does not verify must never change a verdict. Without a registry nothing is
    verified, heartbeats no more than readiness messages (which are then believed as they are)."""
    if not _finite(env.created_at):
        return None
    if registry is not None:
        entry = registry.get(env.kit_id)
        if entry is None or not payloads.verify(entry.public_key, raw):
            return None
        probe = Observation(env.kit_id, env.kode_wilayah, env.tps, {})
        _check_registry(probe, registry)
        if not probe.verified:
            return None
    return (env.kit_id, env.kode_wilayah, env.tps), float(env.created_at), dict(env.body)


def _readiness(env, raw: dict, registry: dict | None, payloads) -> Observation | None:
    if env.kind != "readiness":
        return None
    obs = Observation(env.kit_id, env.kode_wilayah, env.tps, env.body, env.created_at, env.seq,
                      epoch=env.epoch)
    if registry is not None:
        entry = registry.get(env.kit_id)
        if entry is not None and not payloads.verify(entry.public_key, raw):
            obs.verified, obs.problem = False, "tanda tangan tidak sah (kunci tidak cocok dengan registry)"
        else:
            _check_registry(obs, registry)
    return obs


def _check_registry(obs: Observation, registry: dict) -> None:
    """Mark ``obs`` unverified if the registry does not list its kit, or lists it for another TPS (a kit
    retired, replaced or moved since it reported): whatever the source, such a report is never ready."""
    if not obs.verified:
        return
    entry = registry.get(obs.kit_id)
    if entry is None:
        obs.verified, obs.problem = False, "kit tidak terdaftar di registry"
    elif (entry.kode_wilayah and entry.kode_wilayah != obs.kode_wilayah) or (
            entry.tps is not None and entry.tps != obs.tps):
        obs.verified = False
        obs.problem = (f"melapor untuk {obs.kode_wilayah} TPS {obs.tps}, terdaftar untuk "
                       f"{entry.kode_wilayah} TPS {entry.tps}")


def from_collector_db(path: Path | str) -> list[Observation]:
    """The latest readiness per kit as stored (and verified) by the collector (SQLite file or
    ``postgresql://`` URL of a PostgreSQL collector database)."""
    from comms.collector_store import StoreUnavailable, read_rows

    try:  # FileNotFoundError for a SQLite file that is not there
        rows = read_rows(path, "SELECT kit_id, kode_wilayah, tps, body, created_at, seq, received_at "
                               "FROM kit_readiness")
    except StoreUnavailable as exc:
        raise ConnectionError(f"database collector tidak bisa dihubungi: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"bukan database collector tpskit: {exc}") from None
    try:
        beats = {kit_id: (received_at, _json_object(body)) for kit_id, received_at, body in
                 read_rows(path, "SELECT kit_id, received_at, body FROM kit_heartbeat")}
    except ValueError:  # a readiness table alone (an export of it): the readiness says it all
        beats = {}
    out = []
    for kit_id, kw, tps, body, created_at, seq, received_at in rows:
        beat_at, beat = beats.get(kit_id, (None, {}))
        later = _finite(beat_at) and _finite(received_at) and beat_at > received_at
        out.append(Observation(kit_id, kw, int(tps), _json_object(body), created_at, seq,
                               received_at=received_at, heartbeat=beat if later else None))
    return out


def _json_object(text) -> dict:
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --- assessment ---------------------------------------------------------------------------------

def _skipped(body: dict) -> list[str]:
    names = body.get("skipped")
    return [str(n) for n in names] if isinstance(names, list) else []


def _reasons(body: dict) -> list[str]:
    out = []
    for item in body.get("failing") or []:
        if isinstance(item, dict):
            text = f"{item.get('name', '?')}: {item.get('detail', '')}".strip(": ")
            if item.get("fix"):
                text += f" → {item['fix']}"
            out.append(text)
        else:
            out.append(str(item))
    skipped = _skipped(body)
    if skipped:
        out.append(f"siap kecuali yang dilewati / ready except skipped: {', '.join(skipped)} "
                   "→ jalankan sudo tpskit selftest tanpa --skip")
    return out or ["laporan kesiapan: belum siap (tanpa rincian)"]


def _in_fault(heartbeat: dict | None) -> bool:
    """A heartbeat saying the kit is in fault, or naming parts that are down (one sent during a press)."""
    if not heartbeat:
        return False
    faults = heartbeat.get("faults")
    return heartbeat.get("state") == "fault" or (isinstance(faults, dict) and bool(faults))


def _fault_parts(heartbeat: dict) -> str:
    faults = heartbeat.get("faults")
    return "; ".join(f"{k}: {v}" for k, v in faults.items()) if isinstance(faults, dict) and faults else "?"


def _fault_reason(heartbeat: dict) -> str:
    """A kit ready in its last readiness, in fault in a later heartbeat (the readiness saying so could not
    be queued: a card that refuses writes)."""
    parts = _fault_parts(heartbeat)
    return (f"kit dalam keadaan fault menurut heartbeat terakhir ({parts}) → periksa kit di TPS (kartu SD, "
            "kamera); laporan kesiapan terakhirnya masih 'siap'")


def _alive_reason(beat: Observation) -> str:
    """A registered kit without a readiness whose heartbeat came (from the broker)."""
    try:
        at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(beat.created_at))
    except (TypeError, ValueError, OverflowError, OSError):
        at = "?"
    if _in_fault(beat.heartbeat):
        return (f"tidak ada laporan kesiapan; heartbeat kit ({at}, jam kit): fault "
                f"({_fault_parts(beat.heartbeat)}) → periksa kit di TPS (kartu SD, kamera) "
                "/ alive but in fault, sent no readiness")
    return (f"tidak ada laporan kesiapan, tetapi kit hidup (heartbeat {at}, jam kit) → jalankan sudo tpskit "
            "selftest di kit / alive, sent no readiness")


def assess(registry: dict | None, observations: Iterable[Observation], *, now: float | None = None,
           max_age_s: float | None = None) -> list[KitState]:
    """One KitState per registered kit (silent if no readiness) plus any unregistered kit that reported."""
    now = time.time() if now is None else now
    observations = list(observations)
    seen = {o.kit_id: o for o in observations if o.readiness}
    alive = {o.kit_id: o for o in observations if not o.readiness}
    states: list[KitState] = []
    kit_ids = list(registry) if registry is not None else []
    kit_ids += [k for k in seen if registry is None or k not in registry]
    for kit_id in kit_ids:
        entry = registry.get(kit_id) if registry is not None else None
        obs = seen.get(kit_id)
        if obs is None:
            beat = alive.get(kit_id)
            states.append(KitState(kit_id, entry.kode_wilayah, entry.tps, SILENT,
                                   [_alive_reason(beat) if beat is not None else
                                    "tidak ada laporan kesiapan: kit belum dinyalakan, belum selftest, "
                                    "atau tidak ada sinyal"]))
            continue
        if registry is not None:
            _check_registry(obs, registry)  # the collector database checked against its own registry
        body = obs.body
        checked = body.get("checked_at")
        if not isinstance(checked, int | float) or not math.isfinite(checked):  # Infinity: never stale
            checked = obs.created_at
        synced = body.get("time_source") == "ntp"
        by_collector = not synced and _finite(obs.received_at)  # the kit's clock may be days behind
        aged_from = obs.received_at if by_collector else checked
        st = KitState(kit_id, obs.kode_wilayah, obs.tps, NOT_READY, checked_at=checked,
                      trigger=body.get("trigger"), battery_percent=body.get("battery_percent"),
                      registered=registry is None or kit_id in registry, skipped=_skipped(body))
        if not obs.verified:
            st.reasons = [obs.problem]
        elif body.get("ready") is not True or st.skipped:
            st.reasons = _reasons(body)
        elif _in_fault(obs.heartbeat):
            st.reasons = [_fault_reason(obs.heartbeat)]
        elif max_age_s is not None and aged_from is not None and aged_from - now > FUTURE_TOLERANCE_S:
            st.reasons = [_future_reason(aged_from)]
        elif max_age_s is not None and aged_from is not None and now - aged_from > max_age_s:
            age_h = (now - aged_from) / 3600
            clock = "" if synced or by_collector else (
                " menurut jam kit yang belum sinkron NTP; kit melapor lagi begitu jamnya sinkron")
            st.reasons = [f"laporan kesiapan terakhir {age_h:.0f} jam lalu{clock} (kit yang menyala melapor "
                          "tiap 6 jam): nyalakan kit, periksa sinyal, atau jalankan selftest"]
        else:
            st.state = READY
        states.append(st)
    if registry is not None:
        _one_ready_per_key(states, registry, seen)
    states.sort(key=lambda s: (s.kode_wilayah or "~", s.tps or 0, s.kit_id))
    return states


def _reported_at(obs: Observation) -> float:
    """When *obs* was reported: the collector's clock if it has it, else the kit's."""
    for value in (obs.received_at, obs.created_at, obs.body.get("checked_at")):
        if _finite(value):
            return float(value)
    return 0.0


def _one_ready_per_key(states: list[KitState], registry: dict, seen: dict[str, Observation]) -> None:
    """One key is one kit, which serves one TPS: of the kit ids registered with the same public key (a kit
    re-provisioned for another TPS keeps its key; so does an SD card cloned from a provisioned kit), only the
    one that reported last may count as ready."""
    by_key: dict[bytes, list[str]] = {}
    for kit_id, entry in registry.items():
        by_key.setdefault(bytes(entry.public_key), []).append(kit_id)
    by_id = {s.kit_id: s for s in states}
    for kit_ids in by_key.values():
        reported = [k for k in kit_ids if k in seen]
        if len(reported) < 2:
            continue
        latest = max(reported, key=lambda k: _reported_at(seen[k]))
        for kit_id in reported:
            st = by_id.get(kit_id)
            if kit_id != latest and st is not None and st.state == READY:
                st.state, st.reasons = NOT_READY, [_same_key_reason(kit_id, by_id[latest])]


def _same_key_reason(kit_id: str, latest: KitState) -> str:
    where = f"{latest.kit_id} ({latest.kode_wilayah} TPS {latest.tps})"
    return (f"kunci publik sama dengan {where}, yang melapor lebih baru: kit ini dipindah ke sana (siapkan "
            f"kit lain untuk TPS ini, hapus baris {kit_id} dari registry) atau kartu SD-nya disalin dari kit "
            "itu (di kit ini: sudo tpskit provision --force --new-key, lalu kirim baris registry barunya) "
            f"/ same key as {latest.kit_id}, which reported later: the kit moved there, or its SD card "
            "was cloned")


def _future_reason(aged_from: float) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(aged_from))
    return (f"laporan kesiapan bertanggal {stamp}, di masa depan menurut jam kit: umurnya tidak diketahui → "
            "sambungkan kit ke internet agar jamnya sinkron (NTP), lalu jalankan sudo tpskit selftest "
            "/ dated in the future by the kit's clock: its age is unknown")


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def summarize(states: Iterable[KitState]) -> list[RegionSummary]:
    regions: dict[str, RegionSummary] = {}
    for s in states:
        r = regions.setdefault(s.kabupaten, RegionSummary(s.kabupaten))
        r.total += 1
        setattr(r, s.state, getattr(r, s.state) + 1)
    return [regions[k] for k in sorted(regions)]


# --- output -------------------------------------------------------------------------------------

CSV_FIELDS = ("kabupaten", "kode_wilayah", "tps", "kit_id", "state", "reasons", "checked_at", "trigger",
              "battery_percent", "registered")


def to_csv(states: Iterable[KitState]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for s in states:
        checked = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.checked_at)) if s.checked_at else ""
        w.writerow([s.kabupaten, s.kode_wilayah or "", s.tps or "", s.kit_id, s.state, " | ".join(s.reasons),
                    checked, s.trigger or "", "" if s.battery_percent is None else s.battery_percent,
                    "yes" if s.registered else "no"])
    return buf.getvalue()


def to_json(states: list[KitState], summary: list[RegionSummary]) -> dict:
    total = RegionSummary("total")
    for r in summary:
        total.total += r.total
        total.ready += r.ready
        total.not_ready += r.not_ready
        total.silent += r.silent
    return {"kits": [{**asdict(s), "kabupaten": s.kabupaten} for s in states],
            "kabupaten": [{**asdict(r), "percent_ready": r.percent_ready} for r in summary],
            "total": {**asdict(total), "percent_ready": total.percent_ready}}


def table(states: list[KitState], summary: list[RegionSummary]) -> str:
    lines = []
    current = None
    for s in states:
        if s.kabupaten != current:
            current = s.kabupaten
            lines.append(f"Kabupaten/kota {current}")
        where = f"{s.kode_wilayah or '?':13} TPS {s.tps if s.tps is not None else '?':>3}"
        lines.append(f"  {where}  {s.kit_id:24} {STATE_LABELS[s.state]:10} {'; '.join(s.reasons)}".rstrip())
    lines.append("")
    lines.append(f"{'kabupaten':10} {'kit':>5} {'siap':>5} {'belum':>6} {'diam':>5} {'% siap':>7}")
    tot = [0, 0, 0, 0]
    for r in summary:
        lines.append(f"{r.kabupaten:10} {r.total:5} {r.ready:5} {r.not_ready:6} {r.silent:5} "
                     f"{r.percent_ready:6.1f}%")
        tot = [tot[0] + r.total, tot[1] + r.ready, tot[2] + r.not_ready, tot[3] + r.silent]
    pct = 100.0 * tot[1] / tot[0] if tot[0] else 0.0
    lines.append(f"{'total':10} {tot[0]:5} {tot[1]:5} {tot[2]:6} {tot[3]:5} {pct:6.1f}%")
    return "\n".join(lines)
