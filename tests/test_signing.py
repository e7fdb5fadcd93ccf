"""Ed25519 keys: save/load, public key export (base64 + PEM), signatures, registry."""

from __future__ import annotations

import stat

import pytest

from comms import signing


def test_key_roundtrip_and_exports(tmp_path):
    key = signing.generate_key()
    path = signing.save_private_key(key, tmp_path / "keys" / "kit.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = signing.load_private_key(path)
    assert bytes(again) == bytes(key)
    b64 = signing.public_key_b64(key)
    pem = signing.public_key_pem(key)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert bytes(signing.load_public_key(b64)) == bytes(key.verify_key)
    assert bytes(signing.load_public_key(pem)) == bytes(key.verify_key)


def test_bad_keys_are_explained(tmp_path):
    with pytest.raises(signing.KeyFileError, match="tpskit provision"):
        signing.load_private_key(tmp_path / "missing.key")
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(signing.KeyFileError):
        signing.load_private_key(tmp_path / "bad.key")
    with pytest.raises(signing.KeyFileError):
        signing.load_public_key("AAAA")


def test_sign_verify_document():
    key = signing.generate_key()
    doc = signing.sign_document(key, {"a": 1, "b": "ü"})
    assert signing.verify_document(key.verify_key, doc)
    assert not signing.verify_document(key.verify_key, {**doc, "a": 2})
    assert not signing.verify_document(signing.generate_key().verify_key, doc)
    assert not signing.verify_document(key.verify_key, {"a": 1, "b": "ü"})


def test_registry_json_and_csv(tmp_path):
    k1, k2 = signing.generate_key(), signing.generate_key()
    reg = tmp_path / "kits.json"
    signing.registry_add(reg, "kit-1", signing.public_key_pem(k1), kode_wilayah="31.71.01.1001", tps=7)
    signing.registry_add(reg, "kit-2", signing.public_key_b64(k2))
    kits = signing.load_registry(reg)
    assert set(kits) == {"kit-1", "kit-2"}
    assert kits["kit-1"].tps == 7 and kits["kit-1"].kode_wilayah == "31.71.01.1001"
    assert bytes(kits["kit-2"].public_key) == bytes(k2.verify_key)
    csv_path = tmp_path / "kits.csv"
    csv_path.write_text(f"kit_id,public_key,kode_wilayah,tps\nkit-3,{signing.public_key_b64(k1)},,\n")
    assert signing.load_registry(csv_path)["kit-3"].tps is None


def test_a_kit_listed_twice_differently_is_refused_not_taken_by_file_order(tmp_path):
    """Two rows of one kit with other keys or TPS (an old export beside the new one): which is right is the
    operator's call; the last file read used to win silently. The same row twice is harmless."""
    old, new = signing.generate_key(), signing.generate_key()
    folder = tmp_path / "registry"
    folder.mkdir()
    header = "kit_id,public_key,kode_wilayah,tps\n"
    (folder / "kit-1.csv").write_text(header + f"kit-1,{signing.public_key_b64(new)},31.71.01.1001,7\n")
    (folder / "kit-1-copy.csv").write_text(header + f"kit-1,{signing.public_key_b64(new)},31.71.01.1001,7\n")
    assert bytes(signing.load_registry(folder)["kit-1"].public_key) == bytes(new.verify_key)
    (folder / "kit-1-old.csv").write_text(header + f"kit-1,{signing.public_key_b64(old)},31.71.01.1001,7\n")
    with pytest.raises(signing.KeyFileError, match=r"kit kit-1 is listed twice.*kit-1-old\.csv.*provision"):
        signing.load_registry(folder)
    moved = tmp_path / "kits.csv"
    moved.write_text(header + f"kit-1,{signing.public_key_b64(new)},31.71.01.1001,7\n"
                     f"kit-1,{signing.public_key_b64(new)},31.71.01.1001,8\n")
    with pytest.raises(signing.KeyFileError, match="listed twice, differently"):
        signing.load_registry(moved)


@pytest.mark.parametrize(
    "kit_id, kw, tps, what",
    [
        ("kit-7", "3171011001", 7, "kode wilayah"),  # the dots left out: every message would be wrong_tps
        ("kit-7", "31.71.01.1001", 0, "TPS"),
        ("kit-7", "31.71.01.1001", 1000, "TPS"),
        ("kit 7", "31.71.01.1001", 7, "kit id"),  # no kit can send under this id
    ],
)
def test_registry_entries_a_kit_could_never_match_are_refused(tmp_path, kit_id, kw, tps, what):
    """A typo when registering a kit was stored; the collector then rejected every message of that kit
    (wrong_tps, unknown_kit) and only its rejects table said so."""
    key = signing.public_key_b64(signing.generate_key())
    reg = tmp_path / "kits.json"
    with pytest.raises(signing.KeyFileError, match=what):
        signing.registry_add(reg, kit_id, key, kode_wilayah=kw, tps=tps)
    assert not reg.exists()
    csv_path = tmp_path / "kits.csv"
    csv_path.write_text(f"kit_id,public_key,kode_wilayah,tps\n{kit_id},{key},{kw},{tps}\n")
    with pytest.raises(signing.KeyFileError, match=what):
        signing.load_registry(csv_path)


def test_registry_tps_that_is_not_a_number_is_explained(tmp_path):
    key = signing.public_key_b64(signing.generate_key())
    csv_path = tmp_path / "kits.csv"
    csv_path.write_text(f"kit_id,public_key,kode_wilayah,tps\nkit-7,{key},31.71.01.1001,7a\n")
    with pytest.raises(signing.KeyFileError, match="kit-7.*TPS"):
        signing.load_registry(csv_path)
