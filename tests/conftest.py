"""Shared test fixtures: a real mosquitto broker on a free loopback port.

- ``mosquitto``: a fresh broker for one test; ``.stop()`` / ``.start()`` simulate an outage (same port).
- ``mosquitto_session``: one broker shared by the whole session (do not stop it in a test).
- ``mosquitto_factory``: ``mosquitto_factory(extra_conf="...")`` starts more brokers, all killed at teardown.

Each yields a ``tests.broker.MosquittoBroker`` with ``host``, ``port``, ``url`` ("mqtt://127.0.0.1:PORT"),
``start()``, ``stop()``, ``kill()``, ``restart()``, ``running`` and ``log_tail()``.
Tests using them are skipped with a clear reason when mosquitto is not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.broker import MosquittoBroker, find_mosquitto  # noqa: E402

NO_MOSQUITTO = (
    "mosquitto not installed (apt-get install mosquitto, or set TPSKIT_MOSQUITTO=/path/to/mosquitto)"
)


def _require_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.skip(NO_MOSQUITTO)


@pytest.fixture
def mosquitto_factory(tmp_path_factory):
    """Start brokers on demand; every one is stopped at teardown."""
    _require_mosquitto()
    brokers: list[MosquittoBroker] = []

    def make(*, extra_conf: str = "", port: int | None = None, anonymous: bool = True) -> MosquittoBroker:
        workdir = tmp_path_factory.mktemp("mosquitto")
        broker = MosquittoBroker(workdir=workdir, extra_conf=extra_conf, port=port, anonymous=anonymous)
        brokers.append(broker)
        return broker.start()

    yield make
    for broker in brokers:
        broker.close()


@pytest.fixture
def mosquitto(mosquitto_factory):
    """A fresh broker for this test (stop()/start() keep the same port)."""
    return mosquitto_factory()


@pytest.fixture(scope="session")
def mosquitto_session(tmp_path_factory):
    """One broker for the whole session; tests must not stop it."""
    _require_mosquitto()
    broker = MosquittoBroker(workdir=tmp_path_factory.mktemp("mosquitto-session"))
    broker.start()
    yield broker
    broker.close()
