"""Provisioning a kit for H-1: identity (kode wilayah + TPS), broker, DPT, Ed25519 key.

Idempotent: running it again with the same input changes nothing and prints the
same public key. It refuses bad input with a message saying what was wrong and
what to do, and it never overwrites an existing key or unsent data without
``force`` (then the old data is moved to ``<state_dir>/archive/``, never deleted).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from comms.durable import write_atomic
from comms.outbox import connect_reading
from firmware import config as cfg
from firmware.tomlwrite import dumps

log = logging.getLogger(__name__)

SERVICE_USER = "tpskit"
DPT_MAX_2024 = 300  # PKPU: at most 300 voters per TPS in Pemilu 2024
# Kemendagri province codes (38 provinces since 2022).
PROVINCES: frozenset[int] = frozenset(
    [*range(11, 20), 21, *range(31, 37), *range(51, 54), *range(61, 66), *range(71, 77), 81, 82,
     *range(91, 97)])
REQUEST_KEYS = {"kode_wilayah", "tps", "dpt", "kit_id", "broker", "username", "password", "password_file",
                "ca_file", "collector_key_file", "topic_prefix", "state_dir"}
COLLECTOR_KEY_NAME = "collector.pub"  # beside the config: the collectors' ack public key


class ProvisionError(ValueError):
    """Provisioning refused; the message says what was wrong and what to do."""


# --- validation ---------------------------------------------------------------------------------------

def validate_kode_wilayah(value: str) -> str:
    value = str(value).strip()
    if not re.fullmatch(cfg.KODE_WILAYAH_PATTERN, value):
        raise ProvisionError(
            f"kode wilayah {value!r} salah format: harus NN.NN.NN.NNNN (provinsi.kabkota.kecamatan.desa), "
            "contoh 31.71.01.1001 / kode wilayah must look like 31.71.01.1001")
    prov, kab, kec, desa = value.split(".")
    if int(prov) not in PROVINCES:
        raise ProvisionError(f"kode provinsi {prov} pada {value!r} tidak dikenal (11–96 menurut Kemendagri): "
                             "periksa kode wilayah / unknown province code")
    if int(kab) == 0 or int(kec) == 0:
        raise ProvisionError(f"kode kabupaten/kota dan kecamatan pada {value!r} tidak boleh 00: "
                             "periksa kode wilayah / regency and district codes cannot be 00")
    if not 1001 <= int(desa) <= 2999:
        raise ProvisionError(f"kode desa/kelurahan {desa} pada {value!r} tidak wajar (kelurahan 1001–1999, "
                             "desa 2001–2999): periksa kode wilayah / implausible village code")
    return value


def validate_tps(value) -> int:
    try:
        tps = int(str(value).strip())
    except ValueError:
        raise ProvisionError(f"nomor TPS {value!r} bukan angka: isi 1–999 / TPS must be a number") from None
    if not 1 <= tps <= 999:
        raise ProvisionError(f"nomor TPS {tps} di luar 1–999 / TPS number must be 1–999")
    return tps


def validate_dpt(value) -> int | None:
    if value is None or value == "":
        return None
    try:
        dpt = int(str(value).strip())
    except ValueError:
        raise ProvisionError(f"DPT {value!r} bukan angka: isi jumlah pemilih terdaftar "
                             "/ DPT must be a number") from None
    if dpt < 1:
        raise ProvisionError(f"DPT {dpt} harus minimal 1 / DPT must be at least 1")
    if dpt > DPT_MAX_2024:
        raise ProvisionError(f"DPT {dpt} melebihi batas {DPT_MAX_2024} pemilih per TPS pada Pemilu 2024: "
                             f"periksa angka DPT dari KPU / Pemilu 2024 allows at most {DPT_MAX_2024} "
                             "voters per TPS")
    return dpt


def validate_broker(url: str) -> str:
    url = str(url).strip()
    if not re.fullmatch(r"mqtts?://[^/\s:]+(:\d+)?/?", url):
        raise ProvisionError(f"alamat broker {url!r} salah: harus mqtts://host:port (atau mqtt:// untuk uji) "
                             "/ broker must be mqtts://host:port")
    parts = urlsplit(url)
    try:
        port = parts.port  # raises on a port above 65535
    except ValueError:
        port = 0
    if port == 0:
        raise ProvisionError(f"port pada {url!r} tidak sah (1–65535, biasanya 8883) / bad port in broker URL")
    return url


def default_kit_id(kode_wilayah: str, tps: int) -> str:
    """``kit-3171011001-005``: readable, unique per TPS, valid as an MQTT client id."""
    return f"kit-{kode_wilayah.replace('.', '')}-{tps:03d}"


def validate_kit_id(value: str) -> str:
    value = str(value).strip()
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
        raise ProvisionError(f"kit id {value!r} tidak sah: huruf, angka, . _ - saja, maks 64 "
                             "/ kit id may only use letters, digits, . _ -")
    return value


def read_text(path: Path, what: str, *, encoding: str = "utf-8") -> str:
    """The text of a file the technician gave, or a ProvisionError naming it (unreadable, not UTF-8)."""
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError:
        raise ProvisionError(f"{what} {path} bukan teks UTF-8: simpan ulang sebagai UTF-8 "
                             f"/ {path.name} is not UTF-8 text: save it as UTF-8") from None
    except OSError as exc:
        raise ProvisionError(f"{what} {path} tidak bisa dibaca ({exc.strerror or exc}) "
                             f"/ cannot read {path.name}") from None


# --- request ------------------------------------------------------------------------------------------

@dataclass
class ProvisionRequest:
    """What the technician gives (from the command line and/or one file per kit)."""

    kode_wilayah: str
    tps: int
    broker: str
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    dpt: int | None = None
    kit_id: str | None = None
    ca_file: Path | None = None
    collector_key_file: Path | None = None
    topic_prefix: str | None = None
    state_dir: Path | None = None

    def validated(self) -> ProvisionRequest:
        kode = validate_kode_wilayah(self.kode_wilayah)
        tps = validate_tps(self.tps)
        return ProvisionRequest(
            kode_wilayah=kode, tps=tps, broker=validate_broker(self.broker),
            username=(self.username or None), password=self.password,
            password_file=Path(self.password_file) if self.password_file else None,
            dpt=validate_dpt(self.dpt),
            kit_id=validate_kit_id(self.kit_id) if self.kit_id else default_kit_id(kode, tps),
            ca_file=Path(self.ca_file) if self.ca_file else None,
            collector_key_file=Path(self.collector_key_file) if self.collector_key_file else None,
            topic_prefix=self.topic_prefix,
            state_dir=Path(self.state_dir) if self.state_dir else None)

    @property
    def kabupaten(self) -> str:
        return ".".join(self.kode_wilayah.split(".")[:2])


def read_request_file(path: Path | str) -> dict:
    """One kit's provisioning file (TOML or JSON); unknown keys are refused."""
    path = Path(path)
    text = read_text(path, "file provisioning")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProvisionError(f"file provisioning {path} rusak ({exc}): perbaiki formatnya "
                             "/ file is not valid TOML/JSON") from None
    if not isinstance(data, dict):
        raise ProvisionError(f"file provisioning {path}: harus berisi satu tabel/objek per kit / the file "
                             "must hold one TOML table or JSON object for one kit")
    data = dict(data.get("provision", data))
    if "url" in data and "broker" not in data:
        data["broker"] = data.pop("url")
    unknown = set(data) - REQUEST_KEYS
    if unknown:
        raise ProvisionError(f"file provisioning {path}: kunci tidak dikenal / unknown keys "
                             f"{sorted(unknown)}; yang boleh / allowed: {sorted(REQUEST_KEYS)}")
    # a relative path is beside the file (on the same USB stick)
    for key in ("password_file", "ca_file", "collector_key_file"):
        if isinstance(data.get(key), str) and data[key] and not Path(data[key]).is_absolute():
            data[key] = str(path.parent / data[key])
    return data


# --- result -------------------------------------------------------------------------------------------

@dataclass
class ProvisionResult:
    kit_id: str
    kode_wilayah: str
    tps: int
    config_path: Path
    key_path: Path
    public_key: str
    public_key_path: Path
    registry_csv: str
    key_created: bool
    config_changed: bool
    archived: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"kit_id": self.kit_id, "kode_wilayah": self.kode_wilayah, "tps": self.tps,
                "config": str(self.config_path), "key": str(self.key_path), "public_key": self.public_key,
                "public_key_file": str(self.public_key_path), "registry_csv": self.registry_csv,
                "key_created": self.key_created, "config_changed": self.config_changed,
                "archived": [str(p) for p in self.archived], "notes": self.notes}


# --- helpers ------------------------------------------------------------------------------------------

def _service_ids(user: str) -> tuple[int, int] | None:
    """(uid, gid) of the service user if we are root and it exists, else None."""
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        pw = pwd.getpwnam(user)
    except (KeyError, ImportError):
        return None
    return pw.pw_uid, pw.pw_gid


def _chown(path: Path, ids: tuple[int, int] | None) -> None:
    if ids is not None:
        os.chown(path, *ids)


def fix_state_ownership(state_dir: Path, *, service_user: str = SERVICE_USER) -> int:
    """Run as root (provision, calibrate, selftest): give everything under *state_dir* to the service user,
    so the daemon can write the database and photos created by a root command. Returns files changed."""
    ids = _service_ids(service_user)
    if ids is None or not state_dir.exists():
        return 0
    changed = 0
    for p in [state_dir, *state_dir.rglob("*")]:
        try:
            st = p.lstat()
            if (st.st_uid, st.st_gid) != ids:
                os.lchown(p, *ids)
                changed += 1
        except OSError:
            continue
    return changed


# outbox bookkeeping, never data: the payloads of its rows and its sequence counters
OUTBOX_BOOKKEEPING = frozenset({"outbox_payloads", "outbox_counters"})


def _table_rows(con: sqlite3.Connection, table: str) -> int:
    """Rows of *table* that hold data: all of them, except the outbox's messages the collector acked."""
    if table == "outbox":
        columns = {r[1] for r in con.execute('PRAGMA table_info("outbox")')}
        if "state" in columns:
            return con.execute("SELECT COUNT(*) FROM outbox WHERE state != 'acked'").fetchone()[0]
    return con.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]


def stored_data(state_dir: Path) -> list[str]:
    """What the kit holds that may not have been delivered: captures (and other tables), unacked outbox
    messages, photos. Acked messages (a self-test's readiness) and outbox counters are not data."""
    found: list[str] = []
    db = state_dir / "tpskit.db"
    if db.exists():
        try:
            con = connect_reading(db, timeout_s=5)
            try:
                tables = [r[0] for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
                for t in tables:
                    n = 0 if t in OUTBOX_BOOKKEEPING else _table_rows(con, t)
                    if n:
                        found.append(f"{n} baris di tabel {t}")
            finally:
                con.close()
        except sqlite3.Error as exc:
            found.append(f"database {db} tidak terbaca ({exc})")
    photos = state_dir / "photos"
    if photos.is_dir():
        n = sum(1 for p in photos.rglob("*") if p.is_file())
        if n:
            found.append(f"{n} foto di {photos}")
    return found


def _archivable(state_dir: Path) -> bool:
    """Whether *state_dir* has a database or photos to move aside."""
    return any(state_dir.glob("tpskit.db*")) or (state_dir / "photos").exists()


def _archive(state_dir: Path, label: str) -> Path:
    """Move tpskit.db* and photos/ aside (never delete): ``<state_dir>/archive/<time>-<label>/``."""
    dest = state_dir / "archive" / f"{time.strftime('%Y%m%dT%H%M%S')}-{label}"
    dest.mkdir(parents=True, exist_ok=False)
    for p in [*state_dir.glob("tpskit.db*"), state_dir / "photos"]:
        if p.exists():
            shutil.move(str(p), dest / p.name)
    return dest


def _read_existing(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProvisionError(f"config {path} yang ada rusak ({exc}): perbaiki atau pindahkan dulu, "
                             "atau ulangi dengan --force / existing config is unreadable") from None


def _new_password(req: ProvisionRequest, secret_path: Path) -> str | None:
    """The MQTT password to store (read and checked, nothing written), or None when there is none."""
    if req.password is not None:
        secret = req.password
    elif req.password_file is not None:
        if req.password_file.resolve() == secret_path.resolve() and secret_path.exists():
            return None  # already where tpskit.service loads it
        secret = read_text(req.password_file, "file password").strip()
    else:
        return None
    if not secret:
        raise ProvisionError("password MQTT kosong / the MQTT password is empty")
    return secret


def read_ca(path: Path) -> str:
    """The broker's CA bundle (PEM), read and checked: it is copied, the file given may be on a USB stick."""
    text = read_text(path, "file CA")
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ProvisionError(f"file CA {path} tidak berisi sertifikat PEM (-----BEGIN CERTIFICATE-----) "
                             f"/ {path.name} is not a PEM CA certificate")
    return text


def read_collector_key(path: Path) -> str:
    """The collectors' ack public key (base64 or PEM, ``<ack key>.pub`` of ``tpskit collector --ack-key``),
    read and checked: it is copied, the file given may be on a USB stick."""
    from comms.signing import KeyFileError, load_public_key, public_key_b64

    path = Path(path)
    public = path.with_name(path.name + ".pub")
    if path.suffix == ".key" or public.is_file():
        # the collector's private key looks the same (32 bytes, base64): a kit with it would refuse every ack,
        # and the secret that signs them would be on every kit
        raise ProvisionError(
            f"file kunci collector {path} adalah kunci PRIBADI collector, jangan disalin ke kit: pakai "
            f"{public.name} / {path.name} is the collector's PRIVATE key: give its public key {public.name}")
    text = read_text(path, "kunci collector")
    try:
        return public_key_b64(load_public_key(text)) + "\n"
    except KeyFileError:
        raise ProvisionError(
            f"file kunci collector {path} bukan kunci publik Ed25519 (base64 atau PEM): pakai ack.key.pub "
            "dari server collector (/var/lib/tpskit-collector/ack.key.pub) / not an Ed25519 public key: give "
            "the collector's ack.key.pub") from None


def _write_if_changed(path: Path, text: str, *, mode: int) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        write_atomic(path, text, mode=mode)


def _store_password(secret: str, secret_path: Path) -> None:
    """Put the MQTT password where tpskit.service loads it (LoadCredential=mqtt-password:...)."""
    if secret_path.exists() and secret_path.read_text(encoding="utf-8").strip() == secret:
        return
    write_atomic(secret_path, secret + "\n", mode=0o600)


def _existing_key(key_path: Path):
    """The kit's key if it has one (never replaced without --new-key), else None."""
    from comms import signing

    if not key_path.exists():
        return None
    try:
        return signing.load_private_key(key_path)
    except signing.KeyFileError as exc:
        raise ProvisionError(f"{exc}. Kunci yang ada tidak ditimpa; pakai --force --new-key untuk "
                             "membuat kunci baru (yang lama disimpan) / key unreadable") from None


# --- the operation ------------------------------------------------------------------------------------

CONFIG_HEADER = ("tpskit configuration, written by 'tpskit provision' and 'tpskit calibrate'.\n"
                 "Every key is described in firmware/config.py; unknown keys are refused at start.")


def _refuse_while_running(state_dir: Path) -> None:
    """The running kit keeps the identity, broker and password it started with, and would go on writing
    into a database moved to archive/: it is stopped first, whatever --force says."""
    from firmware.status_file import daemon_state

    state = daemon_state(Path(state_dir))
    if state.get("running"):
        raise ProvisionError(
            f"layanan tpskit sedang berjalan (pid {state.get('pid')}, kit {state.get('kit_id')}): hentikan "
            "dulu dengan 'sudo systemctl stop tpskit', ulangi provision, lalu 'sudo systemctl start tpskit' "
            "/ the kit's service is running: stop it first, provision again, then start it")


def provision(req: ProvisionRequest, *, config_out: Path | str = cfg.DEFAULT_PATH, force: bool = False,
              new_key: bool = False, service_user: str = SERVICE_USER,
              secret_path: Path | str | None = None, volatile_ok: bool = False) -> ProvisionResult:
    """Write the config, the password credential and the key; see the module docstring."""
    from comms import signing

    req = req.validated()
    config_out = Path(config_out)
    try:
        existing = _read_existing(config_out)
    except ProvisionError:
        if not force:
            raise
        existing = {}
    data: dict = {k: dict(v) if isinstance(v, dict) else v for k, v in existing.items()}
    old_kit = data.get("kit", {})
    state_dir = req.state_dir or Path(data.get("paths", {}).get("state_dir") or cfg.PathsConfig().state_dir)
    if new_key and not force:
        raise ProvisionError("--new-key membuang identitas kunci lama: ulangi bersama --force "
                             "/ --new-key needs --force")
    _refuse_while_running(state_dir)

    notes: list[str] = []
    archived: list[Path] = []
    identity_changed = bool(old_kit) and (
        old_kit.get("kode_wilayah"), old_kit.get("tps"), old_kit.get("kit_id")) != (
        req.kode_wilayah, req.tps, req.kit_id)
    held = stored_data(state_dir) if identity_changed else []
    if held and not force:
        raise ProvisionError(
            f"kit ini sudah disiapkan untuk {old_kit.get('kit_id')} ({old_kit.get('kode_wilayah')} "
            f"TPS {old_kit.get('tps')}) dan masih menyimpan data: {'; '.join(held)}. Kirim/ekspor "
            "dulu ('sudo tpskit export /media/usb'), lalu ulangi dengan --force (data lama dipindah ke "
            "archive/, tidak dihapus) / the kit holds data of another TPS: export it, then use --force")

    # config: built and validated before anything is moved or written
    secret_path = Path(secret_path) if secret_path else config_out.parent / "mqtt-password"
    secret = _new_password(req, secret_path)
    password_path = secret_path if req.password is not None or req.password_file is not None else None
    # the broker's CA goes beside the config: the file given may be on a USB stick the technician takes away
    ca_path = config_out.parent / "ca.pem"
    ca_text = read_ca(req.ca_file) if req.ca_file is not None else None
    # the collectors' ack key likewise: with it the kit takes only their signed acks (also from a USB stick)
    collector_key_path = config_out.parent / COLLECTOR_KEY_NAME
    collector_key = read_collector_key(req.collector_key_file) if req.collector_key_file is not None else None
    kit = {"kit_id": req.kit_id, "kode_wilayah": req.kode_wilayah, "tps": req.tps}
    if req.dpt is not None:
        kit["dpt"] = req.dpt
    data["kit"] = kit
    mqtt = data.setdefault("mqtt", {})
    mqtt["url"] = req.broker
    for key, value in (("username", req.username), ("password_file", password_path),
                       ("ca_file", ca_path if ca_text is not None else None),
                       ("collector_key_file", collector_key_path if collector_key is not None else None),
                       ("topic_prefix", req.topic_prefix)):
        if value is not None:
            mqtt[key] = str(value)
    if req.state_dir is not None:
        data.setdefault("paths", {})["state_dir"] = str(req.state_dir)
    if volatile_ok:
        data.setdefault("paths", {})["volatile_ok"] = True
    try:
        conf = cfg.parse(data)
    except cfg.ConfigError as exc:
        raise ProvisionError("konfigurasi hasil provisioning tidak sah / resulting config is invalid: "
                             f"{exc}") from None
    text = dumps(data, header=CONFIG_HEADER)
    key = None if new_key else _existing_key(conf.signing_key_path)
    if identity_changed and _archivable(state_dir):  # the new identity starts its own outbox and sequence
        archived.append(_archive(state_dir, str(old_kit.get("kit_id") or "old")))
        notes.append(f"data lama dipindahkan ke {archived[-1]}")
    if secret is not None:
        _store_password(secret, secret_path)
    elif not secret_path.exists():  # (a broker with client certificates): the config names no password file,
        # but tpskit.service loads this one as a credential, and systemd will not start a unit whose
        # credential file is missing (243/CREDENTIALS)
        write_atomic(secret_path, "", mode=0o600)
    if ca_text is not None:
        _write_if_changed(ca_path, ca_text, mode=0o644)
    if collector_key is not None:
        _write_if_changed(collector_key_path, collector_key, mode=0o644)
    changed = not config_out.exists() or config_out.read_text(encoding="utf-8") != text
    if changed:
        write_atomic(config_out, text, mode=0o644)

    # state dir and key
    ids = _service_ids(service_user)
    state_dir.mkdir(parents=True, exist_ok=True)
    key_path = conf.signing_key_path
    key_path.parent.mkdir(parents=True, exist_ok=True)
    for d in {state_dir, key_path.parent}:
        os.chmod(d, 0o700)
        _chown(d, ids)
    created = False
    if key_path.exists() and new_key:
        backup = key_path.with_name(f"{key_path.name}.{time.strftime('%Y%m%dT%H%M%S')}.bak")
        os.replace(key_path, backup)
        notes.append(f"kunci lama disimpan sebagai {backup}")
    if key is None:
        key = signing.generate_key()
        signing.save_private_key(key, key_path)
        created = True
    os.chmod(key_path, 0o600)
    _chown(key_path, ids)

    public = signing.public_key_b64(key)
    pub_path = key_path.with_name("kit.pub")
    pub_text = public + "\n"
    if not pub_path.exists() or pub_path.read_text() != pub_text:
        write_atomic(pub_path, pub_text, mode=0o644)
    pem_path = key_path.with_name("kit.pub.pem")
    pem_text = signing.public_key_pem(key)
    if not pem_path.exists() or pem_path.read_text() != pem_text:
        write_atomic(pem_path, pem_text, mode=0o644)
    for p in (pub_path, pem_path):
        _chown(p, ids)
    fix_state_ownership(state_dir, service_user=service_user)
    return ProvisionResult(
        kit_id=req.kit_id, kode_wilayah=req.kode_wilayah, tps=req.tps, config_path=config_out,
        key_path=key_path, public_key=public, public_key_path=pub_path,
        registry_csv=f"{req.kit_id},{public},{req.kode_wilayah},{req.tps}",
        key_created=created, config_changed=changed, archived=archived, notes=notes)


def export_public(result: ProvisionResult, directory: Path | str) -> Path:
    """Write ``<kit_id>.csv`` (a registry row with header) into *directory*, e.g. a USB stick."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{result.kit_id}.csv"
    write_atomic(path, "kit_id,public_key,kode_wilayah,tps\n" + result.registry_csv + "\n", mode=0o644)
    return path


# --- a regency prepares hundreds of kits at once ------------------------------------------------------

@dataclass
class PreparedKit:
    kit_id: str
    kode_wilayah: str
    tps: int
    dpt: int | None
    username: str
    path: Path
    created: bool


def prepare_batch(csv_path: Path | str, *, broker: str, out_dir: Path | str,
                  ca_file: Path | str | None = None, collector_key_file: Path | str | None = None,
                  topic_prefix: str | None = None) -> list[PreparedKit]:
    """From a spreadsheet (CSV: ``kode_wilayah,tps[,dpt][,kit_id]``) write one provisioning file per kit.

    Writes ``<out_dir>/kits/<kit_id>.toml`` (0600, with a generated MQTT password; for
    ``tpskit provision --from``), ``mosquitto-passwords.txt`` (``user:password`` lines for
    ``mosquitto_passwd -U``), ``mosquitto-acl.conf`` (each kit may publish only under its own TPS),
    ``kits.csv`` (no passwords) and, with *ca_file* / *collector_key_file*, copies ``ca.pem`` /
    ``collector.pub`` the kit files name. Every row is
    checked first; one bad row refuses the whole batch, naming each bad row. Re-running keeps existing
    kits' passwords and only adds new kits.
    """
    import csv
    import secrets

    from comms.topics import DEFAULT_PREFIX, acl_for_kit

    csv_path, out_dir = Path(csv_path), Path(out_dir)
    broker = validate_broker(broker)
    rows = list(csv.DictReader(read_text(csv_path, "daftar TPS", encoding="utf-8-sig").splitlines()))
    if not rows or "kode_wilayah" not in rows[0] or "tps" not in rows[0]:
        raise ProvisionError(f"{csv_path}: baris pertama harus kepala kolom kode_wilayah,tps[,dpt][,kit_id] "
                             "/ the first line must be the header kode_wilayah,tps[,dpt][,kit_id]")
    errors: list[str] = []
    kits: list[tuple[str, str, int, int | None]] = []
    seen_tps: dict[tuple[str, int], int] = {}
    seen_ids: dict[str, int] = {}
    for n, row in enumerate(rows, start=2):
        try:
            kode = validate_kode_wilayah(row.get("kode_wilayah") or "")
            tps = validate_tps(row.get("tps") or "")
            dpt = validate_dpt(row.get("dpt"))
            kit_id = validate_kit_id(row["kit_id"]) if row.get("kit_id") else default_kit_id(kode, tps)
        except ProvisionError as exc:
            errors.append(f"baris {n}: {exc}")
            continue
        if (kode, tps) in seen_tps:
            errors.append(f"baris {n}: {kode} TPS {tps} sudah ada di baris / already on line "
                          f"{seen_tps[(kode, tps)]}")
            continue
        if kit_id in seen_ids:
            errors.append(f"baris {n}: kit_id {kit_id} sudah ada di baris / already on line "
                          f"{seen_ids[kit_id]}")
            continue
        seen_tps[(kode, tps)] = n
        seen_ids[kit_id] = n
        kits.append((kit_id, kode, tps, dpt))
    if errors:
        raise ProvisionError(f"{csv_path}: {len(errors)} baris salah, tidak ada yang ditulis / bad lines, "
                             "nothing was written (fix them and run again):\n  "
                             + "\n  ".join(errors))
    ca_text = read_ca(Path(ca_file)) if ca_file else None
    collector_key = read_collector_key(Path(collector_key_file)) if collector_key_file else None
    kit_dir = out_dir / "kits"
    kit_dir.mkdir(parents=True, exist_ok=True)
    if ca_text is not None:  # on the stick with the kit files, named relative to them
        _write_if_changed(out_dir / "ca.pem", ca_text, mode=0o644)
    if collector_key is not None:
        _write_if_changed(out_dir / COLLECTOR_KEY_NAME, collector_key, mode=0o644)
    prefix = topic_prefix or DEFAULT_PREFIX
    prepared: list[PreparedKit] = []
    passwords: list[str] = []
    base = prefix.strip("/")
    acl: list[str] = [
        "# tpskit: each kit publishes only under its own TPS and reads only its acks",
        f"# collector account:\n# user collector\n# topic read {base}/#\n# topic write {base}/+/+/ack",
        f"# operator account for 'tpskit fleet readiness':\n# user operator\n"
        f"# topic read {base}/+/+/readiness\n# topic read {base}/+/+/heartbeat",
    ]
    for kit_id, kode, tps, dpt in kits:
        path = kit_dir / f"{kit_id}.toml"
        password = None
        if path.exists():
            try:
                old = tomllib.loads(path.read_text(encoding="utf-8"))
                password = old.get("password")
            except (OSError, tomllib.TOMLDecodeError):
                password = None
        created = password is None
        password = password or secrets.token_urlsafe(18)
        data = {"kode_wilayah": kode, "tps": tps, "dpt": dpt, "kit_id": kit_id, "broker": broker,
                "username": kit_id, "password": password,
                "ca_file": "../ca.pem" if ca_file else None,
                "collector_key_file": f"../{COLLECTOR_KEY_NAME}" if collector_key_file else None,
                "topic_prefix": topic_prefix}
        text = dumps(data, header=f"tpskit provisioning file for {kit_id} ({kode} TPS {tps}).\n"
                                  "Secret: keep on the technician's USB stick only; "
                                  f"on the kit run: sudo tpskit provision --from {path.name}")
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            write_atomic(path, text, mode=0o600)
        passwords.append(f"{kit_id}:{password}")
        acl.append(acl_for_kit(prefix, kit_id, kode, tps).rstrip("\n"))
        prepared.append(PreparedKit(kit_id, kode, tps, dpt, kit_id, path, created))
    write_atomic(out_dir / "mosquitto-passwords.txt", "\n".join(passwords) + "\n", mode=0o600)
    write_atomic(out_dir / "mosquitto-acl.conf", "\n\n".join(acl) + "\n", mode=0o644)
    summary = ["kit_id,kode_wilayah,tps,dpt,username"]
    summary += [f"{k.kit_id},{k.kode_wilayah},{k.tps},{'' if k.dpt is None else k.dpt},{k.username}"
                for k in prepared]
    write_atomic(out_dir / "kits.csv", "\n".join(summary) + "\n", mode=0o644)
    return prepared
