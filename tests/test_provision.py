"""tpskit provision: good and bad identities, repeat runs, --force, one file per kit."""

from __future__ import annotations

import json
import os
import sqlite3
import stat

import pytest

from comms import signing
from firmware import cli
from firmware import config as cfg
from firmware.provision import (
    ProvisionError,
    ProvisionRequest,
    default_kit_id,
    provision,
    validate_dpt,
    validate_kode_wilayah,
    validate_tps,
)


@pytest.fixture
def env(tmp_path):
    pw = tmp_path / "pw.txt"
    pw.write_text("rahasia\n")
    return {"conf": tmp_path / "etc" / "config.toml", "state": tmp_path / "state", "pw": pw, "tmp": tmp_path}


def run_cli(env, *extra, kode="31.71.01.1001", tps="5"):
    argv = ["provision", "--config-out", str(env["conf"]), "--state-dir", str(env["state"]),
            "--broker", "mqtts://broker.kpu.example:8883", "--username", "kit5",
            "--password-file", str(env["pw"]), "--dpt", "280", "--json", "--volatile-ok", *extra]
    if kode is not None:
        argv += ["--kode-wilayah", kode]
    if tps is not None:
        argv += ["--tps", tps]
    return cli.main(argv)


@pytest.mark.parametrize("kode", ["31.71.01.1001", "11.01.01.2001", "96.01.02.2005", "64.72.03.1004"])
def test_good_kode_wilayah(kode):
    assert validate_kode_wilayah(kode) == kode


@pytest.mark.parametrize("kode,why", [
    ("3171011001", "NN.NN.NN.NNNN"), ("31.71.1.1001", "NN.NN.NN.NNNN"), ("31-71-01-1001", "NN.NN.NN.NNNN"),
    ("10.71.01.1001", "provinsi"), ("99.01.01.1001", "provinsi"), ("20.01.01.1001", "provinsi"),
    ("31.00.01.1001", "00"), ("31.71.00.1001", "00"), ("31.71.01.0001", "desa"), ("31.71.01.3001", "desa"),
])
def test_bad_kode_wilayah(kode, why):
    with pytest.raises(ProvisionError, match=why):
        validate_kode_wilayah(kode)


def test_tps_and_dpt_limits():
    assert validate_tps("7") == 7 and validate_tps(999) == 999
    for bad in (0, 1000, "x", "-1"):
        with pytest.raises(ProvisionError, match="TPS"):
            validate_tps(bad)
    assert validate_dpt(300) == 300 and validate_dpt(None) is None
    with pytest.raises(ProvisionError, match="300 pemilih per TPS pada Pemilu 2024"):
        validate_dpt(301)
    with pytest.raises(ProvisionError, match="DPT"):
        validate_dpt("banyak")


def test_provision_writes_valid_config_key_and_credential(env, capsys):
    assert run_cli(env) == 0
    out = json.loads(capsys.readouterr().out)
    conf = cfg.load(env["conf"])
    assert conf.kit.kode_wilayah == "31.71.01.1001" and conf.kit.tps == 5 and conf.kit.dpt == 280
    assert conf.kit.kit_id == default_kit_id("31.71.01.1001", 5) == "kit-3171011001-005"
    assert conf.mqtt.url == "mqtts://broker.kpu.example:8883" and conf.mqtt.username == "kit5"
    assert cfg.read_secret(conf.mqtt.password_file) == "rahasia"
    assert stat.S_IMODE(os.stat(conf.mqtt.password_file).st_mode) == 0o600
    key_path = conf.signing_key_path
    assert key_path == env["state"] / "keys" / "kit.key"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(key_path.parent).st_mode) == 0o700
    key = signing.load_private_key(key_path)
    assert out["public_key"] == signing.public_key_b64(key)
    assert (key_path.parent / "kit.pub").read_text().strip() == out["public_key"]
    assert out["registry_csv"] == f"kit-3171011001-005,{out['public_key']},31.71.01.1001,5"
    assert out["key_created"] and out["config_changed"]


def test_a_kit_without_a_password_still_has_the_credential_file_systemd_loads(env, capsys):
    """A broker with client certificates: no password. tpskit.service loads /etc/tpskit/mqtt-password as a
    credential and systemd refuses to start a unit whose credential file is missing (243/CREDENTIALS), so
    provisioning leaves an empty one; the config names no password file."""
    argv = ["provision", "--config-out", str(env["conf"]), "--state-dir", str(env["state"]),
            "--broker", "mqtts://broker.kpu.example:8883", "--kode-wilayah", "31.71.01.1001", "--tps", "5",
            "--dpt", "280", "--json", "--volatile-ok"]
    assert cli.main(argv) == 0
    conf = cfg.load(env["conf"])
    assert conf.mqtt.password_file is None
    secret = env["conf"].parent / "mqtt-password"
    assert secret.read_text() == "" and stat.S_IMODE(os.stat(secret).st_mode) == 0o600


def test_repeat_run_is_idempotent(env, capsys):
    assert run_cli(env) == 0
    first = json.loads(capsys.readouterr().out)
    text = env["conf"].read_text()
    mtime = env["conf"].stat().st_mtime_ns
    assert run_cli(env) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["public_key"] == first["public_key"]
    assert not second["key_created"] and not second["config_changed"]
    assert env["conf"].read_text() == text and env["conf"].stat().st_mtime_ns == mtime


def test_bad_input_is_refused_and_changes_nothing(env, capsys):
    assert run_cli(env) == 0
    capsys.readouterr()
    before = env["conf"].read_text()
    assert run_cli(env, kode="31.71.01.999") == 2
    err = capsys.readouterr().err
    assert "GAGAL" in err and "NN.NN.NN.NNNN" in err
    assert run_cli(env, tps="0") == 2
    assert run_cli(env, "--dpt", "450") == 2
    assert "Pemilu 2024" in capsys.readouterr().err
    assert run_cli(env, "--broker", "http://x") == 2
    assert run_cli(env, kode=None) == 2
    assert "--kode-wilayah" in capsys.readouterr().err
    assert env["conf"].read_text() == before


def _add_unsent_data(state):
    con = sqlite3.connect(state / "tpskit.db")
    con.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY, state TEXT)")
    con.execute("INSERT INTO outbox (state) VALUES ('queued')")
    con.commit()
    con.close()


def test_new_identity_with_unsent_data_needs_force(env, capsys):
    assert run_cli(env) == 0
    first = json.loads(capsys.readouterr().out)
    _add_unsent_data(env["state"])
    assert run_cli(env, tps="6") == 2
    err = capsys.readouterr().err
    assert "masih menyimpan data" in err and "--force" in err
    assert cfg.load(env["conf"]).kit.tps == 5  # unchanged
    assert run_cli(env, "--force", tps="6") == 0
    out = json.loads(capsys.readouterr().out)
    assert cfg.load(env["conf"]).kit.tps == 6
    # unsent data was moved aside, not deleted; the key is kept (only --new-key replaces it)
    archived = [p for p in (env["state"] / "archive").rglob("tpskit.db")]
    assert len(archived) == 1
    assert sqlite3.connect(archived[0]).execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1
    assert not (env["state"] / "tpskit.db").exists()
    assert out["public_key"] == first["public_key"]


def test_refused_config_leaves_data_and_password_in_place(env, capsys):
    """A new identity whose config the kit would refuse (a typo in the --from file) is refused before anything
    moves: the old TPS's unsent data stays where the daemon sends it, its password stays in force."""
    assert run_cli(env) == 0
    capsys.readouterr()
    _add_unsent_data(env["state"])
    secret = env["conf"].parent / "mqtt-password"
    assert secret.read_text() == "rahasia\n"
    request = env["tmp"] / "kit6.toml"
    request.write_text('kode_wilayah = "31.71.01.1001"\ntps = 6\nbroker = "mqtts://broker.kpu.example:8883"\n'
                       'password = "baru"\ntopic_prefix = "tpskit v1"\n')
    assert cli.main(["provision", "--from", str(request), "--config-out", str(env["conf"]), "--state-dir",
                     str(env["state"]), "--volatile-ok", "--force"]) == 2
    assert "topic_prefix" in capsys.readouterr().err
    assert cfg.load(env["conf"]).kit.tps == 5
    assert (env["state"] / "tpskit.db").exists() and not (env["state"] / "archive").exists()
    assert secret.read_text() == "rahasia\n"


def test_unreadable_key_is_found_before_data_moves(env, capsys):
    assert run_cli(env) == 0
    capsys.readouterr()
    _add_unsent_data(env["state"])
    (env["state"] / "keys" / "kit.key").write_text("rusak\n")
    assert run_cli(env, "--force", tps="6") == 2
    assert "tidak ditimpa" in capsys.readouterr().err
    assert cfg.load(env["conf"]).kit.tps == 5
    assert (env["state"] / "tpskit.db").exists() and not (env["state"] / "archive").exists()


def test_new_identity_without_data_is_allowed(env, capsys):
    assert run_cli(env) == 0
    assert run_cli(env, tps="8") == 0
    assert cfg.load(env["conf"]).kit.tps == 8


def test_key_is_never_overwritten_without_force(env, capsys):
    assert run_cli(env) == 0
    first = json.loads(capsys.readouterr().out)
    assert run_cli(env, "--new-key") == 2
    assert "--force" in capsys.readouterr().err
    assert run_cli(env, "--new-key", "--force") == 0
    second = json.loads(capsys.readouterr().out)
    assert second["public_key"] != first["public_key"]
    backups = list((env["state"] / "keys").glob("kit.key.*.bak"))
    assert len(backups) == 1
    assert signing.public_key_b64(signing.load_private_key(backups[0])) == first["public_key"]


def test_corrupt_key_is_not_replaced(env, capsys):
    assert run_cli(env) == 0
    key = env["state"] / "keys" / "kit.key"
    key.write_text("rusak\n")
    assert run_cli(env) == 2
    assert "tidak ditimpa" in capsys.readouterr().err
    assert key.read_text() == "rusak\n"


def test_from_file_per_kit_and_registry(env, capsys):
    kits = env["tmp"] / "kits"
    kits.mkdir()
    (kits / "a.toml").write_text('kode_wilayah = "32.73.05.1002"\ntps = 12\nbroker = "mqtt://127.0.0.1:1883"\n'
                                 'username = "kit-a"\npassword = "pw-a"\ndpt = 250\n')
    (kits / "b.json").write_text(json.dumps({"kode_wilayah": "32.73.05.1002", "tps": 13,
                                             "broker": "mqtt://127.0.0.1:1883", "kit_id": "bandung-13"}))
    (kits / "bad.toml").write_text('kode_wilayah = "32.73.05.1002"\ntps = 14\nbrokr = "x"\n')
    registry = env["tmp"] / "registry.json"
    usb = env["tmp"] / "usb"
    for name in ("a.toml", "b.json"):
        conf = env["tmp"] / name / "config.toml"
        assert cli.main(["provision", "--from", str(kits / name), "--config-out", str(conf), "--state-dir",
                         str(env["tmp"] / name / "state"), "--registry", str(registry), "--export",
                         str(usb), "--volatile-ok"]) == 0
    out = capsys.readouterr().out
    assert "kunci publik" in out
    reg = signing.load_registry(registry)
    assert set(reg) == {"kit-3273051002-012", "bandung-13"}
    assert reg["bandung-13"].tps == 13 and reg["bandung-13"].kode_wilayah == "32.73.05.1002"
    # the exported CSV rows concatenate into a registry the collector reads
    rows = ["kit_id,public_key,kode_wilayah,tps"]
    rows += [p.read_text().splitlines()[1] for p in sorted(usb.iterdir())]
    (env["tmp"] / "all.csv").write_text("\n".join(rows) + "\n")
    assert set(signing.load_registry(env["tmp"] / "all.csv")) == set(reg)
    a = cfg.load(env["tmp"] / "a.toml" / "config.toml")
    assert cfg.read_secret(a.mqtt.password_file) == "pw-a" and a.kit.dpt == 250
    assert cli.main(["provision", "--from", str(kits / "bad.toml"), "--config-out",
                     str(env["tmp"] / "bad" / "c.toml"), "--volatile-ok"]) == 2
    assert "brokr" in capsys.readouterr().err


def test_library_call_validates(env):
    with pytest.raises(ProvisionError):
        provision(ProvisionRequest(kode_wilayah="31.71.01.1001", tps=1000, broker="mqtt://h:1"),
                  config_out=env["conf"], volatile_ok=True)
    assert not env["conf"].exists()


def test_prepare_many_kits_from_a_spreadsheet(tmp_path, capsys):
    sheet = tmp_path / "tps.csv"
    sheet.write_text("kode_wilayah,tps,dpt\n31.71.01.1001,1,280\n31.71.01.1001,2,\n32.73.05.1002,12,250\n")
    out = tmp_path / "usb"
    assert cli.main(["provision", "--prepare", str(sheet), "--broker", "mqtts://mqtt.kpu.example:8883",
                     "--out-dir", str(out), "--json"]) == 0
    kits = json.loads(capsys.readouterr().out)
    assert [k["kit_id"] for k in kits] == ["kit-3171011001-001", "kit-3171011001-002", "kit-3273051002-012"]
    files = sorted((out / "kits").iterdir())
    assert len(files) == 3 and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    passwords = (out / "mosquitto-passwords.txt").read_text().splitlines()
    assert len(passwords) == 3 and passwords[0].startswith("kit-3171011001-001:")
    acl = (out / "mosquitto-acl.conf").read_text()
    assert "topic write tpskit/v1/31.71.01.1001/2/reading" in acl
    # each file provisions a kit
    conf_path = tmp_path / "kit" / "config.toml"
    assert cli.main(["provision", "--from", str(files[0]), "--config-out", str(conf_path), "--state-dir",
                     str(tmp_path / "kit" / "state"), "--volatile-ok"]) == 0
    capsys.readouterr()
    conf = cfg.load(conf_path)
    assert conf.kit.tps == 1 and conf.kit.dpt == 280 and conf.mqtt.username == "kit-3171011001-001"
    assert cfg.read_secret(conf.mqtt.password_file) == passwords[0].split(":", 1)[1]
    # re-running adds new rows and keeps existing passwords
    sheet.write_text(sheet.read_text() + "32.73.05.1002,13,100\n")
    assert cli.main(["provision", "--prepare", str(sheet), "--broker", "mqtts://mqtt.kpu.example:8883",
                     "--out-dir", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [k["created"] for k in again] == [False, False, False, True]
    assert (out / "mosquitto-passwords.txt").read_text().splitlines()[:3] == passwords


def test_prepare_refuses_a_sheet_with_bad_rows(tmp_path, capsys):
    sheet = tmp_path / "tps.csv"
    sheet.write_text("kode_wilayah,tps,dpt\n31.71.01.1001,1,280\n31.71.1.1001,2,\n31.71.01.1001,1,100\n"
                     "32.73.05.1002,1000,\n32.73.05.1002,3,450\n")
    out = tmp_path / "usb"
    assert cli.main(["provision", "--prepare", str(sheet), "--broker", "mqtt://h:1883", "--out-dir",
                     str(out)]) == 2
    err = capsys.readouterr().err
    for row in ("baris 3", "baris 4", "baris 5", "baris 6"):
        assert row in err
    assert "baris 2:" not in err and "4 baris salah" in err
    assert not out.exists()
    sheet.write_text("kode,tps\n31.71.01.1001,1\n")
    assert cli.main(["provision", "--prepare", str(sheet), "--broker", "mqtt://h:1883", "--out-dir",
                     str(out)]) == 2
    assert "kepala kolom" in capsys.readouterr().err


def test_files_that_are_not_utf8_are_refused_clearly(env, tmp_path, capsys):
    """A spreadsheet exported as UTF-16, a provisioning file or password file in another encoding: a clear
    refusal (exit 2) naming the file, never a traceback, and nothing written."""
    utf16 = tmp_path / "kits.csv"
    utf16.write_bytes("kode_wilayah,tps\n31.71.01.1001,1\n".encode("utf-16"))
    assert cli.main(["provision", "--prepare", str(utf16), "--broker", "mqtts://b.example:8883",
                     "--out-dir", str(tmp_path / "out")]) == 2
    assert "kits.csv" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    request = tmp_path / "kit.toml"
    request.write_bytes(b'kode_wilayah = "31.71.01.1001"\ntps = 1\nbroker = "mqtt://h:1883" # \xff\n')
    assert cli.main(["provision", "--from", str(request), "--config-out", str(env["conf"]),
                     "--volatile-ok"]) == 2
    assert "kit.toml" in capsys.readouterr().err
    env["pw"].write_bytes(b"\xff\xfer\x00a\x00")
    assert run_cli(env) == 2
    assert "pw.txt" in capsys.readouterr().err
    assert not env["conf"].exists()


CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUd2Vi\n-----END CERTIFICATE-----\n"


def test_the_brokers_ca_stays_on_the_kit_when_the_usb_stick_goes(tmp_path, monkeypatch, capsys):
    """Technician guide, section 5: the kit file names the CA on the USB stick (`--prepare --ca-file ca.pem`
    puts a copy beside the kit files). The kit keeps its own copy: TLS must still verify the broker after the
    stick has gone on to the next kit, and a relative path must not depend on the shell's directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ca.pem").write_text(CA_PEM)
    (tmp_path / "tps.csv").write_text("kode_wilayah,tps\n31.71.01.1001,5\n")
    assert cli.main(["provision", "--prepare", "tps.csv", "--broker", "mqtts://mqtt.kpu.example:8883",
                     "--ca-file", "ca.pem", "--out-dir", "usb"]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    conf_path = tmp_path / "etc" / "config.toml"
    argv = ["provision", "--from", str(tmp_path / "usb" / "kits" / "kit-3171011001-005.toml"), "--config-out",
            str(conf_path), "--state-dir", str(tmp_path / "state"), "--volatile-ok"]
    assert cli.main(argv) == 0
    for p in [*(tmp_path / "usb").rglob("*"), tmp_path / "ca.pem"]:
        if p.is_file():
            p.unlink()  # the stick goes on to the next kit
    conf = cfg.load(conf_path)
    assert conf.mqtt.ca_file == tmp_path / "etc" / "ca.pem" and conf.mqtt.ca_file.read_text() == CA_PEM
    # again with the kit's own copy: nothing changes
    text = conf_path.read_text()
    (tmp_path / "k.toml").write_text('kode_wilayah = "31.71.01.1001"\ntps = 5\n'
                                     'broker = "mqtts://mqtt.kpu.example:8883"\n'
                                     f'ca_file = "{conf.mqtt.ca_file}"\n')
    assert cli.main(argv[:2] + [str(tmp_path / "k.toml")] + argv[3:]) == 0
    assert conf_path.read_text() == text and conf.mqtt.ca_file.read_text() == CA_PEM
    # not a certificate: refused before anything is written
    (tmp_path / "k.toml").write_text(f'kode_wilayah = "31.71.01.1001"\ntps = 6\nbroker = "mqtts://h:8883"\n'
                                     f'ca_file = "{tmp_path / "k.toml"}"\n')
    capsys.readouterr()
    assert cli.main(argv[:2] + [str(tmp_path / "k.toml")] + argv[3:]) == 2
    assert "PEM" in capsys.readouterr().err and conf_path.read_text() == text


def test_the_collectors_ack_key_goes_onto_the_kit_from_the_stick(tmp_path, monkeypatch, capsys):
    """`--prepare --collector-key ack.key.pub` (the file tpskit-collector writes beside its ack key) puts a
    copy on the stick that the kit files name; the kit keeps its own copy, and its config names it, so it
    takes only the collector's signed acks, over MQTT and from acks files on a USB stick."""
    from comms.cmd_collector import ack_public_key_path

    monkeypatch.chdir(tmp_path)
    ack_key = signing.generate_key()
    pub = ack_public_key_path(tmp_path / "ack.key")
    pub.write_text(signing.public_key_b64(ack_key) + "\n")
    (tmp_path / "tps.csv").write_text("kode_wilayah,tps\n31.71.01.1001,5\n")
    assert cli.main(["provision", "--prepare", "tps.csv", "--broker", "mqtts://mqtt.kpu.example:8883",
                     "--collector-key", pub.name, "--out-dir", "usb"]) == 0
    conf_path = tmp_path / "etc" / "config.toml"
    argv = ["provision", "--from", str(tmp_path / "usb" / "kits" / "kit-3171011001-005.toml"), "--config-out",
            str(conf_path), "--state-dir", str(tmp_path / "state"), "--volatile-ok"]
    assert cli.main(argv) == 0
    for p in (tmp_path / "usb").rglob("*"):
        if p.is_file():
            p.unlink()  # the stick goes on to the next kit
    conf = cfg.load(conf_path)
    assert conf.mqtt.collector_key_file == tmp_path / "etc" / "collector.pub"
    assert signing.load_public_key(conf.mqtt.collector_key_file.read_text()) == ack_key.verify_key
    # a PEM key given directly is stored the same way (nothing changes); something else is refused before
    # anything is written
    text = conf_path.read_text()
    pem = tmp_path / "collector.pem"
    pem.write_text(signing.public_key_pem(ack_key))
    argv = ["provision", "--kode-wilayah", "31.71.01.1001", "--tps", "5", "--broker",
            "mqtts://mqtt.kpu.example:8883", *argv[3:]]
    assert cli.main([*argv, "--collector-key", str(pem)]) == 0
    assert conf_path.read_text() == text
    (tmp_path / "not-a-key").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    capsys.readouterr()
    assert cli.main([*argv, "--tps", "6", "--collector-key", str(tmp_path / "not-a-key")]) == 2
    err = capsys.readouterr().err
    assert "ack.key.pub" in err and "Traceback" not in err
    assert conf_path.read_text() == text


def _add_delivered_selftest_messages(state):
    """What every self-test leaves: readiness messages the collector acked, and the outbox counters."""
    from comms.outbox import Outbox

    box = Outbox(state / "tpskit.db")
    ids = [f"kit-3171011001-005:readiness:1:{n}" for n in (1, 2)]
    for msg_id in ids:
        box.enqueue(msg_id=msg_id, kind="readiness", topic="tpskit/v1/31.71.01.1001/5/readiness",
                    payload=b"{}", retain=True)
    box.mark_acked(ids)
    box.close()


def test_moving_a_self_tested_kit_needs_no_force_for_delivered_messages(env, capsys):
    """A kit self-tested for TPS 5 holds only delivered readiness messages: 'export first' exported 0
    messages, yet the move was refused for '2 baris di tabel outbox; ... outbox_counters'. Nothing is
    undelivered, so the move goes ahead; the old outbox is archived all the same (never deleted), so the
    new identity starts its own sequence."""
    assert run_cli(env) == 0
    capsys.readouterr()
    _add_delivered_selftest_messages(env["state"])
    assert run_cli(env, tps="6") == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert cfg.load(env["conf"]).kit.tps == 6
    assert not (env["state"] / "tpskit.db").exists()
    archived = [p for p in (env["state"] / "archive").rglob("tpskit.db")]
    assert len(archived) == 1 and out["archived"]
    # unsent messages still need --force
    assert run_cli(env, tps="5") == 0
    capsys.readouterr()
    _add_unsent_data(env["state"])
    assert run_cli(env, tps="7") == 2
    assert "masih menyimpan data" in capsys.readouterr().err


def test_broker_port_zero_is_refused():
    """'mqtts://host:0' (a typo for :8883) passed and the kit could never connect."""
    from firmware.provision import validate_broker

    with pytest.raises(ProvisionError, match="port"):
        validate_broker("mqtts://mqtt.kpu-kab.example:0")
    assert validate_broker("mqtts://mqtt.kpu-kab.example:8883") == "mqtts://mqtt.kpu-kab.example:8883"


def test_provisioning_while_the_kit_runs_is_refused_until_it_is_stopped(env, capsys):
    """The running daemon keeps the identity, broker and password it started with, and would go on writing
    into a database moved to archive/: provision says to stop the service first (also with --force)."""
    import time

    assert run_cli(env) == 0
    capsys.readouterr()
    status = env["state"] / "status.json"
    status.write_text(json.dumps({"pid": os.getpid(), "state": "ready", "ready": True,
                                  "updated_at": time.time(), "kit_id": "kit-3171011001-005"}))
    for extra in ((), ("--force",)):
        assert run_cli(env, *extra, tps="6") == 2
        err = capsys.readouterr().err
        assert "sudo systemctl stop tpskit" in err and "kit-3171011001-005" in err
    assert cfg.load(env["conf"]).kit.tps == 5  # nothing changed
    status.write_text(json.dumps({"pid": os.getpid(), "state": "stopping", "updated_at": time.time()}))
    assert run_cli(env, tps="6") == 0  # stopped: goes ahead


@pytest.mark.parametrize("content", ["{bad", "[1, 2]", '{"kits": []}'])
def test_bad_registry_is_refused_before_anything_is_written(env, capsys, content):
    registry = env["tmp"] / "registry.json"
    registry.write_text(content)
    assert run_cli(env, "--registry", str(registry)) == 2
    err = capsys.readouterr().err
    assert "GAGAL" in err and str(registry) in err and "Traceback" not in err
    assert not env["conf"].exists() and not env["state"].exists()
    assert registry.read_text() == content


def test_export_to_a_file_is_refused_before_anything_is_written(env, capsys):
    stick = env["tmp"] / "usb"
    stick.write_text("not a folder")
    assert run_cli(env, "--export", str(stick)) == 2
    assert "bukan folder / is not a folder" in capsys.readouterr().err
    assert not env["conf"].exists() and not env["state"].exists()


def test_prepare_into_a_file_is_refused(env, capsys):
    csv = env["tmp"] / "daftar.csv"
    csv.write_text("kode_wilayah,tps\n31.71.01.1001,1\n")
    out = env["tmp"] / "out"
    out.write_text("x")
    argv = ["provision", "--prepare", str(csv), "--broker", "mqtts://b.example:8883", "--out-dir", str(out)]
    assert cli.main(argv) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("name,with_pub", [("ack.key", False), ("ack.key", True), ("collector-ack", True)])
def test_the_collectors_private_ack_key_is_never_copied_onto_a_kit(env, capsys, name, with_pub):
    """ack.key (the seed) is a 32-byte base64 line like ack.key.pub: given as --collector-key it was taken as
    the public key, so the kit refused every ack, and the collector's signing secret sat on the kit."""
    ack_key = signing.generate_key()
    private = env["tmp"] / name
    signing.save_private_key(ack_key, private)
    if with_pub:
        (env["tmp"] / (name + ".pub")).write_text(signing.public_key_b64(ack_key) + "\n")
    assert run_cli(env, "--collector-key", str(private)) == 2
    err = capsys.readouterr().err
    assert "PRIVATE" in err and f"{name}.pub" in err
    assert not env["conf"].exists() and not env["state"].exists()
    argv = ["provision", "--prepare", str(env["tmp"] / "tps.csv"), "--broker", "mqtts://b.example:8883",
            "--collector-key", str(private), "--out-dir", str(env["tmp"] / "usb")]
    (env["tmp"] / "tps.csv").write_text("kode_wilayah,tps\n31.71.01.1001,5\n")
    assert cli.main(argv) == 2 and "PRIVATE" in capsys.readouterr().err
    assert not (env["tmp"] / "usb" / "collector.pub").exists()
