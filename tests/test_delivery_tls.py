"""TLS with server verification, per-kit passwords and ACL on a real mosquitto."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from comms import topics
from comms.collector import Collector
from comms.courier import Courier
from comms.signing import generate_key, registry_add
from tests.delivery_helpers import wait_for as _wait

KW, TPS = "31.71.01.1001", 7
pytestmark = pytest.mark.skipif(
    not shutil.which("openssl") or not shutil.which("mosquitto_passwd"),
    reason="needs openssl and mosquitto_passwd (apt-get install openssl mosquitto)",
)


def _ca(d, name):
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.crt"),
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
        ],
        check=True,
        capture_output=True,
    )


def _pki(d):
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    subprocess.run(
        [
            "openssl",
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(d / "broker.key"),
            "-out",
            str(d / "broker.csr"),
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
    )
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    subprocess.run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(d / "broker.csr"),
            "-CA",
            str(d / "ca.crt"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-out",
            str(d / "broker.crt"),
            "-days",
            "2",
            "-extfile",
            str(d / "san.ext"),
        ],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def tls_broker(tmp_path, mosquitto_factory):
    d = tmp_path / "pki"
    d.mkdir()
    _pki(d)
    pw = d / "passwd"
    for user, secret in (("kit-1", "kit-secret"), ("collector-1", "col-secret")):
        subprocess.run(
            ["mosquitto_passwd", "-b", *(["-c"] if not pw.exists() else []), str(pw), user, secret],
            check=True,
            capture_output=True,
        )
    acl = d / "acl"
    acl.write_text(
        topics.acl_for_kit("tpskit/v1", "kit-1", KW, TPS)
        + "user collector-1\ntopic read tpskit/v1/#\ntopic write tpskit/v1/+/+/ack\n"
    )
    for f in d.iterdir():
        f.chmod(0o644)
    conf = (
        f"certfile {d / 'broker.crt'}\nkeyfile {d / 'broker.key'}\ncafile {d / 'ca.crt'}\n"
        f"password_file {pw}\nacl_file {acl}\nuser root\n"
    )
    broker = mosquitto_factory(extra_conf=conf, anonymous=False)
    return broker, d


def test_tls_credentials_and_acl(tls_broker, tmp_path):
    broker, pki = tls_broker
    url = f"mqtts://localhost:{broker.port}"
    key = generate_key()
    registry_add(tmp_path / "kits.json", "kit-1", key.verify_key)
    collector = Collector(
        broker_url=url,
        db_path=tmp_path / "collector.db",
        registry=tmp_path / "kits.json",
        username="collector-1",
        password="col-secret",
        ca_file=pki / "ca.crt",
        client_id="collector-tls",
    ).start()
    common = dict(
        kit_id="kit-1",
        kode_wilayah=KW,
        signing_key=key,
        broker_url=url,
        username="kit-1",
        ack_timeout_s=1.5,
        backoff_base_s=0.2,
        backoff_max_s=1.0,
    )
    good = Courier(
        db_path=tmp_path / "good.db", tps=TPS, password="kit-secret", ca_file=pki / "ca.crt", **common
    )
    rogue = Courier(
        db_path=tmp_path / "rogue.db", tps=TPS, password="kit-secret", ca_file=pki / "rogue-ca.crt", **common
    )
    wrong_pw = Courier(db_path=tmp_path / "pw.db", tps=TPS, password="nope", ca_file=pki / "ca.crt", **common)
    other_tps = Courier(
        db_path=tmp_path / "other.db",
        tps=8,
        password="kit-secret",
        ca_file=pki / "ca.crt",
        client_id="kit-1-b",
        **common,
    )
    couriers = (good, rogue, wrong_pw, other_tps)
    try:
        assert collector.connected.wait(15), broker.log_tail()
        for i, c in enumerate(couriers):
            c.submit_reading(
                capture_id=f"c{i}",
                halaman=1,
                reading={"n": i},
                photo_jpeg=None,
                taken_at=1.0,
                time_source="rtc",
            )
            c.start()
        assert _wait(lambda: good.status()["acked"] == 1), (good.status(), broker.log_tail())
        assert _wait(lambda: rogue.status()["last_error"] is not None)
        assert not rogue.status()["connected"] and "certificate" in rogue.status()["last_error"].lower()
        assert _wait(lambda: wrong_pw.status()["last_error"] is not None)
        assert not wrong_pw.status()["connected"]
        time.sleep(2)
        # the ACL lets kit-1 publish only under its own TPS: the broker drops (or refuses) the rest
        assert other_tps.status()["acked"] == 0
    finally:
        for c in couriers:
            c.close()
        collector.stop()
    with sqlite3.connect(tmp_path / "collector.db") as db:
        assert [r[0] for r in db.execute("SELECT capture_id FROM readings")] == ["c0"]


def test_shipped_mosquitto_conf_and_generated_acl(tmp_path, capsys):
    """comms/mosquitto/mosquitto.conf starts (paths swapped for test ones) with an ACL from --print-acl."""
    from firmware import cli
    from tests.broker import MosquittoBroker, find_mosquitto, free_port

    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    root = Path(__file__).resolve().parent.parent
    d = tmp_path / "pki"
    d.mkdir()
    _pki(d)
    key = generate_key()
    reg = tmp_path / "kits.json"
    registry_add(reg, "kit-1", key.verify_key, kode_wilayah=KW, tps=TPS)
    assert cli.main(["collector", "--kits", str(reg), "--print-acl"]) == 0
    acl = d / "acl"
    acl.write_text(
        capsys.readouterr().out + "user collector-1\ntopic read tpskit/v1/#\ntopic write tpskit/v1/+/+/ack\n"
    )
    pw = d / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "kit-1", "kit-secret"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "collector-1", "col-secret"], check=True)
    (tmp_path / "persist").mkdir()
    conf = (root / "comms" / "mosquitto" / "mosquitto.conf").read_text()
    for old, new in (
        ("listener 8883\n", "listener {port} 127.0.0.1\n"),
        ("listener 1883 127.0.0.1", f"listener {free_port()} 127.0.0.1"),
        ("/etc/mosquitto/certs/", f"{d}/"),
        ("/etc/mosquitto/tpskit.passwd", str(pw)),
        ("/etc/mosquitto/tpskit.acl", str(acl)),
        ("/var/lib/mosquitto/", f"{tmp_path / 'persist'}/"),
    ):
        assert old in conf, old
        conf = conf.replace(old, new)
    conf += "user root\nlog_dest stderr\n"
    broker = MosquittoBroker(workdir=tmp_path / "mosq", config=conf).start()
    url = f"mqtts://localhost:{broker.port}"
    collector = Collector(
        broker_url=url,
        db_path=tmp_path / "collector.db",
        registry=reg,
        username="collector-1",
        password="col-secret",
        ca_file=d / "ca.crt",
        client_id="collector-conf",
    ).start()
    kit = Courier(
        db_path=tmp_path / "tpskit.db",
        kit_id="kit-1",
        kode_wilayah=KW,
        tps=TPS,
        signing_key=key,
        broker_url=url,
        username="kit-1",
        password="kit-secret",
        ca_file=d / "ca.crt",
        ack_timeout_s=1.5,
        backoff_base_s=0.2,
        backoff_max_s=1.0,
    )
    try:
        kit.submit_reading(
            capture_id="c1",
            halaman=1,
            reading={"n": 1},
            photo_jpeg=b"\xff" * 70_000,
            taken_at=1.0,
            time_source="rtc",
        )
        kit.start()
        assert _wait(lambda: kit.status()["queued"] == 0 and kit.status()["sent"] == 0), (
            kit.status(),
            broker.log_tail(),
        )
    finally:
        kit.close()
        collector.stop()
        broker.close()
