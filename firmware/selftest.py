"""Kit self-test and readiness (H-1): every part checked, one verdict, what to do for each failure.

Checks: camera, button (asks for a press), LEDs and buzzer, model (loads and reads a built-in
sample page correctly), storage (writable, free space), clock, battery, broker (reachable with
the kit's credentials), collector (acks a test message). A check skipped on request (``--skip``) was not
tested, so a report with one is not ready ("ready except skipped"). :class:`Report` gives the verdict and
the ``readiness`` body the kit publishes (retained) after each self-test and at every boot
(:func:`boot_report` + :func:`publish_readiness`).

Messages for the technician are in Bahasa Indonesia (the English name of each part follows).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from firmware.clock import FUTURE_TOLERANCE_S
from firmware.config import Config

log = logging.getLogger(__name__)

READINESS_VERSION = 1
CHECKS = ("camera", "button", "leds", "model", "storage", "clock", "battery", "broker", "collector")
LABELS = {
    "camera": "Kamera / camera",
    "button": "Tombol / button",
    "leds": "LED dan buzzer / LEDs and buzzer",
    "model": "Model pembaca / reader model",
    "storage": "Penyimpanan / storage",
    "clock": "Jam / clock",
    "battery": "Baterai / battery",
    "broker": "Broker MQTT",
    "collector": "Collector (ack)",
}
SAMPLE_SEED = 20240214  # Pemilu 2024 voting day: the built-in sample digits are always the same
SAMPLE_PAGE_SEED = 20240215  # the built-in sample page (inference.synth, clean, 2.4 px/mm)
MIN_YEAR = 2024
MAX_YEAR = 2040
SERVICE_HINT = "jika layanan berjalan, hentikan dulu: sudo systemctl stop tpskit"
RUN_SELFTEST = "sudo systemctl stop tpskit; sudo tpskit selftest"  # as docs/technician-guide.md, section 7
REINSTALL = "pasang ulang tpskit (sudo bash scripts/install.sh)"  # technician guide, section 4


@dataclass
class Check:
    """One item of the verdict. ``skipped`` = not tested: not fitted (e.g. no battery sensor configured; does
    not block readiness) or skipped on request (also named in :attr:`Report.skipped`, which does)."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    skipped: bool = False
    ms: float = 0.0

    @property
    def label(self) -> str:
        return LABELS.get(self.name, self.name)


@dataclass
class Report:
    """The verdict: ready only when every check passed and none was skipped on request (``skipped``)."""

    kit_id: str
    kode_wilayah: str
    tps: int
    trigger: str
    checks: list[Check] = field(default_factory=list)
    checked_at: float = field(default_factory=time.time)
    time_source: str = "unknown"
    battery_percent: float | None = None
    skipped: list[str] = field(default_factory=list)  # checks skipped on request (--skip): not tested

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks) and not self.skipped

    @property
    def failing(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def get(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"kit_id": self.kit_id, "kode_wilayah": self.kode_wilayah, "tps": self.tps,
                "ready": self.ready, "trigger": self.trigger, "checked_at": self.checked_at,
                "time_source": self.time_source, "battery_percent": self.battery_percent,
                "failing": [c.name for c in self.failing], "skipped": list(self.skipped),
                "checks": [asdict(c) for c in self.checks]}

    def readiness_body(self) -> dict[str, Any]:
        """The body of the retained ``readiness`` message (short: the collector stores the latest).

        ``{"v": 1, "ready": bool, "trigger": "selftest" | "selftest-probe" | "boot" | "running" | "fault" |
        "recovered" | "clock" (again once NTP synced the clock),
        "checked_at": unix s (kit clock), "time_source": "ntp" | "unsynced" | "unknown",
        "battery_percent": float | null,
        "failing": [{"name", "detail", "fix"}], "skipped": [name], "checks": {name: "ok" | "fail" | "skip"},
        "software": str}``. ``skipped`` names the checks skipped on request (not tested; ``ready`` is then
        false even with nothing failing); a ``"skip"`` in ``checks`` alone may also be a part not fitted.
        """
        return {"v": READINESS_VERSION, "ready": self.ready, "trigger": self.trigger,
                "checked_at": round(self.checked_at, 3), "time_source": self.time_source,
                "battery_percent": self.battery_percent,
                "failing": [{"name": c.name, "detail": c.detail[:160], "fix": c.fix[:160]}
                            for c in self.failing],
                "skipped": list(self.skipped),
                "checks": {c.name: ("skip" if c.skipped else "ok" if c.ok else "fail") for c in self.checks},
                "software": _software_version()}

    def text(self) -> str:
        lines = [f"Tes mandiri kit {self.kit_id} — {self.kode_wilayah} TPS {self.tps}", ""]
        for c in self.checks:
            mark = "LEWAT" if c.skipped else "OK   " if c.ok else "GAGAL"
            lines.append(f"  [{mark}] {c.label:34} {c.detail}")
            if not c.ok and c.fix:
                lines.append(f"          → {c.fix}")
        lines.append("")
        skipped = ", ".join(self.skipped)
        if self.ready:
            lines.append("KESIMPULAN / VERDICT: SIAP / READY")
        elif not self.failing:
            lines.append(f"KESIMPULAN / VERDICT: BELUM SIAP / NOT READY — siap kecuali yang dilewati / ready "
                         f"except skipped: {skipped}; ulangi tanpa --skip")
        else:
            names = ", ".join(c.label for c in self.failing)
            also = f"; dilewati / skipped: {skipped}" if skipped else ""
            lines.append(f"KESIMPULAN / VERDICT: BELUM SIAP / NOT READY — perbaiki: {names}{also}")
        return "\n".join(lines)


def _software_version() -> str:
    try:
        from importlib.metadata import version

        return version("tpskit")
    except Exception:  # noqa: BLE001 - running from a checkout
        return "dev"


def _timed(name: str, fn: Callable[[], Check]) -> Check:
    t0 = time.monotonic()
    try:
        check = fn()
    except Exception as exc:  # noqa: BLE001 - a check that crashes is a failed check, never a crash
        log.exception("self-test %s crashed", name)
        check = Check(name, False, f"kesalahan tak terduga: {type(exc).__name__}: {exc}",
                      "catat pesan ini dan hubungi teknisi kabupaten")
    check.ms = round((time.monotonic() - t0) * 1000, 1)
    return check


# --- individual checks ----------------------------------------------------------------------------

def check_camera(config: Config, *, camera=None) -> Check:
    """Take one photo; judge it with capture.quality when available."""
    from capture import CaptureError, open_camera

    own = camera is None
    try:
        if own:
            camera = open_camera(config.camera)
        frame = camera.capture()
    except CaptureError as exc:
        return Check("camera", False, f"tidak bisa memotret: {exc}",
                     "periksa kabel pita kamera (sisi biru ke arah klip), lalu reboot; " + SERVICE_HINT)
    except Exception as exc:  # noqa: BLE001 - libcamera errors are not CaptureError
        return Check("camera", False, f"kamera tidak terbuka: {type(exc).__name__}: {exc}",
                     "periksa kabel pita kamera dan 'rpicam-hello --list-cameras'; " + SERVICE_HINT)
    finally:
        if own and camera is not None:
            try:
                camera.close()
            except Exception:  # noqa: BLE001
                pass
    h, w = frame.image.shape[:2]
    detail = f"{w}×{h} px, {len(frame.jpeg) // 1024} KB"
    try:
        from capture.quality import assess
    except ImportError:
        return Check("camera", True, detail)
    q = assess(frame.image)
    if not q.ok:
        return Check("camera", True, f"{detail}; foto kurang baik: {', '.join(q.reasons)}",
                     "jalankan 'sudo tpskit calibrate' dengan halaman di bawah kamera")
    return Check("camera", True, detail)


def check_button(config: Config, *, pin_factory=None, timeout_s: float = 20.0,
                 prompt: Callable[[str], None] = print) -> Check:
    """Ask the technician to press the button; wait up to *timeout_s*."""
    from gpiozero import Button
    from gpiozero.exc import GPIOZeroError

    try:
        button = Button(config.gpio.button, pull_up=True, pin_factory=pin_factory)
    except (GPIOZeroError, OSError, RuntimeError) as exc:
        return Check("button", False, f"GPIO{config.gpio.button} tidak bisa dibuka: {exc}", SERVICE_HINT)
    try:
        if button.is_pressed and not button.wait_for_release(timeout=2.0):
            return Check("button", False, f"tombol (GPIO{config.gpio.button}) tertekan terus",
                         "periksa kabel tombol: mungkin terhubung langsung ke GND / tombol macet")
        prompt(f"Tekan tombol kit sekarang (menunggu {timeout_s:.0f} detik) / press the button now")
        if not button.wait_for_press(timeout=timeout_s):
            return Check("button", False,
                         f"tidak ada tekanan dalam {timeout_s:.0f} detik (GPIO{config.gpio.button})",
                         "periksa kabel tombol ke GPIO dan GND; ulangi tes")
        return Check("button", True, f"tekanan diterima (GPIO{config.gpio.button})")
    finally:
        button.close()


def check_outputs(config: Config, *, pin_factory=None, confirm: Callable[[str], bool | None] | None = None,
                  on_s: float = 0.4) -> Check:
    """Light each LED in turn and beep once; ask the technician if a *confirm* callback is given."""
    from gpiozero import LED, Buzzer
    from gpiozero.exc import GPIOZeroError

    g = config.gpio
    parts = [(n, p) for n, p in (("hijau", g.led_green), ("kuning", g.led_yellow), ("merah", g.led_red))
             if p is not None]
    devices = []
    try:
        for name, pin in parts:
            devices.append((name, LED(pin, pin_factory=pin_factory)))
        if g.buzzer is not None:
            devices.append(("buzzer", Buzzer(g.buzzer, pin_factory=pin_factory)))
    except (GPIOZeroError, OSError, RuntimeError) as exc:
        for _, d in devices:
            d.close()
        return Check("leds", False, f"LED/buzzer tidak bisa dibuka: {exc}", SERVICE_HINT)
    try:
        stuck = []
        for name, dev in devices:
            dev.on()
            if not dev.is_active:
                stuck.append(name)
            time.sleep(on_s)
            dev.off()
        names = ", ".join(n for n, _ in devices) or "tidak ada"
        if stuck:
            return Check("leds", False, f"tidak menyala: {', '.join(stuck)}", "periksa kabel LED/buzzer")
        if confirm is not None:
            answer = confirm(f"Apakah LED ({names}) menyala bergantian dan buzzer berbunyi? [y/n]")
            if answer is False:
                return Check("leds", False, "teknisi: LED/buzzer tidak terlihat/terdengar",
                             "periksa polaritas LED (kaki panjang ke GPIO), resistor 330 Ω, kabel GND")
        return Check("leds", True, f"dinyalakan bergantian: {names}")
    finally:
        for _, d in devices:
            d.close()


def check_storage(config: Config, *, db_check: bool = True) -> Check:
    """State dir writable (write + fsync + delete), enough free space, database intact (``db_check``)."""
    state = config.paths.state_dir
    try:
        state.mkdir(parents=True, exist_ok=True)
        probe = state / f".selftest-{os.getpid()}"
        with open(probe, "wb") as fh:
            fh.write(b"tpskit selftest\n" * 64)
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        return Check("storage", False, f"{state} tidak bisa ditulis: {exc.strerror or exc}",
                     "jalankan sebagai pengguna tpskit (sudo -u tpskit) atau periksa kartu SD (mungkin rusak/"
                     "read-only)")
    free_mb = shutil.disk_usage(state).free / 1e6
    need = config.paths.min_free_mb if hasattr(config.paths, "min_free_mb") else 50
    need = max(need, 200)  # a whole election day of photos
    detail = f"{state}: {free_mb:,.0f} MB kosong"
    if free_mb < need:
        return Check("storage", False, f"{detail} (< {need} MB)",
                     "kosongkan kartu SD (ekspor data lama: sudo tpskit export /media/usb) atau pakai "
                     "kartu yang lebih besar")
    db = config.db_path
    if db_check and db.exists():
        import sqlite3

        from comms.outbox import connect_reading

        try:
            con = connect_reading(db)
            try:
                result = con.execute("PRAGMA quick_check").fetchone()[0]
            finally:
                con.close()
        except sqlite3.Error as exc:
            result = str(exc)
        if result != "ok":
            return Check("storage", False, f"database {db} rusak: {result}",
                         "jangan hapus! ekspor data (sudo tpskit export /media/usb) lalu hubungi teknisi "
                         "kabupaten")
        detail += ", database ok"
    return Check("storage", True, detail)


def check_clock(*, now: float | None = None, source: str | None = None) -> Check:
    """The wall clock is plausible; NTP sync is reported (readings never depend on it)."""
    from firmware.clock import time_source

    now = time.time() if now is None else now
    source = time_source() if source is None else source
    year = time.gmtime(now).tm_year
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now))
    if not MIN_YEAR <= year <= MAX_YEAR:
        return Check("clock", False, f"jam kit {stamp} tidak masuk akal (sumber: {source})",
                     "sambungkan ke internet agar jam sinkron (NTP), atau set manual: "
                     "sudo date -u -s 'YYYY-MM-DD HH:MM'")
    if source != "ntp":
        return Check("clock", True, f"{stamp}, belum sinkron NTP ({source}); urutan data memakai nomor urut")
    return Check("clock", True, f"{stamp}, sinkron NTP")


BATTERY_FIX = ("aktifkan I2C (sudo raspi-config nonint do_i2c 0, lalu reboot), periksa UPS HAT dan "
               "'i2cdetect -y 1' (alamat 0x36), dan pin power.low_battery_pin")


def check_battery(config: Config, *, pin_factory=None, gauge=None) -> tuple[Check, float | None]:
    from firmware.power import BatteryMonitor

    try:
        mon = BatteryMonitor(config.power, pin_factory=pin_factory, gauge=gauge)
    except Exception as exc:  # noqa: BLE001 - a BatteryMonitor that cannot even be built
        return Check("battery", False, f"sensor baterai tidak terbaca: {exc}", BATTERY_FIX), None
    try:
        if not mon.has_source:
            return Check("battery", True, "tidak ada sensor baterai di konfigurasi", skipped=True), None
        level = mon.level()
        if mon.line_active:
            return Check("battery", False, "UPS HAT memberi sinyal baterai lemah",
                         "isi baterai / sambungkan listrik sebelum hari H"), level
        if mon.problem:
            return Check("battery", False, f"sensor baterai tidak terbaca: {mon.problem}", BATTERY_FIX), level
        if config.power.fuel_gauge != "none" and level is None:
            return Check("battery", False, "fuel gauge tidak menjawab di I2C",
                         "periksa UPS HAT dan 'i2cdetect -y 1' (alamat 0x36)"), None
        if level is not None and level <= max(config.power.warn_percent, 50.0):
            return Check("battery", False, f"baterai {level:.0f}% (perlu > 50% untuk semalam)",
                         "isi baterai sampai penuh sebelum hari H"), level
        detail = f"{level:.0f}%" if level is not None else "sinyal baterai normal"
        return Check("battery", True, detail), level
    finally:
        mon.close()


def _mqtt_client(config: Config, client_id: str):
    import ssl
    from urllib.parse import urlsplit

    import paho.mqtt.client as mqtt

    from firmware.config import read_secret

    url = urlsplit(config.mqtt.url)
    tls = url.scheme == "mqtts"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    if config.mqtt.username:
        client.username_pw_set(config.mqtt.username, read_secret(config.mqtt.password_file))
    if tls:
        client.tls_set(ca_certs=str(config.mqtt.ca_file) if config.mqtt.ca_file else None,
                       certfile=str(config.mqtt.cert_file) if config.mqtt.cert_file else None,
                       keyfile=str(config.mqtt.key_file) if config.mqtt.key_file else None,
                       cert_reqs=ssl.CERT_REQUIRED)
    return client, url.hostname or "localhost", url.port or (8883 if tls else 1883)


def check_broker(config: Config, *, timeout_s: float = 10.0) -> Check:
    """Connect with the kit's own credentials and wait for CONNACK."""
    import threading

    from firmware.config import ConfigError

    try:
        client, host, port = _mqtt_client(config, f"{config.kit.kit_id}-selftest")
    except (ConfigError, OSError, ValueError) as exc:
        return Check("broker", False, f"kredensial tidak lengkap: {exc}", "ulangi sudo tpskit provision")
    result: dict[str, Any] = {}
    done = threading.Event()

    def on_connect(_c, _u, _flags, reason_code, _props):
        result["rc"] = reason_code
        done.set()

    client.on_connect = on_connect
    where = f"{host}:{port}"
    try:
        client.connect_timeout = timeout_s
        client.connect(host, port, keepalive=30)  # TCP (and TLS): raises at once if refused
        client.loop_start()
        if not done.wait(timeout_s):
            return Check("broker", False, f"{where} tidak menjawab dalam {timeout_s:.0f} detik",
                         "periksa sinyal/modem, APN dan alamat broker di konfigurasi")
        rc = result["rc"]
        if rc.is_failure:
            fix = ("username/password ditolak: periksa file password (sudo tpskit provision --password-file)"
                   if rc.value in (0x04, 0x05, 0x86, 0x87) else "hubungi operator broker kabupaten")
            return Check("broker", False, f"{where} menolak: {rc}", fix)
        return Check("broker", True, f"{where} menerima kredensial kit")
    except OSError as exc:
        return Check("broker", False, f"{where} tidak terjangkau: {exc}",
                     "periksa sinyal/modem, APN dan alamat broker di konfigurasi")
    finally:
        client.loop_stop()
        try:
            client.disconnect()
        except Exception:  # noqa: BLE001
            pass


# --- the whole self-test --------------------------------------------------------------------------

@dataclass
class SelfTestOptions:
    """What to test and how; defaults = everything, non-interactive outputs check."""

    pin_factory: Any = None
    camera: Any = None
    gauge: Any = None
    button_timeout_s: float = 20.0
    ack_timeout_s: float = 20.0
    broker_timeout_s: float = 10.0
    skip: Iterable[str] = ()
    prompt: Callable[[str], None] = print
    confirm: Callable[[str], bool | None] | None = None
    trigger: str = "selftest"


def run_selftest(config: Config, options: SelfTestOptions | None = None) -> Report:
    """Run every check (those in ``options.skip`` are reported as skipped) and return the report."""
    from firmware.clock import time_source

    o = options or SelfTestOptions()
    skip = set(o.skip)
    report = Report(config.kit.kit_id, config.kit.kode_wilayah, config.kit.tps, o.trigger,
                    time_source=time_source(), skipped=[name for name in CHECKS if name in skip])
    battery_level: list[float | None] = [None]

    def battery() -> Check:
        check, battery_level[0] = check_battery(config, pin_factory=o.pin_factory, gauge=o.gauge)
        return check

    steps: dict[str, Callable[[], Check]] = {
        "camera": lambda: check_camera(config, camera=o.camera),
        "button": lambda: check_button(config, pin_factory=o.pin_factory, timeout_s=o.button_timeout_s,
                                       prompt=o.prompt),
        "leds": lambda: check_outputs(config, pin_factory=o.pin_factory, confirm=o.confirm),
        "model": lambda: check_model(config),
        "storage": lambda: check_storage(config),
        "clock": check_clock,
        "battery": battery,
        "broker": lambda: check_broker(config, timeout_s=o.broker_timeout_s),
    }
    for name in CHECKS:
        if name == "collector":
            continue
        if name in skip:
            report.checks.append(Check(name, True, "dilewati (--skip)", skipped=True))
            continue
        report.checks.append(_timed(name, steps[name]))
    report.battery_percent = battery_level[0]
    if "collector" in skip:
        report.checks.append(Check("collector", True, "dilewati (--skip)", skipped=True))
    elif report.get("broker") is not None and not report.get("broker").ok:
        report.checks.append(Check("collector", False, "tidak diuji: broker tidak terjangkau",
                                   "perbaiki koneksi broker dulu"))
    else:
        report.checks.append(_timed("collector", lambda: check_collector(config, report,
                                                                         timeout_s=o.ack_timeout_s)))
    return report


def _sample_digits(classifier) -> tuple[int, int]:
    """Classify the digits 0-9 (twice, two seeds) drawn by inference.handwriting; (correct, total)."""
    import numpy as np

    from inference import handwriting

    rng = np.random.default_rng(SAMPLE_SEED)
    crops, truth = [], []
    for _ in range(2):
        for d in range(10):
            ink = handwriting.render_digit(d, height_px=48, rng=rng)
            crops.append(handwriting.render_box(ink, px_per_mm=4.0, rng=rng, cut_mm=(1.0, 1.0, 1.0, 1.0)))
            truth.append(d)
    labels, _ = classifier.classify(crops)
    return int(sum(int(a) == b for a, b in zip(labels, truth, strict=True))), len(truth)


def _sample_page(classifier) -> tuple[bool, str]:
    """Read the built-in sample page (inference.synth, fixed seed) and compare with what was written."""
    from inference.reader import PageReader
    from inference.synth import make_sample

    sample = make_sample(SAMPLE_PAGE_SEED, 1, condition="clean", scale=0.6)
    reading = PageReader(classifier=classifier).read(sample.image)
    got = reading.to_dict()
    fields = got.get("fields") or got.get("values") or {}
    values = {k: (v.get("value") if isinstance(v, dict) else v) for k, v in fields.items()}
    wrong = [k for k, v in sample.written.items() if k in values and values[k] != v]
    missing = [k for k in sample.written if k not in values]
    status = getattr(reading, "status", got.get("status"))
    if status == "retake" or wrong or len(missing) == len(sample.written):
        what = f"status {getattr(reading, 'status', '?')}, salah: {', '.join(wrong[:5]) or '-'}"
        return False, what
    return True, f"halaman contoh terbaca benar ({len(sample.written) - len(missing)} kotak)"


def check_model(config: Config) -> Check:
    """The digit model loads, classifies known digits and reads the built-in sample page."""
    try:
        from inference.digits import DigitClassifier, DigitModelError
    except ImportError as exc:
        return Check("model", False, f"modul pembaca tidak terpasang: {exc}",
                     REINSTALL)
    try:
        clf = DigitClassifier.load(config.paths.model)
    except (DigitModelError, OSError, ValueError) as exc:
        return Check("model", False, f"model tidak bisa dimuat: {exc}",
                     f"{REINSTALL} atau perbaiki paths.model di konfigurasi")
    version = getattr(clf, "version", "?")
    correct, total = _sample_digits(clf)
    if correct < total * 0.8:
        return Check("model", False, f"model {version} salah membaca angka contoh ({correct}/{total} benar)",
                     "model rusak: pasang ulang tpskit")
    try:
        ok, detail = _sample_page(clf)
    except ImportError:
        return Check("model", True, f"model {version}: angka contoh {correct}/{total} benar "
                                    "(pembaca halaman belum terpasang)")
    if not ok:
        return Check("model", False, f"model {version}: halaman contoh tidak terbaca benar ({detail})",
                     "pasang ulang tpskit; jika tetap gagal hubungi teknisi kabupaten")
    return Check("model", True, f"model {version}: {detail}")


def _courier(config: Config, **overrides):
    from comms.courier import Courier
    from firmware.config import read_secret

    return Courier.from_config(config, password=read_secret(config.mqtt.password_file), **overrides)


def _wait_acked(config: Config, msg_id: str, timeout_s: float) -> str | None:
    from comms.outbox import Outbox

    box = Outbox(config.db_path)
    try:
        deadline = time.monotonic() + timeout_s
        state = box.state_of(msg_id)
        while state != "acked" and time.monotonic() < deadline:
            time.sleep(0.1)
            state = box.state_of(msg_id)
        return state
    finally:
        box.close()


def check_collector(config: Config, report: Report, *, timeout_s: float = 20.0) -> Check:
    """Send a signed test message (a provisional readiness) and wait for the collector's end-to-end ack."""
    probe = Report(report.kit_id, report.kode_wilayah, report.tps, "selftest-probe", list(report.checks),
                   time_source=report.time_source, battery_percent=report.battery_percent,
                   skipped=list(report.skipped))
    probe.checks.append(Check("collector", False, "sedang diuji"))
    courier = _courier(config, client_id=f"{config.kit.kit_id}-selftest")
    try:
        msg_id = courier.publish_retained("readiness", probe.readiness_body())
        courier.start()
        state = _wait_acked(config, msg_id, timeout_s)
        status = courier.status()
    finally:
        courier.close()
    if state == "acked":
        return Check("collector", True, f"pesan uji {msg_id} diterima dan di-ack collector")
    if state == "sent":
        return Check("collector", False, f"broker menerima pesan uji, collector tidak membalas ack dalam "
                                         f"{timeout_s:.0f} detik",
                     "hubungi operator collector kabupaten: collector mati atau kit belum ada di registry "
                     "(kirim baris registry dari sudo tpskit provision --export)")
    err = status.get("last_error") or "tidak terkirim"
    return Check("collector", False, f"pesan uji tidak terkirim ({err})",
                 "periksa koneksi dan kredensial broker, ulangi tes")


# --- readiness ------------------------------------------------------------------------------------

SELFTEST_FILE = "selftest.json"


def save_report(config: Config, report: Report) -> Path | None:
    """Keep the last self-test in <state_dir>/selftest.json (boot readiness refers to it)."""
    import json

    from comms.durable import write_atomic

    path = config.paths.state_dir / SELFTEST_FILE
    try:
        write_atomic(path, json.dumps(report.to_dict(), indent=1) + "\n", mode=0o644)
    except OSError as exc:
        log.warning("cannot save self-test report %s: %s", path, exc)
        return None
    return path


def last_selftest(config: Config) -> dict | None:
    import json

    try:
        return json.loads((config.paths.state_dir / SELFTEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def boot_report(config: Config, *, battery=None, max_age_days: float = 14.0, trigger: str = "boot",
                faults: dict[str, str] | None = None) -> Report:
    """Readiness at boot (and again while running, ``trigger="running"``; ``"fault"``/``"recovered"`` when a
    part goes down or comes back), for the Kit to publish once it runs.

    Cheap, non-interactive: camera and model are ok unless named in ``faults`` (part -> what went wrong: the
    kit runs without them and retries); the database is open by construction; storage, clock and battery are
    checked now; the button/LED/broker/collector results come from the last self-test, which must be
    recent and passing for the kit to count as ready (checks it skipped stay skipped: not ready).
    """
    from firmware.clock import time_source

    report = Report(config.kit.kit_id, config.kit.kode_wilayah, config.kit.tps, trigger,
                    time_source=time_source())
    faults = faults or {}
    for name, ok_detail, fix in (
            ("camera", "terbuka", "matikan Pi, periksa kabel pita kamera, lalu nyalakan (reboot): kamera "
                                   "hanya dikenali saat boot; kit mencoba membukanya lagi sendiri"),
            ("model", "dimuat", f"{REINSTALL}; kit mencoba memuatnya lagi")):
        if name in faults:
            report.checks.append(Check(name, False, f"tidak bisa dipakai: {faults[name]}", fix))
        else:
            report.checks.append(Check(name, True, ok_detail))
    if "storage" in faults:  # the running kit found its card refusing writes (firmware.app: storage fault)
        report.checks.append(Check("storage", False, f"tidak bisa ditulis: {faults['storage']}",
                                   "periksa kartu SD (journalctl -k); salin dulu datanya, lalu ganti "
                                   "kartu; kit mencoba menulis lagi sendiri"))
    else:  # the database was just opened by the kit; a full quick_check of a big DB would stall the main loop
        report.checks.append(_timed("storage", lambda: check_storage(config, db_check=False)))
    report.checks.append(_timed("clock", check_clock))
    if battery is not None:
        level = battery.level() if battery.has_source else None
        report.battery_percent = level
        if battery.has_source and battery.low:
            report.checks.append(Check("battery", False, f"baterai lemah ({level}%)", "isi baterai"))
        elif battery.problem:  # the kit runs without it: no warning, no safe shutdown on a low battery
            report.checks.append(Check("battery", False, f"sensor baterai tidak terbaca: {battery.problem}",
                                       BATTERY_FIX))
        else:
            report.checks.append(Check("battery", True, f"{level}%" if level is not None else "normal",
                                       skipped=not battery.has_source))
    last = last_selftest(config)
    if last is None:
        report.checks.append(Check("selftest", False, "tes mandiri belum pernah dijalankan",
                                   f"jalankan: {RUN_SELFTEST}"))
        return report
    check = _last_selftest_check(config, last, max_age_days=max_age_days)
    if check.ok:
        report.skipped = [str(name) for name in last.get("skipped") or []]
    report.checks.append(check)
    return report


def _last_selftest_check(config: Config, last: dict, *, max_age_days: float) -> Check:
    """Whether the last self-test (``selftest.json``) still vouches for this kit: same identity, passed
    (its skipped checks aside), not older than *max_age_days* and not dated in the future."""
    checked_at = float(last.get("checked_at", 0))
    age_d = (time.time() - checked_at) / 86400
    skipped = [str(name) for name in last.get("skipped") or []]
    same_kit = (last.get("kit_id"), last.get("kode_wilayah"), last.get("tps")) == (
        config.kit.kit_id, config.kit.kode_wilayah, config.kit.tps)
    if not same_kit:
        return Check("selftest", False, "tes mandiri terakhir untuk identitas lain",
                     f"jalankan ulang: {RUN_SELFTEST}")
    if last.get("failing") or not (last.get("ready") or skipped):
        failing = ", ".join(last.get("failing", [])) or "?"
        return Check("selftest", False, f"tes mandiri terakhir gagal: {failing}",
                     f"perbaiki lalu jalankan ulang: {RUN_SELFTEST}")
    if age_d * 86400 < -FUTURE_TOLERANCE_S:  # the clock was ahead then: its age (and validity) is unknown
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(checked_at))
        return Check("selftest", False, f"tes mandiri terakhir bertanggal {stamp}, di masa depan (jam kit "
                                        "salah saat tes)",
                     f"sambungkan ke internet agar jam sinkron (NTP), lalu jalankan ulang: {RUN_SELFTEST}")
    if age_d > max_age_days:
        return Check("selftest", False, f"tes mandiri terakhir {age_d:.0f} hari lalu",
                     f"jalankan ulang: {RUN_SELFTEST}")
    detail = f"lulus {max(age_d, 0) * 24:.0f} jam lalu"
    if skipped:
        detail += f", kecuali yang dilewati: {', '.join(skipped)}"
    return Check("selftest", True, detail)


def publish_readiness(courier, report: Report) -> str | None:
    """Queue the signed, retained readiness message (delivered when the link is up); returns its id."""
    try:
        return courier.publish_retained("readiness", report.readiness_body())
    except Exception:  # noqa: BLE001 - readiness must never stop the kit
        log.warning("cannot queue readiness", exc_info=True)
        return None


def publish_after_selftest(config: Config, report: Report, *, wait_s: float = 10.0) -> tuple[str | None, str]:
    """Queue the final readiness and try to deliver it now; returns (msg_id, state)."""
    try:
        courier = _courier(config, client_id=f"{config.kit.kit_id}-selftest")
    except Exception as exc:  # noqa: BLE001 - no key, bad config: reported, never a crash
        log.warning("cannot open the courier: %s", exc)
        return None, f"tidak bisa membuka outbox: {exc}"
    try:
        msg_id = publish_readiness(courier, report)
        if msg_id is None:
            return None, "gagal"
        broker = report.get("broker")
        if broker is None or not broker.ok:
            return msg_id, "queued"
        courier.start()
        state = _wait_acked(config, msg_id, wait_s) or "queued"
        return msg_id, state
    finally:
        courier.close()
