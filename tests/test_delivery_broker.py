"""The shared mosquitto fixture itself: starts, accepts MQTT, stops and restarts on the same port."""

from __future__ import annotations

import socket
import threading

import paho.mqtt.client as mqtt


def _roundtrip(broker) -> bytes:
    got = threading.Event()
    box: list[bytes] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(client, userdata, msg):
        box.append(msg.payload)
        got.set()

    c.on_message = on_message
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        # subscribe is asynchronous; publish retained so the order does not matter
        c.subscribe("t/x", qos=1)
        c.publish("t/x", b"hello", qos=1, retain=True).wait_for_publish(5)
        assert got.wait(5)
    finally:
        c.loop_stop()
        c.disconnect()
    return box[0]


def test_broker_roundtrip_and_restart_same_port(mosquitto):
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    assert _roundtrip(mosquitto) == b"hello"
    port = mosquitto.port
    mosquitto.stop()
    assert not mosquitto.running
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        raise AssertionError("broker still accepting after stop()")
    except OSError:
        pass
    mosquitto.start()
    assert mosquitto.port == port
    assert _roundtrip(mosquitto) == b"hello"


def test_session_broker(mosquitto_session):
    assert mosquitto_session.running
    assert _roundtrip(mosquitto_session) == b"hello"
