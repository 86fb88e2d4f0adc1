"""The embedded broker (amqtt, in-process) with real paho clients: registry logins and the topic ACL.

What amqtt 0.12.1 does, pinned down here (see transport/embedded_broker.py):
- MQTT 3.1.1 only; an MQTT 5 client gets no CONNACK at all;
- refused login: CONNACK 5 "not authorized"; refused subscription: SUBACK 0x80;
- refused publish: plain PUBACK, message dropped, the client stays connected;
- ``$share/{group}/`` filters work as plain filters (one subscriber per group in embedded mode);
- unacknowledged QoS 1 messages are not redelivered after the subscriber reconnects.
"""

import socket
import time

import pytest

from devices import services
from tests.brokers import MqttProbe
from tests.factories import DeviceFactory
from transport.embedded_broker import start_embedded_broker, strip_shared

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

NOT_AUTHORIZED = 135
SUBSCRIBE_FAILURE = 0x80
BRIDGE = ("fluxiot-bridge", "bridge-secret")


@pytest.fixture
def embedded(settings):
    settings.MQTT_BRIDGE_USERNAME, settings.MQTT_BRIDGE_PASSWORD = BRIDGE
    host, port, stop = start_embedded_broker("127.0.0.1", 0)
    try:
        yield host, port
    finally:
        stop()


def probe(embedded, username, password, **kwargs) -> MqttProbe:
    host, port = embedded
    kwargs.setdefault("protocol", 4)
    return MqttProbe(host, port, username, password, **kwargs)


def login(embedded, username, password, **kwargs) -> int | None:
    with probe(embedded, username, password, **kwargs) as client:
        reason = client.connect()
        return None if reason is None else reason.value


def activated(device_id: str) -> str:
    return services.activate_device(DeviceFactory(id=device_id), actor=None)


def test_device_and_bridge_talk_through_the_embedded_broker(embedded):
    secret = activated("dev-a")
    with probe(embedded, *BRIDGE) as bridge, probe(embedded, "dev-a", secret) as device:
        assert bridge.connect().value == 0
        assert bridge.subscribe("$share/fluxiot/devices/+/telemetry") == [1]
        assert device.connect().value == 0
        assert device.subscribe("devices/dev-a/commands/+") == [1]

        assert device.publish("devices/dev-a/telemetry", '{"t": 1}') == 0
        message = bridge.message()
        assert (message.topic, message.payload) == ("devices/dev-a/telemetry", b'{"t": 1}')

        assert bridge.publish("devices/dev-a/commands/c1", b"{}") == 0
        assert device.message().topic == "devices/dev-a/commands/c1"


def test_logins_are_checked_against_the_registry(embedded):
    secret = activated("dev-a")
    DeviceFactory(id="dev-registered")
    assert login(embedded, "dev-a", secret) == 0
    assert login(embedded, "dev-a", "wrong") == NOT_AUTHORIZED
    assert login(embedded, "dev-registered", "anything") == NOT_AUTHORIZED
    assert login(embedded, "nobody", secret) == NOT_AUTHORIZED
    assert login(embedded, None, None) == NOT_AUTHORIZED  # anonymous
    assert login(embedded, "fluxiot-bridge", "wrong") == NOT_AUTHORIZED
    assert login(embedded, "fluxiot-admin", "anything") == NOT_AUTHORIZED
    assert login(embedded, *BRIDGE) == 0


def test_other_devices_topics_are_refused(embedded):
    secret_a, secret_b = activated("dev-a"), activated("dev-b")
    with probe(embedded, "dev-b", secret_b) as victim, probe(embedded, "dev-a", secret_a) as device:
        assert victim.connect().value == 0
        assert victim.subscribe("devices/dev-b/#") == [1]
        assert device.connect().value == 0
        for topic in ("devices/dev-b/#", "devices/+/commands/#", "devices/#", "#", "$SYS/#"):
            assert device.subscribe(topic) == [SUBSCRIBE_FAILURE], topic
        # amqtt acknowledges a refused publish and drops it; the client stays connected.
        assert device.publish("devices/dev-b/commands/x", b"spoofed") == 0
        assert victim.message(timeout=0.5) is None
        assert device.connected
    with probe(embedded, *BRIDGE) as bridge:
        assert bridge.connect().value == 0
        assert bridge.subscribe("other/#") == [SUBSCRIBE_FAILURE]


def test_rotation_disable_and_delete_take_effect_at_once(embedded):
    old = activated("dev-a")
    with probe(embedded, "dev-a", old) as session:
        assert session.connect().value == 0
        new = services.rotate_credentials("dev-a", actor=None)
        assert session.wait_disconnected(), "sessions opened with the old secret are dropped"
    assert login(embedded, "dev-a", old) == NOT_AUTHORIZED
    assert login(embedded, "dev-a", new) == 0

    with probe(embedded, "dev-a", new) as session:
        assert session.connect().value == 0
        services.disable_device("dev-a", actor=None)
        assert session.wait_disconnected()
    assert login(embedded, "dev-a", new) == NOT_AUTHORIZED

    fresh = services.activate_device("dev-a", actor=None)
    with probe(embedded, "dev-a", fresh) as session:
        assert session.connect().value == 0
        services.delete_device(DeviceFactory.build(id="dev-a"), actor=None)
        assert session.wait_disconnected()
    assert login(embedded, "dev-a", fresh) == NOT_AUTHORIZED


def test_mqtt5_clients_get_no_connack(embedded):
    secret = activated("dev-a")
    with probe(embedded, "dev-a", secret, protocol=5, timeout=1.5) as client:
        reason = client.connect()
        assert reason is None or reason.is_failure
        assert not client.connected


def test_unacknowledged_messages_are_not_redelivered(embedded):
    """A documented amqtt limitation: QoS 1 in flight to a subscriber that drops is lost."""
    secret = activated("dev-a")
    holder = probe(embedded, *BRIDGE, client_id="bridge-x", clean=False)
    holder.client.manual_ack_set(True)
    try:
        with probe(embedded, "dev-a", secret) as device:
            assert holder.connect().value == 0
            assert holder.subscribe("devices/+/telemetry") == [1]
            assert device.connect().value == 0
            device.publish("devices/dev-a/telemetry", b"1")
            assert holder.message() is not None  # received, never acknowledged
            holder.client.socket().close()  # the subscriber dies
            holder.client.loop_stop()
            time.sleep(0.5)
            with probe(embedded, *BRIDGE, client_id="bridge-x", clean=False) as again:
                assert again.connect().value == 0
                assert again.message(timeout=1.5) is None
                # Messages published while it is away are queued for the persistent session, though.
                again.close()
                device.publish("devices/dev-a/telemetry", b"2")
            with probe(embedded, *BRIDGE, client_id="bridge-x", clean=False) as again:
                assert again.connect().value == 0
                assert again.message().payload == b"2"
    finally:
        holder.client.loop_stop()


def test_a_taken_port_moves_to_the_next_free_one(settings):
    settings.MQTT_BRIDGE_PASSWORD = "x"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        host, port, stop = start_embedded_broker("127.0.0.1", busy)
        try:
            assert port != busy and busy < port <= busy + 50
            with MqttProbe(host, port, "fluxiot-bridge", "x", protocol=4) as client:
                assert client.connect().value == 0
        finally:
            stop()
            stop()  # idempotent


def test_a_bridge_password_is_generated_when_none_is_set(settings):
    settings.MQTT_BRIDGE_PASSWORD = ""
    host, port, stop = start_embedded_broker("127.0.0.1", 0)
    try:
        assert settings.MQTT_BRIDGE_PASSWORD
        with MqttProbe(host, port, settings.MQTT_BRIDGE_USERNAME, settings.MQTT_BRIDGE_PASSWORD, protocol=4) as c:
            assert c.connect().value == 0
        assert login((host, port), settings.MQTT_BRIDGE_USERNAME, "") == NOT_AUTHORIZED
    finally:
        stop()


def test_strip_shared():
    assert strip_shared("$share/fluxiot/devices/+/telemetry") == "devices/+/telemetry"
    assert strip_shared("devices/a/#") == "devices/a/#"
    assert strip_shared("$share/g") == "$share/g"
    assert strip_shared("$SYS/#") == "$SYS/#"
