"""Simulated devices answering commands, against a real Mosquitto: the platform's side is an MQTT 5
probe that publishes commands as ``control`` does (ResponseTopic and CorrelationData properties) and
reads the replies."""

from __future__ import annotations

import json
import queue
import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sdk.simulator import (
    CommandBehaviour,
    CommandError,
    CommandMode,
    DeviceCredentials,
    Simulator,
    TelemetryGenerator,
    parse_command,
)
from sdk.simulator.__main__ import build_parser, command_behaviour
from tests.brokers import MosquittoBroker, MqttProbe, mosquitto

pytestmark = pytest.mark.timeout(60)

WAIT = 3.0  # seconds a reply that should come may take at most (they take milliseconds)


@pytest.fixture(scope="module")
def broker() -> Iterator[MosquittoBroker]:
    """A private Mosquitto without authentication, shared by the module."""
    with mosquitto(dynsec=False) as private:
        yield private


def _creds(count: int = 1) -> list[DeviceCredentials]:
    prefix = f"c{uuid.uuid4().hex[:6]}-"
    return [DeviceCredentials(id=f"{prefix}{n}", secret="unused") for n in range(1, count + 1)]


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


class Platform:
    """The platform's side: publishes commands with MQTT 5 properties, collects what comes back on
    the topics it subscribed to."""

    def __init__(self, broker: MosquittoBroker, *topics: str) -> None:
        self.probe = MqttProbe(broker.host, broker.port, protocol=5)
        assert self.probe.connect() is not None and self.probe.connected
        for topic in topics:
            assert self.probe.subscribe(topic) == [1]
        self.received: list[mqtt.MQTTMessage] = []

    def send(
        self,
        device_id: str,
        command_type: str = "reboot",
        params: dict[str, Any] | None = None,
        *,
        payload: bytes | None = None,
        command_id: str | None = None,
        response_topic: str | None = None,
        properties: bool = True,
    ) -> tuple[str, bytes]:
        """Publish a command (QoS 1, wait for the PUBACK); returns its id and correlation data."""
        command_id = command_id or str(uuid.uuid4())
        topic = f"devices/{device_id}/commands/{command_id}"
        if payload is None:
            body = {"id": command_id, "type": command_type, "params": params or {}, "expires_at": None}
            payload = json.dumps(body).encode()
        correlation = uuid.UUID(command_id).bytes if _is_uuid(command_id) else command_id.encode()
        props = None
        if properties:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic or f"{topic}/reply"
            props.CorrelationData = correlation
        info = self.probe.client.publish(topic, payload, qos=1, properties=props)
        info.wait_for_publish(WAIT)
        assert info.is_published()
        return command_id, correlation

    def _drain(self, timeout: float) -> mqtt.MQTTMessage | None:
        try:
            message = self.probe.messages.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        self.received.append(message)
        return message

    def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
        """Collect messages until ``predicate()`` holds (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._drain(min(remaining, 0.05))
        return True

    def replies(self, command_id: str, count: int, timeout: float = WAIT) -> list[mqtt.MQTTMessage]:
        """The first ``count`` messages whose topic names ``command_id`` (fewer if they do not come in time)."""
        self.wait_for(lambda: len(self.on(command_id)) >= count, timeout)
        return self.on(command_id)[:count]

    def quiet(self, command_id: str, seconds: float) -> list[mqtt.MQTTMessage]:
        """Everything about ``command_id`` that has arrived ``seconds`` from now."""
        self.wait_for(lambda: False, seconds)
        return self.on(command_id)

    def on(self, command_id: str) -> list[mqtt.MQTTMessage]:
        return [m for m in self.received if command_id in m.topic.split("/")]

    def topic(self, topic: str, since: int = 0) -> list[mqtt.MQTTMessage]:
        return [m for m in self.received[since:] if m.topic == topic]

    def close(self) -> None:
        self.probe.close()


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def body(message: mqtt.MQTTMessage) -> dict[str, Any]:
    return json.loads(message.payload)


def correlation_of(message: mqtt.MQTTMessage) -> bytes | None:
    return getattr(message.properties, "CorrelationData", None)


@pytest.fixture
def platform(broker: MosquittoBroker) -> Iterator[Callable[..., Platform]]:
    made: list[Platform] = []

    def make(*topics: str) -> Platform:
        made.append(Platform(broker, *topics))
        return made[-1]

    yield make
    for item in made:
        item.close()


@pytest.fixture
def simulate(broker: MosquittoBroker) -> Iterator[Callable[..., Simulator]]:
    """Start a Simulator (telemetry at a low rate unless told otherwise) whose devices have their
    command subscriptions granted; stopped after the test."""
    started: list[Simulator] = []

    def start(credentials: list[DeviceCredentials], **kwargs: Any) -> Simulator:
        kwargs.setdefault("rate", 0.01)
        simulator = Simulator(credentials, broker.url, connect_timeout=WAIT, **kwargs)
        started.append(simulator)
        simulator.start()
        assert wait_until(lambda: all(d.commands_subscribed for d in simulator.devices))
        return simulator

    yield start
    for simulator in started:
        simulator.stop(drain_timeout=1, stop_timeout=2)


# --- Unit level -----------------------------------------------------------------------------------


def test_behaviour_defaults_and_validation():
    assert CommandBehaviour() == CommandBehaviour(mode=CommandMode.SUCCESS, executing=True, delay=None)
    assert CommandBehaviour().final_delay == 0
    assert CommandBehaviour.of("slow").final_delay == CommandBehaviour.SLOW_DELAY == 5
    assert CommandBehaviour.of("fail").mode is CommandMode.FAIL
    assert CommandBehaviour.of(None) == CommandBehaviour()
    assert CommandBehaviour("slow", delay=0.3).final_delay == 0.3
    assert CommandBehaviour("success", delay=2).final_delay == 2
    with pytest.raises(ValueError, match="Unknown command mode"):
        CommandBehaviour.of("sometimes")
    with pytest.raises(ValueError):
        CommandBehaviour(delay=-1)


def test_cli_command_options():
    args = build_parser().parse_args(["--credentials", "c.json", "--commands", "slow", "--command-delay", "0.5"])
    assert command_behaviour(args) == CommandBehaviour(mode=CommandMode.SLOW, delay=0.5)
    args = build_parser().parse_args(["--credentials", "c.json"])
    assert command_behaviour(args) == CommandBehaviour()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--credentials", "c.json", "--commands", "maybe"])


def test_parse_command():
    assert parse_command(b'{"id":"x","type":"set_state","params":{"state":true}}') == ("set_state", {"state": True})
    assert parse_command(b'{"type":"reboot","params":null}') == ("reboot", {})
    for bad in (b"not json", b"[1]", b'{"params":{}}', b'{"type":"explode"}', b'{"type":"reboot","params":[]}'):
        with pytest.raises(CommandError):
            parse_command(bad)


def test_generator_current_value_and_pin():
    generator = TelemetryGenerator(random.Random(3), ["temperature", "battery", "door_open"])
    values = generator.next()
    assert generator.current() == values
    assert generator.pin("temperature", 42) == 42.0
    assert generator.pin("door_open", 1) is True
    assert all(generator.next()["temperature"] == 42.0 for _ in range(50))
    generator.unpin("temperature")
    assert generator.next()["temperature"] != 42.0 or generator.next()["temperature"] != 42.0
    with pytest.raises(KeyError):
        generator.pin("humidity", 50)


# --- Against Mosquitto ----------------------------------------------------------------------------


def test_success_executing_then_success_with_read_value(broker, platform, simulate):
    (cred,) = _creds()
    simulator = simulate([cred], seed=7)
    device = simulator.devices[0]
    commands = platform(f"devices/{cred.id}/commands/+/reply")

    command_id, correlation = commands.send(cred.id, "read_value", {"key": "temperature"})
    executing, final = commands.replies(command_id, 2)
    for message in (executing, final):
        assert message.topic == f"devices/{cred.id}/commands/{command_id}/reply"
        assert message.qos == 1
        assert correlation_of(message) == correlation  # echoed for the platform to match
    assert body(executing) == {"status": "executing"}
    reply = body(final)
    assert reply["status"] == "success"
    assert reply["result"]["key"] == "temperature"
    value = reply["result"]["value"]
    assert isinstance(value, float) and -20 <= value <= 60

    # A key the device does not have reads as null; it is still a success.
    command_id, _ = commands.send(cred.id, "read_value", {"key": "pressure"})
    assert [body(m) for m in commands.replies(command_id, 2)] == [
        {"status": "executing"},
        {"status": "success", "result": {"key": "pressure", "value": None}},
    ]
    assert device.commands_received == 2
    assert device.commands_answered == 2
    assert simulator.summary().commands_answered == 2
    assert "commands=2/2" in simulator.summary().line()


def test_response_topic_property_is_used(broker, platform, simulate):
    (cred,) = _creds()
    simulate([cred], command_behaviour=CommandBehaviour(executing=False))
    elsewhere = f"devices/{cred.id}/answers/here"
    commands = platform(elsewhere, f"devices/{cred.id}/commands/+/reply")
    command_id, correlation = commands.send(cred.id, "take_snapshot", response_topic=elsewhere)
    assert commands.wait_for(lambda: len(commands.topic(elsewhere)) >= 1)
    (message,) = commands.topic(elsewhere)
    assert correlation_of(message) == correlation
    snapshot = {"url": f"snapshot://{cred.id}/1.jpg", "resolution": "1920x1080"}
    assert body(message) == {"status": "success", "result": snapshot}
    assert commands.quiet(command_id, 0.2) == []  # nothing on the default reply topic


def test_fail_mode_per_device(broker, platform, simulate):
    failing, working = _creds(2)
    simulate([failing, working], device_command_behaviours={failing.id: "fail"})
    commands = platform("devices/+/commands/+/reply")

    bad_id, _ = commands.send(failing.id, "set_state", {"state": True})
    good_id, _ = commands.send(working.id, "set_state", {"state": True})
    assert [body(m) for m in commands.replies(bad_id, 2)] == [
        {"status": "executing"},
        {"status": "failed", "error": "simulated failure"},
    ]
    assert [body(m) for m in commands.replies(good_id, 2)] == [
        {"status": "executing"},
        {"status": "success", "result": {"state": True}},
    ]


def test_slow_mode_replies_executing_then_success_after_the_delay(broker, platform, simulate):
    (cred,) = _creds()
    simulator = simulate([cred], command_behaviour=CommandBehaviour(CommandMode.SLOW, delay=0.6))
    commands = platform(f"devices/{cred.id}/commands/+/reply")

    command_id, _ = commands.send(cred.id, "reboot")
    assert [body(m) for m in commands.replies(command_id, 1)] == [{"status": "executing"}]
    assert len(commands.quiet(command_id, 0.1)) == 1  # the final reply waits for the delay
    assert simulator.devices[0].commands_answered == 0
    replies = commands.replies(command_id, 2)
    assert [body(m)["status"] for m in replies] == ["executing", "success"]
    assert body(replies[1])["result"]["rebooted"] is True
    assert simulator.devices[0].reboots == 1


def test_silent_mode_never_replies(broker, platform, simulate):
    (cred,) = _creds()
    simulator = simulate([cred], command_behaviour="silent")
    commands = platform(f"devices/{cred.id}/commands/+/reply")
    command_id, _ = commands.send(cred.id, "reboot")
    assert wait_until(lambda: simulator.devices[0].commands_received == 1)
    assert commands.quiet(command_id, 0.5) == []
    assert simulator.devices[0].commands_answered == 0

    # Switched at run time, the device answers again.
    simulator.set_command_behaviour("success")
    command_id, _ = commands.send(cred.id, "reboot")
    assert [body(m)["status"] for m in commands.replies(command_id, 2)] == ["executing", "success"]


def test_malformed_and_unknown_commands_fail_without_crashing(broker, platform, simulate):
    (cred,) = _creds()
    simulator = simulate([cred])
    commands = platform(f"devices/{cred.id}/commands/+/reply")

    not_json, correlation = commands.send(cred.id, payload=b"{not json")
    (reply,) = commands.replies(not_json, 1)
    assert body(reply)["status"] == "failed"
    assert body(reply)["error"].startswith("malformed command payload")
    assert correlation_of(reply) == correlation

    unknown, _ = commands.send(cred.id, "self_destruct")
    (reply,) = commands.replies(unknown, 1)
    assert body(reply) == {"status": "failed", "error": "unsupported command type 'self_destruct'"}

    bad_params, _ = commands.send(cred.id, "set_sampling_rate", {"rate": "fast"})
    assert [body(m) for m in commands.replies(bad_params, 2)] == [
        {"status": "executing"},
        {"status": "failed", "error": "rate must be a number"},
    ]
    # Refusals come at once, alone; and the device still works.
    assert len(commands.quiet(not_json, 0.1)) == 1 and len(commands.on(unknown)) == 1
    fine, _ = commands.send(cred.id, "stop_stream")
    assert [body(m)["status"] for m in commands.replies(fine, 2)] == ["executing", "success"]
    device = simulator.devices[0]
    assert device.connected
    assert (device.commands_received, device.commands_answered, device.commands_failed) == (4, 4, 3)


def test_mqtt_311_device_replies_on_topic_plus_reply(broker, platform, simulate):
    (cred,) = _creds()
    simulate([cred], mqtt_version=3)
    commands = platform(f"devices/{cred.id}/commands/+/reply")
    # The platform sends MQTT 5 properties; a 3.1.1 device never sees them and uses topic + "/reply".
    command_id, _ = commands.send(cred.id, "custom", {"name": "blink", "times": 3})
    replies = commands.replies(command_id, 2)
    assert [m.topic for m in replies] == [f"devices/{cred.id}/commands/{command_id}/reply"] * 2
    assert [body(m) for m in replies] == [
        {"status": "executing"},
        {"status": "success", "result": {"name": "blink", "params": {"times": 3}}},
    ]
    assert all(correlation_of(m) is None for m in replies)

    # And without any properties at all (a 3.1.1 platform).
    command_id, _ = commands.send(cred.id, "reboot", properties=False)
    assert [body(m)["status"] for m in commands.replies(command_id, 2)] == ["executing", "success"]


def test_set_sampling_rate_changes_the_publish_rate(broker, platform, simulate):
    (cred,) = _creds()
    simulator = simulate([cred], rate=0.2)  # one message every 5 s
    device = simulator.devices[0]
    commands = platform(f"devices/{cred.id}/commands/+/reply", f"devices/{cred.id}/telemetry")

    command_id, _ = commands.send(cred.id, "set_sampling_rate", {"rate": 20})
    assert [body(m) for m in commands.replies(command_id, 2)] == [
        {"status": "executing"},
        {"status": "success", "result": {"rate": 20}},
    ]
    assert device.sampling_rate == 20
    since = len(commands.received)
    # At 20 msg/s, ten messages take half a second; at the old rate they would take 50 s.
    telemetry = f"devices/{cred.id}/telemetry"
    assert commands.wait_for(lambda: len(commands.topic(telemetry, since)) >= 10)


def test_set_value_state_update_and_snapshot_results(broker, platform, simulate):
    (cred,) = _creds()
    simulator = simulate([cred], rate=20, command_behaviour=CommandBehaviour(executing=False))
    device = simulator.devices[0]
    commands = platform(
        f"devices/{cred.id}/commands/+/reply", f"devices/{cred.id}/telemetry", f"devices/{cred.id}/attributes"
    )

    def final(command_type: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        command_id, _ = commands.send(cred.id, command_type, params)
        (reply,) = commands.replies(command_id, 1)
        return body(reply)

    # set_value of a telemetry key: the device reports that value from then on.
    assert final("set_value", {"key": "temperature", "value": 31.5}) == {
        "status": "success",
        "result": {"key": "temperature", "value": 31.5},
    }
    telemetry = f"devices/{cred.id}/telemetry"
    since = len(commands.received)
    assert commands.wait_for(lambda: len(commands.topic(telemetry, since)) >= 3)
    later = [body(m) for m in commands.topic(telemetry, since)]
    assert all(values["temperature"] == 31.5 for values in later[1:])  # the first may have been on its way
    assert final("read_value", {"key": "temperature"})["result"] == {"key": "temperature", "value": 31.5}

    # set_value of another key, and set_state, are remembered and can be read back.
    assert final("set_value", {"value": 7})["result"] == {"key": None, "value": 7}
    assert final("set_value", {"key": "setpoint", "value": 21.5})["result"] == {"key": "setpoint", "value": 21.5}
    assert final("read_value", {"key": "setpoint"})["result"] == {"key": "setpoint", "value": 21.5}
    assert final("set_state", {"state": False})["result"] == {"state": False}
    assert final("read_value", {"key": "state"})["result"] == {"key": "state", "value": False}
    assert final("set_value", {"value": True})["error"] == "value must be a number"

    # update: the new version in the result and as attributes.
    checksum = "sha256:" + "0" * 64
    result = final("update", {"url": "https://fw.example.com/2.0.bin", "checksum": checksum, "version": "2.0.0"})
    assert result["status"] == "success"
    assert result["result"]["version"] == "2.0.0"
    assert device.firmware_version == "2.0.0"
    attributes = f"devices/{cred.id}/attributes"
    assert commands.wait_for(lambda: any(b"2.0.0" in m.payload for m in commands.topic(attributes)))
    assert [body(m) for m in commands.topic(attributes)] == [{"firmware": "2.0.0", "firmware_version": "2.0.0"}]
    assert final("update", {"version": "3"})["status"] == "failed"

    # Cameras.
    assert final("take_snapshot")["result"]["url"] == f"snapshot://{cred.id}/1.jpg"
    assert final("take_snapshot", {"resolution": "640x480"})["result"] == {
        "url": f"snapshot://{cred.id}/2.jpg",
        "resolution": "640x480",
    }
    assert final("start_stream", {"quality": "high"})["result"]["streaming"] is True
    assert final("ptz_control", {"pan": 30, "zoom": 2})["result"] == {"pan": 30.0, "tilt": 0.0, "zoom": 2.0}
    assert final("ptz_control", {})["status"] == "failed"

    # reset forgets what commands set.
    assert final("reset", {"factory": False})["result"] == {"reset": True, "factory": False}
    assert final("read_value", {"key": "setpoint"})["result"]["value"] is None
    assert device.telemetry.pinned == {}


def test_a_repeated_command_is_carried_out_once(broker, platform, simulate):
    (cred,) = _creds()
    simulator = simulate([cred])
    commands = platform(f"devices/{cred.id}/commands/+/reply")
    command_id, _ = commands.send(cred.id, "take_snapshot")
    assert len(commands.replies(command_id, 2)) == 2
    commands.send(cred.id, "take_snapshot", command_id=command_id)  # e.g. redelivered
    replies = commands.replies(command_id, 3)
    assert [body(m)["status"] for m in replies] == ["executing", "success", "success"]
    assert body(replies[1]) == body(replies[2])
    assert simulator.devices[0].snapshots == 1
