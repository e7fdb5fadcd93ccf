"""The Kit: one main loop that owns all state.

Producers (gpiozero callbacks, the battery monitor, signal handlers, the soak presser) only put
events on ``Kit.events``. The loop takes one event at a time: a press is captured, checked,
stored (committed) and handed to the courier before the next event is looked at, while later
presses wait in the queue, so a slow step never loses a press. Every failure of one press (bad
photo, camera timeout, full disk, a reader bug) is reported with a message and the error pattern,
and the loop carries on, ready for the next press, with earlier captures untouched.

A part that does not open (camera unplugged or wedged, model file damaged) does not stop the kit: it runs
in the ``fault`` state, keeps sending what it has stored, tells the KPPS, reports itself not ready to the
operators, and opens the part again at every press and after ``FAULT_RETRY_S``, then twice as long after
each failed try up to ``FAULT_RETRY_MAX_S``. Under systemd it reboots
the Pi once per fault (``EXIT_REBOOT``, a marker file in the state directory) if the part stays down.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import statistics
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capture.base import BoundedCall, Camera, CaptureError, CaptureTimeout, encode_jpeg
from comms.durable import write_atomic
from firmware import messages as msg
from firmware import status_file
from firmware.clock import time_source as read_time_source
from firmware.config import Config
from firmware.events import Event, HoldReached, LowBattery, Press, Stop
from firmware.memory import trim as trim_memory
from firmware.store import CaptureRecord, CaptureStore, DiskFull, ReadOnly, StoreError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_POWEROFF = 75  # same as firmware.power.EXIT_POWEROFF: tpskit.service powers off after it
EXIT_REBOOT = 76  # a part stayed down: tpskit.service reboots the Pi after it (once per fault)
TICK_S = 0.5
BATTERY_POLL_S = 30.0
IDLE_CHECK_S = 5.0
CAPTURE_GRACE_S = 5.0  # past camera.timeout_s: a backend that overruns its own timeout is abandoned
READINESS_EVERY_S = 6 * 3600.0  # well inside fleet readiness's default maximum age (24 h)
FAULT_RETRY_S = 15.0  # a missing camera or model is opened again after this (and at every press), then
FAULT_RETRY_MAX_S = 120.0  # ... twice as long after each failed try, up to this
FAULT_REBOOT_AFTER_S = 120.0  # tpskit run under systemd: reboot once if a part is still down after this
# the other pages of the TPS being photographed: those this kit read in the last 12 h (counting and filling
# the plano take hours; an H-1 practice page is older)
TPS_WINDOW_S = 12 * 3600.0
OPEN_LIMIT_S = 60.0  # opening a part (the model on a Zero 2 W, a camera) is abandoned after this
CAMERA_TIMEOUTS_FAULT = 2  # consecutive camera timeouts: the camera is wedged, close it and open it again
FAULT_REBOOT_MARKER = "fault-reboot.json"  # in the state dir: the parts a reboot was already tried for
FAULT_MARKER_HEALTHY_S = 1800.0  # ... forgotten after a good photo, or after this long without a fault


@dataclass
class Verdict:
    """What one press produced (also handed to on_verdict listeners: demo, soak, tests)."""

    press: Press
    pattern: str  # ok / review / retake / error
    message: str
    record: CaptureRecord | None = None
    reading: dict[str, Any] | None = None
    latency_ms: float = 0.0
    steps_ms: dict[str, float] = field(default_factory=dict)
    page_reading: Any = None  # the reader's PageReading (for cross-page checks in the demo)


class Kit:
    """The appliance. Build with :func:`build_kit` (or pass parts directly in tests)."""

    def __init__(self, config: Config, *, camera: Camera | None, reader, store: CaptureStore, courier=None,
                 panel=None, notifier=None, battery=None, pin_factory=None,
                 say: Callable[[str], None] | None = None,
                 time_source: Callable[[], str] = read_time_source,
                 power_off: Callable[[], None] | None = None,
                 openers: dict[str, Callable[[], Any]] | None = None,
                 faults: dict[str, str] | None = None,
                 fault_retry_s: float = FAULT_RETRY_S,
                 fault_reboot_after_s: float | None = None) -> None:
        """``camera``/``reader`` None: that part is down (``faults`` says why) and ``openers["camera"]`` /
        ``openers["model"]`` open it again; ``fault_reboot_after_s`` (None = never) asks for one reboot."""
        self.config = config
        self.camera = camera
        self.reader = reader
        self.store = store
        self.courier = courier
        self.notifier = notifier
        self.battery = battery
        # SimpleQueue: put() is reentrant, so a signal handler (cmd_run: SIGTERM -> stop) may post even if it
        # interrupts the main loop inside get(); a queue.Queue would deadlock on its own lock
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        if panel is None:
            from firmware.hardware import Panel

            panel = Panel(config.gpio, on_event=self.post, pin_factory=pin_factory)
        self.panel = panel
        self._say = say or (lambda text: log.info("%s", text))
        self._time_source = time_source
        self._power_off = power_off
        self.on_verdict: list[Callable[[Verdict], None]] = []
        self.verdicts = 0
        self.presses = 0
        self.latencies_ms: deque[float] = deque(maxlen=10_000)
        self.last_message = ""
        self.state = "starting"
        self.exit_code = EXIT_OK
        self._stop = threading.Event()
        # a Stop or a critical battery is queued: an open gives way (a plain flag: signal handlers set it)
        self._urgent = False
        self._started = False
        self.started = threading.Event()  # set once start() is done: READY sent, readiness queued
        self._pattern_until: float | None = None
        self._next_status = 0.0
        self._next_battery = 0.0
        self._next_idle = 0.0
        self._next_readiness: float | None = None
        self._readiness_clock: str | None = None  # time_source of the last readiness published
        self._shown: str | None = None
        self._gate = None
        # the camera's timeout may be longer than WatchdogSec: keep pinging while its bounded wait lasts
        self._camera_wait = BoundedCall(limit_s=config.camera.timeout_s + CAPTURE_GRACE_S,
                                        tick=self._tick_watchdog, every_s=TICK_S, name="camera")
        self._heartbeat: dict[str, Any] = {}
        self._beat_faults: frozenset[str] | None = None  # the parts down in the last heartbeat snapshot
        self._openers = dict(openers or {})
        self.faults: dict[str, str] = dict(faults or {})
        if camera is None:
            self.faults.setdefault("camera", "tidak terbuka")
        if reader is None:
            self.faults.setdefault("model", "tidak termuat")
        self._opening: dict[str, BoundedCall] = {}
        self._fault_retry_s = fault_retry_s
        self._fault_reboot_after_s = fault_reboot_after_s
        self._fault_since: float | None = None
        self._next_reopen = 0.0
        self._retry_every = fault_retry_s
        self._camera_timeouts = 0
        self._reboot_considered = False
        self._healthy_since: float | None = None  # no part down since (to forget the reboot marker)
        if battery is not None:
            battery.when_low = lambda: self.post(LowBattery(level=_safe_level(battery), critical=False))
            battery.when_critical = lambda: self.post(LowBattery(level=_safe_level(battery), critical=True))

    # -- producers (any thread) ------------------------------------------------------------------

    def post(self, event: Event) -> None:
        """Thread-safe: the only thing producers do."""
        if isinstance(event, Stop) or (isinstance(event, LowBattery) and event.critical):
            self._urgent = True
        self.events.put(event)

    def stop(self, reason: str = "stop requested") -> None:
        self.post(Stop(reason))

    # -- life cycle (main thread) ----------------------------------------------------------------

    def start(self) -> None:
        """Camera, model and database are open (constructor); start sending, re-submit, signal READY."""
        if self._started:
            return
        self._started = True
        if self.courier is not None:
            if hasattr(self.courier, "heartbeat_info"):
                self.courier.heartbeat_info(self.heartbeat)  # called on the courier's thread
            self.courier.start()
        self.resubmit()
        if self.notifier is not None:
            from firmware.watchdog import LivenessGate

            self._gate = LivenessGate(self.notifier)
            if self.courier is not None:
                self._gate.register("courier", probe=self._courier_alive)
        if self.faults:
            self._fault_began()
            self._tell(msg.fault_text(self.faults))
        else:
            self._healthy_since = time.monotonic()  # the marker stays until the parts have proven themselves
            self.state = "ready"
            self._show("ready")
            self._tell(msg.READY)
        if self.notifier is not None:
            self.notifier.ready(self.last_message)  # READY=1 in a fault too: the kit runs and sends
        self._publish_readiness("boot")
        self._write_status()
        self.started.set()

    def _publish_readiness(self, trigger: str) -> None:
        """Queue the retained readiness at boot and every READINESS_EVERY_S while running, so operators see
        every kit after H-1 power-up and a kit that stopped reporting goes stale in fleet readiness."""
        if self.courier is None or not hasattr(self.courier, "publish_retained"):
            return
        from firmware.selftest import boot_report, publish_readiness

        self._next_readiness = time.monotonic() + READINESS_EVERY_S
        try:
            report = boot_report(self.config, battery=self.battery, trigger=trigger, faults=self.faults)
        except Exception:  # noqa: BLE001 - readiness must never stop the kit
            log.warning("boot readiness report failed", exc_info=True)
            return
        self._readiness_clock = report.time_source
        publish_readiness(self.courier, report)

    def _readiness_after_clock_sync(self) -> None:
        """No RTC: a readiness published before NTP synced the clock carries the last saved time, days off
        after storage, and looks stale to the operators; say it again once the clock is synced."""
        if self._readiness_clock not in (None, "ntp") and self._time_source() == "ntp":
            self._publish_readiness("clock")

    def run(self) -> int:
        """The main loop; returns the exit code (EXIT_POWEROFF after a critical battery)."""
        self.start()
        while not self._stop.is_set():
            self.step(TICK_S)
        self._shutdown()
        if self.exit_code == EXIT_POWEROFF and self._power_off is not None:
            self._power_off()
        return self.exit_code

    def step(self, timeout: float = TICK_S) -> Event | None:
        """Handle one event (or none within *timeout*), then the periodic duties."""
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            event = None
        if event is not None:
            try:
                self.handle(event)
            except Exception as exc:  # a bug in one step must not stop the kit
                log.exception("unexpected error handling %r", event)
                text = msg.ERR_STORE.format(detail=f"kesalahan internal ({type(exc).__name__})")
                if isinstance(event, Press) and event.kind == "short":
                    self._fail(event, text, {})  # a press always ends in a verdict (soak, demo wait)
                else:
                    self._error(text)
            if isinstance(event, Press):
                trim_memory()  # the photo and the reader's temporaries are freed: give the memory back
        self._tick()
        return event

    def _tick_watchdog(self) -> None:
        if self._gate is not None:
            self._gate.tick()  # pings WATCHDOG=1 only from here, only if the courier thread is alive

    def _tick(self) -> None:
        now = time.monotonic()
        self._tick_watchdog()
        if self._pattern_until is not None and now >= self._pattern_until:
            self._pattern_until = None
            self._show_idle()
        elif self._pattern_until is None and self.state in ("ready", "fault") and now >= self._next_idle:
            self._next_idle = now + IDLE_CHECK_S
            self._show_idle()  # ready <-> queued as the link comes and goes; fault after a battery warning
        if self.battery is not None and now >= self._next_battery:
            self._next_battery = now + BATTERY_POLL_S
            try:
                self.battery.poll()  # fires when_low/when_critical -> events
            except Exception:  # noqa: BLE001 - a flaky gauge must not stop the kit
                log.warning("battery poll failed", exc_info=True)
        if now >= self._next_status:
            self._write_status()
            self._readiness_after_clock_sync()
        if self._next_readiness is not None and now >= self._next_readiness:
            self._publish_readiness("running")
        if self.faults and self.state == "fault" and now >= self._next_reopen:
            self._reopen()
        if self.faults and self._fault_reboot_due(now):
            self._fault_reboot()
        if self._healthy_since is not None and now - self._healthy_since >= FAULT_MARKER_HEALTHY_S:
            self._forget_fault_reboot()

    def _shutdown(self) -> None:
        self.state = "stopping"
        if self.notifier is not None:
            self.notifier.stopping(msg.STOPPING)
        if self.courier is not None:
            try:
                self.courier.stop()
            except Exception:  # noqa: BLE001
                log.warning("courier did not stop cleanly", exc_info=True)
        self._write_status()
        self._tell(msg.STOPPING)

    def close(self) -> None:
        """Release camera, pins and database (after run() returned)."""
        for part in (self.courier, self.camera, self.panel, self.battery, self.store):
            if part is None:
                continue
            try:
                part.close()
            except Exception:  # noqa: BLE001
                log.warning("closing %r failed", part, exc_info=True)

    # -- events ----------------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        if isinstance(event, Press):
            self.presses += 1
            if event.kind == "short":
                self.capture(event)
            else:
                self.report_status(event)
        elif isinstance(event, HoldReached):
            self._show("held")
        elif isinstance(event, LowBattery):
            self.low_battery(event)
        elif isinstance(event, Stop):
            log.info("stopping: %s", event.reason)
            self._stop.set()

    def capture(self, press: Press) -> Verdict:
        """Short press: capture → check → store → send; always ends in a verdict pattern."""
        self.state = "busy"
        self._show("busy")
        self._tell(msg.BUSY)
        steps: dict[str, float] = {}
        if self.faults:  # the KPPS may just have re-seated the cable
            if not self._reopen():
                return self._fail(press, msg.fault_text(self.faults), steps)
            self.state = "busy"
            self._show("busy")
        t = time.monotonic()
        try:
            self.store.check_space(2_000_000)
        except DiskFull as exc:
            return self._fail(press, msg.ERR_DISK_FULL.format(detail=exc), steps)
        try:
            frame = self._camera_wait.call(self.camera.capture)  # the watchdog is fed while it waits
        except (CaptureTimeout, TimeoutError) as exc:
            log.error("camera timeout: %s", exc)
            self._camera_timeouts += 1
            if self._camera_timeouts >= CAMERA_TIMEOUTS_FAULT:
                self._camera_down(f"tidak merespons {self._camera_timeouts} kali berturut-turut")
                return self._fail(press, msg.fault_text(self.faults), steps)
            return self._fail(press, msg.ERR_CAMERA_TIMEOUT, steps)
        except CaptureError as exc:
            self._camera_timeouts = 0
            return self._fail(press, msg.ERR_CAMERA.format(detail=exc), steps)
        self._camera_timeouts = 0
        if self._healthy_since is not None:
            self._forget_fault_reboot()  # a photo: the camera works (a later fault may reboot once again)
        steps["capture"] = _ms_since(t)
        t = time.monotonic()
        try:
            reading = self.reader.read(frame.image)
            data = reading.to_dict()
            status = reading.status
            annotated = getattr(reading, "annotated", None)
            annotated_jpeg = encode_jpeg(annotated, quality=80) if annotated is not None else None
        except Exception as exc:  # noqa: BLE001 - the reader must never take the kit down
            log.exception("reader failed")
            return self._fail(press, msg.ERR_READER.format(detail=f"{type(exc).__name__}: {exc}"), steps)
        if status != "retake":
            status = self._against_other_pages(data, frame.taken_at)
        steps["read"] = _ms_since(t)
        t = time.monotonic()
        latency_ms = _ms_since(press.released_at)
        try:
            record = self.store.save(jpeg=frame.jpeg, status=status, reading=data, taken_at=frame.taken_at,
                                     time_source=self._time_source(), source=frame.source,
                                     annotated_jpeg=annotated_jpeg, latency_ms=latency_ms)
        except DiskFull as exc:
            return self._fail(press, msg.ERR_DISK_FULL.format(detail=exc), steps)
        except ReadOnly as exc:
            self._storage_down(str(exc))
            return self._fail(press, msg.ERR_STORE_READONLY.format(detail=exc), steps)
        except StoreError as exc:
            return self._fail(press, msg.ERR_STORE.format(detail=exc), steps)
        steps["store"] = _ms_since(t)
        if status == "ok":
            text = msg.OK.format(halaman=record.halaman or "?", seq=record.seq)
        elif status == "review":
            text = msg.REVIEW.format(halaman=record.halaman or "?", seq=record.seq,
                                     reasons=msg.reasons_text(data))
        else:
            text = msg.retake_text(data)
        verdict = Verdict(press, status, text, record, data, latency_ms=_ms_since(press.released_at),
                          steps_ms=steps, page_reading=reading)
        self._verdict(verdict)  # the KPPS sees the verdict now; sending is bookkeeping after it
        if status != "retake":
            t = time.monotonic()
            try:
                self._submit_earlier(record)
                self.submit(record, frame.jpeg)
            except Exception:  # noqa: BLE001 - the page is stored and told: it is handed over later (the
                # next press, a long press or a restart), and a failure here is no second verdict
                log.exception("capture %s: handing over to the outbox failed", record.id)
            steps["submit"] = _ms_since(t)
        self._notify(verdict)
        return verdict

    def _against_other_pages(self, data: dict, taken_at: float) -> str:
        """The page's status after the cross-page rules against the TPS's other pages this kit read in the
        last TPS_WINDOW_S: a page that breaks one goes to review (``data`` gains the reason), so the KPPS
        checks the form while it is still at hand. A failure here never costs the page."""
        from inference.reader import check_with_other_pages

        try:
            reason = check_with_other_pages(data, self.store.newest_pages(since=taken_at - TPS_WINDOW_S))
        except Exception:  # noqa: BLE001 - a check that cannot run is no reason to lose the photo
            log.warning("cross-page check failed", exc_info=True)
            reason = None
        if reason is not None:
            data["reasons"] = [*data.get("reasons", []), reason]
            data["status"] = "review"
        return data.get("status", "review")

    def report_status(self, press: Press | None = None) -> str:
        """Long press: tell the status, retry anything not yet handed over, nudge the courier."""
        self.resubmit()
        if self.courier is not None:
            try:
                self.courier.kick()
            except Exception:  # noqa: BLE001
                log.warning("courier.kick failed", exc_info=True)
        counts = self.store.counts()
        cs = self._courier_status()
        queued = _waiting(cs) if cs else counts["unsubmitted"]
        link = "tersambung" if cs.get("connected") else ("tidak ada" if self.courier else "tidak dipakai")
        text = msg.STATUS.format(total=counts["total"], ok=counts["ok"], review=counts["review"],
                                 retake=counts["retake"], queued=queued, link=link)
        self._tell(text)
        self._tell(self._sending_text(queued, connected=bool(cs.get("connected"))))
        if self.faults:
            self._tell(msg.fault_text(self.faults))
        # a page's verdict still showing stays (a long press queued behind a capture must not hide a review)
        if self._pattern_until is None or self._shown not in ("review", "retake"):
            self._show("fault" if self.faults else "queued" if queued else "ready")
        self._write_status()
        return text

    def low_battery(self, event: LowBattery) -> None:
        """Warn; if critical, stop cleanly (the current write is already finished) and power off."""
        level = msg.battery_text(event.level)
        self._show("low_battery")
        self._pattern_until = None
        if not event.critical:
            self._tell(msg.LOW_BATTERY.format(level=level))
            return
        self._tell(msg.SHUTDOWN.format(level=level))
        self.exit_code = EXIT_POWEROFF
        self._stop.set()  # run() stops the courier, then calls power_off

    # -- parts that are down -----------------------------------------------------------------------

    def _fault_began(self) -> None:
        self.state = "fault"
        self._healthy_since = None
        if self._fault_since is None:
            self._fault_since = time.monotonic()
        self._retry_every = self._fault_retry_s
        self._next_reopen = time.monotonic() + self._retry_every
        self._show("fault")
        log.error("kit in fault: %s", "; ".join(f"{k}: {v}" for k, v in self.faults.items()))

    def _camera_down(self, detail: str) -> None:
        """The camera is wedged: let it go (a new one is opened by the retries) and report the fault."""
        camera, self.camera = self.camera, None
        self._camera_timeouts = 0
        # its capture thread may never come back: the next camera gets a waiter of its own
        self._camera_wait = BoundedCall(limit_s=self._camera_wait.limit_s, tick=self._tick_watchdog,
                                        every_s=TICK_S, name="camera")
        if camera is not None:
            try:
                camera.close()
            except Exception:  # noqa: BLE001
                log.warning("closing the wedged camera failed", exc_info=True)
        self.faults["camera"] = detail
        self._fault_began()
        self._publish_readiness("fault")
        self._write_status()

    def _storage_down(self, detail: str) -> None:
        """The state filesystem refuses writes: a fault (no photo can be kept) until a write probe passes
        again (at every press and every retry), not a 'ready' kit whose every press fails."""
        self._openers.setdefault("storage", self.store.probe_writable)
        self.faults["storage"] = detail
        self._fault_began()
        self._publish_readiness("fault")  # queued in the outbox, which is on the same card: it may not be
        self._write_status()

    def _reopen(self) -> bool:
        """Open every part that is down once more; True when none is down any more."""
        for name in list(self.faults):
            opener = self._openers.get(name)
            if opener is None:
                continue
            if self._urgent:  # stopping: not the moment to start an open that may take a minute
                break
            waiter = self._opening.setdefault(name, BoundedCall(
                limit_s=max(OPEN_LIMIT_S, self.config.camera.timeout_s + CAPTURE_GRACE_S),
                tick=self._tick_open, every_s=TICK_S, name=f"open {name}"))
            try:
                part = waiter.call(opener)
            except _OpenAbandoned:
                log.warning("opening %s abandoned: the kit is stopping", name)
                break
            except Exception as exc:  # noqa: BLE001 - stays down; said in the status and the next press
                detail, self.faults[name] = self.faults[name], _describe(exc)
                (log.debug if detail == self.faults[name] else log.warning)("%s still down: %s", name, exc)
                continue
            if name == "camera":
                self.camera = part
            elif name == "model":
                self.reader = part
            del self.faults[name]
            log.info("%s is open again", name)
        if self.faults:
            if self._beat_faults is not None and set(self.faults) != self._beat_faults:
                self._write_status()  # one part is back, another still down: say so now
            self._next_reopen = time.monotonic() + self._retry_every
            self._retry_every = min(2 * self._retry_every, max(FAULT_RETRY_MAX_S, self._fault_retry_s))
            return False
        self._fault_since = None
        self._reboot_considered = False
        self._healthy_since = time.monotonic()
        self.state = "ready"
        self._show("ready")
        self._tell(msg.RECOVERED)
        self._publish_readiness("recovered")
        self._write_status()
        return True

    def _sending_text(self, queued: int, *, connected: bool) -> str:
        """What a long press says of the sending: kept only (--no-send), all sent, resent now (a link), or
        waiting for a signal, the data safe on the kit (no link)."""
        if self.courier is None:
            return msg.NOT_SENDING
        if not queued:
            return msg.SENT_ALL
        return msg.RESEND if connected else msg.QUEUED.format(n=queued)

    def _tick_open(self) -> None:
        """While a part opens: feed the watchdog; stop waiting once a Stop or critical battery is queued."""
        self._tick_watchdog()
        if self._urgent:
            raise _OpenAbandoned

    @property
    def _fault_marker(self) -> Path:
        return self.store.state_dir / FAULT_REBOOT_MARKER

    def _fault_reboot_due(self, now: float) -> bool:
        return (self._fault_reboot_after_s is not None and self._fault_since is not None
                and not self._reboot_considered and not self._stop.is_set()
                and now - self._fault_since >= self._fault_reboot_after_s)

    def _fault_reboot(self) -> None:
        """Reboot once per part that stays down (a wedged camera driver needs it); if that did not mend it,
        stay up and keep sending: a reboot loop would only stop the sending too. The marker names the parts
        already rebooted for; it is forgotten once the kit has worked (a good photo, or a healthy while)."""
        self._reboot_considered = True  # once per fault
        tried = _parts_rebooted_for(self._fault_marker)
        if tried is None or set(self.faults) <= tried:
            log.warning("still down after the reboot for this fault: staying up (%s)", self.faults)
            return
        from firmware.clock import boot_id

        try:
            parts = sorted(tried | set(self.faults))
            # durable: a marker lost with the reboot would let the next boot reboot again
            write_atomic(self._fault_marker, json.dumps({"parts": parts, "faults": self.faults,
                                                         "boot_id": boot_id(), "at": time.time()},
                                                        ensure_ascii=False))
        except OSError as exc:  # without the marker the next boot would reboot again: no reboot at all
            log.error("cannot write %s (%s): no reboot", self._fault_marker, exc)
            return
        self._tell(msg.FAULT_REBOOT.format(parts=msg.fault_parts(self.faults).capitalize()))
        self.exit_code = EXIT_REBOOT
        self._stop.set()

    def _forget_fault_reboot(self) -> None:
        self._healthy_since = None
        try:
            self._fault_marker.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", self._fault_marker, exc)

    # -- sending ---------------------------------------------------------------------------------

    def submit(self, record: CaptureRecord, jpeg: bytes | None = None) -> bool:
        """Hand a committed capture to the courier's outbox (idempotent by capture id)."""
        if self.courier is None:
            return False
        try:
            if jpeg is None:
                jpeg = record.photo_path.read_bytes()
            self.courier.submit_reading(capture_id=record.id, halaman=record.halaman, reading=record.reading,
                                        photo_jpeg=jpeg, taken_at=record.taken_at,
                                        time_source=record.time_source)
        except Exception as exc:  # noqa: BLE001 - kept for the next resubmit (long press or restart)
            log.error("capture %s not handed to the outbox: %s", record.id, exc)
            self.store.mark_submitted(record.id, error=f"{type(exc).__name__}: {exc}")
            return False
        self.store.mark_submitted(record.id)
        return True

    def _submit_earlier(self, record: CaptureRecord) -> None:
        """Hand over, before *record*, the captures taken before it whose hand-over failed: the collector
        takes the newest message of a halaman as its reading, so a page photographed again after a correction
        must not be overtaken by the older photo re-submitted later (long press, restart)."""
        if self.courier is None:
            return
        try:
            earlier = [r for r in self.store.unsubmitted() if r.seq < record.seq]
        except Exception:  # noqa: BLE001 - the new capture is handed over anyway
            log.warning("captures not handed over before %s not listed", record.id, exc_info=True)
            return
        for r in earlier:
            self.submit(r)

    def resubmit(self) -> int:
        """Re-submit every committed ok/review capture without an outbox message; returns how many."""
        if self.courier is None:
            return 0
        done = 0
        for record in self.store.unsubmitted():
            done += self.submit(record)
        if done:
            log.info("re-submitted %d stored capture(s) to the outbox", done)
        return done

    def _courier_alive(self) -> bool:
        c = self.courier
        if c is None:
            return True
        return bool(c.is_alive())

    def _courier_status(self) -> dict:
        if self.courier is None:
            return {}
        try:
            st = self.courier.status()
            return st if isinstance(st, dict) else dict(getattr(st, "__dict__", {}))
        except Exception:  # noqa: BLE001
            return {}

    # -- feedback ----------------------------------------------------------------------------------

    def _verdict(self, verdict: Verdict) -> None:
        self.verdicts += 1
        self.latencies_ms.append(verdict.latency_ms)
        self.state = "fault" if self.faults else "ready"
        self._show(verdict.pattern)
        self._pattern_until = time.monotonic() + self.config.gpio.verdict_s
        self._tell(verdict.message)
        self._write_status()

    def _notify(self, verdict: Verdict) -> None:
        """Hand the finished press (stored and, unless retake, in the outbox) to the listeners."""
        for listener in list(self.on_verdict):
            try:
                listener(verdict)
            except Exception:  # noqa: BLE001
                log.warning("verdict listener failed", exc_info=True)

    def _fail(self, press: Press, text: str, steps: dict[str, float]) -> Verdict:
        verdict = Verdict(press, "error", text, latency_ms=_ms_since(press.released_at), steps_ms=steps)
        self._verdict(verdict)
        self._notify(verdict)
        return verdict

    def _error(self, text: str) -> None:
        self.state = "fault" if self.faults else "ready"
        self._show("error")
        self._pattern_until = time.monotonic() + self.config.gpio.verdict_s
        self._tell(text)

    def _show_idle(self) -> None:
        if self.faults:
            if self._shown != "fault":
                self._show("fault")
            return
        cs = self._courier_status()
        pattern = "queued" if _waiting(cs) and not cs.get("connected", True) else "ready"
        if pattern != self._shown:
            self._show(pattern)

    def _show(self, pattern: str) -> None:
        if pattern != "held":
            self._shown = pattern
        if self.panel is not None:
            try:
                self.panel.show(pattern)
            except Exception:  # noqa: BLE001 - a broken LED must not stop the kit
                log.warning("cannot show %s", pattern, exc_info=True)

    def _tell(self, text: str) -> None:
        self.last_message = text
        self._say(text)
        if self.notifier is not None:
            self.notifier.status(text)

    # -- status file for `tpskit status` -----------------------------------------------------------

    @property
    def status_path(self) -> Path:
        return status_file.status_path(self.store.state_dir)

    def status(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "pid": os.getpid(), "state": self.state, "ready": self.state in ("ready", "busy"),
            "updated_at": time.time(), "kit_id": self.config.kit.kit_id,
            "kode_wilayah": self.config.kit.kode_wilayah, "tps": self.config.kit.tps,
            "presses": self.presses, "verdicts": self.verdicts, "last_message": self.last_message,
            "faults": dict(self.faults),
            "latency_ms": {"median": statistics.median(lat) if lat else None,
                           "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None},
            "courier": self._courier_status(),
            "battery": self.battery.status() if self.battery is not None else None,
        }

    def heartbeat(self) -> dict[str, Any]:
        """For the courier's heartbeat (its thread): a snapshot the main loop refreshed."""
        return dict(self._heartbeat)

    def _write_status(self) -> None:
        self._next_status = time.monotonic() + status_file.STATUS_EVERY_S
        last = self.store.last(1)
        battery = self.battery.status() if self.battery is not None else None
        self._heartbeat = {
            # the faults go in every heartbeat too: a kit whose card refuses writes cannot queue a readiness
            "battery": battery, "state": self.state, "faults": dict(self.faults),
            "last_capture": ({"seq": last[0].seq, "status": last[0].status, "halaman": last[0].halaman,
                              "taken_at": last[0].taken_at, "time_source": last[0].time_source}
                             if last else None),
            "firmware": _version("tpskit"), "model": getattr(getattr(self.reader, "classifier", None),
                                                             "version", None),
            "captures": self.store.counts(),
        }
        faults = frozenset(self.faults)
        if faults != self._beat_faults:  # a part went down or came back (or the first snapshot)
            self._beat_faults = faults
            self._heartbeat_soon()
        try:
            status_file.write_status(self.store.state_dir, self.status())
        except OSError as exc:
            log.warning("cannot write %s: %s", self.status_path, exc)

    def _heartbeat_soon(self) -> None:
        """Ask the courier for a heartbeat as soon as the link is up, carrying the snapshot just taken: it is
        retained, so the operators' fleet view (``tpskit fleet readiness --broker``) sees the kit's faults
        even when the card refuses the readiness that would say so."""
        if self.courier is None or not hasattr(self.courier, "heartbeat"):
            return
        try:
            self.courier.heartbeat()
        except Exception:  # noqa: BLE001 - a heartbeat must never stop the kit
            log.warning("courier.heartbeat failed", exc_info=True)


class _OpenAbandoned(Exception):
    """An open was waited for no longer: a Stop or a critical battery is queued (the open runs on alone)."""


def _waiting(courier_status: dict) -> int:
    """Messages not yet acknowledged by the collector (queued + sent)."""
    return int(courier_status.get("queued", 0) or 0) + int(courier_status.get("sent", 0) or 0)


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001
        return None


def _parts_rebooted_for(marker: Path) -> set[str] | None:
    """The parts a fault reboot was already tried for (empty: none); None if the marker cannot be read
    (then no reboot: better up and sending than a loop)."""
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return set()
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    parts = data.get("parts", list(data.get("faults") or {}))  # older markers: the faults' names
    return {str(p) for p in parts} if isinstance(parts, list | dict) else None


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _ms_since(t0: float) -> float:
    return (time.monotonic() - t0) * 1000.0


def _safe_level(battery) -> float | None:
    try:
        return battery.level()
    except Exception:  # noqa: BLE001
        return None


def run_shutdown_command(command: list[str]) -> int:
    """Run the configured power-off command (outside systemd; under systemd ExecStopPost does it)."""
    if not command:
        return 0
    log.warning("running shutdown command: %s", " ".join(command))
    try:
        return subprocess.run(command, check=False, timeout=60).returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("shutdown command failed: %s", exc)
        return 1


def load_reader(config: Config):
    """The page reader with the digit model (loads the TFLite model: slow, do it before READY)."""
    import importlib

    digits = importlib.import_module("inference.digits")
    reader = importlib.import_module("inference.reader")
    classifier = digits.DigitClassifier.load(config.paths.model, num_threads=1)
    return reader.PageReader(classifier=classifier, known=config.kit.known(), **config.reader.options())


def make_courier(config: Config):
    """The courier for this kit's outbox (same DB file), credentials read from files."""
    from comms.courier import Courier
    from firmware.config import read_secret

    return Courier.from_config(config, signing_key=config.signing_key_path,
                               password=read_secret(config.mqtt.password_file))


def build_kit(config: Config, *, camera=None, reader=None, courier=None, notifier=None, battery=None,
              pin_factory=None, with_courier: bool = True, **kit_options) -> Kit:
    """Open database, camera and model (in that order), then the Kit. A database that does not open is an
    error; a camera or model that does not open is a fault the Kit reports and retries (see the module).

    Anything passed in is used as is (tests, demo); ``courier=None`` with ``with_courier`` builds one.
    """
    from capture import open_camera
    from firmware.hardware import make_pin_factory

    store = CaptureStore(config.paths.state_dir, min_free_mb=config.paths.min_free_mb,
                         volatile_ok=config.paths.volatile_ok)
    opened: list = [store]
    openers: dict[str, Callable[[], Any]] = {}
    faults: dict[str, str] = {}
    try:
        if camera is None:  # a camera that does not open is a fault the kit reports and retries, not a crash
            openers["camera"] = lambda: open_camera(config.camera)
            try:
                camera = open_camera(config.camera)
                opened.append(camera)
            except Exception as exc:  # noqa: BLE001
                faults["camera"] = _describe(exc)
        if reader is None:
            openers["model"] = lambda: load_reader(config)
            try:
                reader = load_reader(config)
            except Exception as exc:  # noqa: BLE001
                faults["model"] = _describe(exc)
        if courier is None and with_courier:
            courier = make_courier(config)
        if pin_factory is None:
            pin_factory = make_pin_factory(config.gpio.pin_factory)
        power = config.power
        if battery is None and (power.low_battery_pin is not None or power.fuel_gauge != "none"):
            from firmware.power import BatteryMonitor

            battery = BatteryMonitor(config.power, pin_factory=pin_factory)
        return Kit(config, camera=camera, reader=reader, store=store, courier=courier, notifier=notifier,
                   battery=battery, pin_factory=pin_factory, openers=openers, faults=faults, **kit_options)
    except BaseException:
        for part in reversed(opened):
            try:
                part.close()
            except Exception:  # noqa: BLE001
                pass
        raise
