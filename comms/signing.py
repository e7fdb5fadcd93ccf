"""The kit's Ed25519 identity (PyNaCl): keys, signatures, and the collector's registry of kit keys.

Key file format: the 32-byte Ed25519 seed, base64, one line, file mode 0600.
Public keys are exchanged as base64 of the 32 raw bytes (``public_key_b64``) or as PEM
SubjectPublicKeyInfo (``public_key_pem``, readable by ``openssl pkey -pubin``).

Registry (the collector's list of kits, ``--kits FILE``): JSON
``{"version": 1, "kits": {"<kit_id>": {"public_key": "<base64>", "kode_wilayah": "31.71.01.1001",
"tps": 7, "added_at": 1700000000.0}}}``; ``kode_wilayah`` and ``tps`` are optional and, when present,
the collector refuses messages from that kit for any other TPS. A CSV file with the header
``kit_id,public_key,kode_wilayah,tps`` is accepted too (read only), and so is a folder of such files
(e.g. the ``<kit_id>.csv`` files written by ``tpskit provision --export``).
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from comms.durable import write_atomic

# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), followed by the 32 key bytes.
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


class KeyFileError(ValueError):
    """A key or registry file cannot be used; the message says what and how to fix it."""


def canonical_json(obj) -> bytes:
    """The bytes that are signed: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


# --- keys -------------------------------------------------------------------------------------------


def generate_key() -> SigningKey:
    return SigningKey.generate()


def save_private_key(key: SigningKey, path: Path | str) -> Path:
    """Write the seed (base64) atomically with mode 0600."""
    path = Path(path)
    write_atomic(path, base64.b64encode(bytes(key)) + b"\n", mode=0o600)
    return path


def load_private_key(path: Path | str) -> SigningKey:
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise KeyFileError(f"kit key {path} not found: run 'tpskit provision' to create it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(
            f"kit key {path} cannot be read ({exc}): restore it or re-provision the kit"
        ) from None
    try:
        seed = base64.b64decode(text, validate=True)
    except binascii.Error:
        seed = b""
    if len(seed) != 32:
        raise KeyFileError(f"kit key {path} is not a base64 Ed25519 seed (32 bytes): re-provision the kit")
    return SigningKey(seed)


def load_or_create_private_key(path: Path | str) -> SigningKey:
    path = Path(path)
    if path.exists():
        return load_private_key(path)
    key = generate_key()
    save_private_key(key, path)
    return key


def coerce_signing_key(key: SigningKey | bytes | str | Path) -> SigningKey:
    """A SigningKey from a SigningKey, a 32-byte seed, or a key file path."""
    if isinstance(key, SigningKey):
        return key
    if isinstance(key, bytes | bytearray) and len(key) == 32:
        return SigningKey(bytes(key))
    if isinstance(key, str | Path):
        return load_private_key(key)
    raise KeyFileError("signing key must be a nacl SigningKey, a 32-byte seed or a key file path")


def _verify_key(key: SigningKey | VerifyKey) -> VerifyKey:
    return key.verify_key if isinstance(key, SigningKey) else key


def public_key_b64(key: SigningKey | VerifyKey) -> str:
    return base64.b64encode(bytes(_verify_key(key))).decode("ascii")


def public_key_pem(key: SigningKey | VerifyKey) -> str:
    der = _SPKI_PREFIX + bytes(_verify_key(key))
    body = base64.b64encode(der).decode("ascii")
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"


def load_public_key(text: str | bytes) -> VerifyKey:
    """Parse a public key given as base64 (32 raw bytes) or PEM (SubjectPublicKeyInfo)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    text = text.strip()
    try:
        if "BEGIN PUBLIC KEY" in text:
            body = "".join(line for line in text.splitlines() if line and not line.startswith("-----"))
            der = base64.b64decode(body, validate=True)
            if len(der) != 44 or not der.startswith(_SPKI_PREFIX):
                raise ValueError("not an Ed25519 SubjectPublicKeyInfo")
            raw = der[len(_SPKI_PREFIX) :]
        else:
            raw = base64.b64decode(text, validate=True)
        if len(raw) != 32:
            raise ValueError(f"{len(raw)} bytes instead of 32")
        return VerifyKey(raw)
    except (ValueError, binascii.Error) as exc:
        raise KeyFileError(
            f"public key is not base64 or PEM Ed25519 ({exc}): export it with 'tpskit provision'"
        ) from None


# --- signatures -------------------------------------------------------------------------------------


def sign_bytes(key: SigningKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data).signature).decode("ascii")


def verify_bytes(key: VerifyKey, data: bytes, signature_b64: str) -> bool:
    try:
        sig = base64.b64decode(signature_b64, validate=True)
        key.verify(data, sig)
        return True
    except (BadSignatureError, binascii.Error, ValueError, TypeError):
        return False


def sign_document(key: SigningKey, doc: dict, *, field: str = "sig") -> dict:
    """Return a copy of *doc* with *field* = signature over canonical_json(doc without field)."""
    body = {k: v for k, v in doc.items() if k != field}
    return {**body, field: sign_bytes(key, canonical_json(body))}


def verify_document(key: VerifyKey, doc: dict, *, field: str = "sig") -> bool:
    """True if *doc* carries a valid signature; False also for a document that has no canonical JSON
    (NaN, Infinity: read from a received message, never signed by us)."""
    sig = doc.get(field)
    if not isinstance(sig, str):
        return False
    body = {k: v for k, v in doc.items() if k != field}
    try:
        data = canonical_json(body)
    except (TypeError, ValueError):
        return False
    return verify_bytes(key, data, sig)


# --- registry of kit keys (collector side) ----------------------------------------------------------


def _checked_entry(where: str, kit_id: str, kode_wilayah: str | None, tps) -> tuple[str | None, int | None]:
    """(kode_wilayah, tps) of a registry entry, or KeyFileError: a value no message of the kit could match
    would have every message of it rejected (unknown_kit, wrong_tps)."""
    from comms.payloads import KIT_ID_PATTERN, KODE_WILAYAH_PATTERN  # payloads imports this module

    if not re.fullmatch(KIT_ID_PATTERN, kit_id):
        raise KeyFileError(f"{where}: kit id {kit_id!r} is not 1-64 of A-Z a-z 0-9 . _ -")
    if kode_wilayah and not re.fullmatch(KODE_WILAYAH_PATTERN, str(kode_wilayah)):
        raise KeyFileError(f"{where}, kit {kit_id}: kode wilayah {kode_wilayah!r} is not NN.NN.NN.NNNN")
    if tps in (None, ""):
        return kode_wilayah or None, None
    try:
        number = int(tps)
    except (TypeError, ValueError):
        number = 0
    if not 1 <= number <= 999:
        raise KeyFileError(f"{where}, kit {kit_id}: TPS {tps!r} is not a number 1..999")
    return kode_wilayah or None, number


@dataclass(frozen=True)
class KitEntry:
    kit_id: str
    public_key: VerifyKey
    kode_wilayah: str | None = None
    tps: int | None = None


def _registry_files(folder: Path) -> list[Path]:
    """The registry files of a folder of per-kit files (e.g. the <kit_id>.csv written by tpskit provision)."""
    return [f for f in sorted(folder.iterdir()) if f.suffix.lower() in (".csv", ".json") and f.is_file()]


def registry_stamp(path: Path | str) -> tuple:
    """What changes whenever the registry's content may have: (name, inode, mtime, size) of the file, or of
    every registry file of a folder (a file copied over another in place leaves the folder's mtime as is)."""
    path = Path(path)
    if not path.exists():
        return ()  # load_registry says what to do
    files = _registry_files(path) if path.is_dir() else [path]
    return tuple((f.name, st.st_ino, st.st_mtime_ns, st.st_size) for f in files for st in (f.stat(),))


def load_registry(path: Path | str) -> dict[str, KitEntry]:
    """Read a JSON (or CSV) registry of kit public keys; raise KeyFileError naming the bad entry."""
    path = Path(path)
    if path.is_dir():
        merged: dict[str, KitEntry] = {}
        found_in: dict[str, Path] = {}
        for f in _registry_files(path):
            for kit_id, entry in load_registry(f).items():
                _one_entry(kit_id, entry, merged.get(kit_id), f"{found_in.get(kit_id)} and {f}")
                merged[kit_id], found_in[kit_id] = entry, f
        return merged
    if not path.exists():
        raise KeyFileError(
            f"kit registry {path} not found: create it with 'tpskit collector --kits {path} "
            "--add-kit KIT_ID --public-key KEY'"
        )
    text = path.read_text(encoding="utf-8-sig")  # a spreadsheet may start it with a BOM
    rows: list[dict]
    if path.suffix.lower() == ".csv" or (text.lstrip()[:1] not in ("{", "") and "," in text.splitlines()[0]):
        rows = list(csv.DictReader(text.splitlines()))
    else:
        try:
            data = json.loads(text) if text.strip() else {"kits": {}}
        except json.JSONDecodeError as exc:
            raise KeyFileError(f"kit registry {path} is not valid JSON ({exc})") from None
        kits = data.get("kits", {}) if isinstance(data, dict) else None
        if not isinstance(kits, dict):
            raise KeyFileError(f'kit registry {path}: expected {{"version": 1, "kits": {{...}}}}')
        rows = [{"kit_id": k, **(v if isinstance(v, dict) else {"public_key": v})} for k, v in kits.items()]
    out: dict[str, KitEntry] = {}
    for row in rows:
        kit_id = (row.get("kit_id") or "").strip()
        if not kit_id:
            raise KeyFileError(f"kit registry {path}: an entry has no kit_id")
        try:
            key = load_public_key(row.get("public_key") or "")
        except KeyFileError as exc:
            raise KeyFileError(f"kit registry {path}, kit {kit_id}: {exc}") from None
        where, kw = f"kit registry {path}", row.get("kode_wilayah")
        kode_wilayah, tps = _checked_entry(where, kit_id, kw, row.get("tps"))
        entry = KitEntry(kit_id, key, kode_wilayah, tps)
        _one_entry(kit_id, entry, out.get(kit_id), str(path))
        out[kit_id] = entry
    return out


def _one_entry(kit_id: str, entry: KitEntry, earlier: KitEntry | None, where: str) -> None:
    """A kit listed twice must be listed the same: which key or TPS is right is the operator's call, not the
    order the files are read in."""
    if earlier is not None and earlier != entry:
        raise KeyFileError(f"kit registry: kit {kit_id} is listed twice, differently (key or TPS), in "
                           f"{where}: keep only its current row (the latest 'tpskit provision --export')")


def load_kit_registry(path: Path | str) -> dict[str, KitEntry]:
    """``load_registry`` for the operator commands: a registry without a single kit is a KeyFileError."""
    kits = load_registry(path)
    if not kits:
        raise KeyFileError(empty_registry_problem(path))
    return kits


def empty_registry_problem(path: Path | str) -> str:
    """Why a registry holds no kit (a wrong folder, or an empty file) and what it should hold instead."""
    path = Path(path)
    should = ("use the folder written by 'tpskit provision --export DIR' (one <kit_id>.csv per kit) or a "
              "JSON/CSV registry of the kits")
    if path.is_dir() and not _registry_files(path):
        others = sorted(f.name for f in path.iterdir() if f.is_file())
        found = f" (it holds {', '.join(others[:3])}{', …' if len(others) > 3 else ''})" if others else ""
        return f"kit registry folder {path} has no .csv or .json registry files{found}: {should}"
    return f"kit registry {path} lists no kits: {should}"


def read_registry_for_update(path: Path | str) -> dict:
    """The JSON registry *path* as ``registry_add`` updates it (an empty one if the file is missing or
    empty); KeyFileError (nothing written) when it is not a JSON registry file. OSError when unreadable."""
    path = Path(path)
    data: dict = {"version": 1, "kits": {}}
    if path.is_dir():
        raise KeyFileError(f"kit registry {path} is a folder: give a JSON file, e.g. {path / 'kits.json'}")
    if not path.exists():
        return data
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise KeyFileError(f"kit registry {path} is not UTF-8 text; fix or move it first") from None
    if not text.strip():
        return data
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"kit registry {path} is not valid JSON ({exc}); fix or move it first") from None
    if not isinstance(data, dict) or not isinstance(data.setdefault("kits", {}), dict):
        raise KeyFileError(
            f'kit registry {path}: expected {{"version": 1, "kits": {{...}}}}; fix or move it first'
        )
    return data


def registry_add(
    path: Path | str,
    kit_id: str,
    public_key: str | VerifyKey | SigningKey,
    *,
    kode_wilayah: str | None = None,
    tps: int | None = None,
) -> None:
    """Add or replace one kit in a JSON registry (created if missing), atomically."""
    path = Path(path)
    kode_wilayah, tps = _checked_entry(f"kit registry {path}", kit_id, kode_wilayah, tps)
    if isinstance(public_key, SigningKey | VerifyKey):
        key_b64 = public_key_b64(public_key)
    else:
        key_b64 = public_key_b64(load_public_key(public_key))
    data = read_registry_for_update(path)
    entry: dict = {"public_key": key_b64, "added_at": time.time()}
    if kode_wilayah:
        entry["kode_wilayah"] = kode_wilayah
    if tps is not None:
        entry["tps"] = int(tps)
    data["kits"][kit_id] = entry
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=0o644)
