"""The action registry (rules/actions.py): each built-in action's checks and what it does, against
real servers (PostgreSQL, Redis for the bus, a private Mosquitto, a local HTTP server)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from control.models import CommandBatch, DeviceCommand
from devices.choices import ActivationState, DeviceStatus
from fluxiot.celery import app as celery_app
from rules import actions
from rules.engine import EngineMessage
from rules.models import DeviceFacts
from tests.brokers import MqttProbe
from tests.factories import DeviceFactory, DeviceGroupFactory

pytestmark = pytest.mark.django_db

RECEIVED = datetime(2026, 5, 4, 12, 30, tzinfo=UTC)
RULE = SimpleNamespace(id=7, name="Lab too warm")


def message(device_id="lamp-1", telemetry=None, trigger="telemetry", **fields):
    return EngineMessage(
        device=DeviceFacts(id=device_id, device_type="actuator", tags=("lab",), group_path=""),
        trigger=trigger,
        received=RECEIVED,
        telemetry={"temperature": 31.5} if telemetry is None else telemetry,
        **fields,
    )


@pytest.fixture
def lamp():
    return DeviceFactory(
        id="lamp-1", device_type="actuator", activation_state=ActivationState.ACTIVE, status=DeviceStatus.ONLINE
    )


@pytest.fixture
def eager_celery(settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    old = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = old


@pytest.fixture
def probe(command_broker):
    probes = []

    def make(topic):
        client = MqttProbe(command_broker.host, command_broker.port)
        assert client.connect() is not None
        assert client.subscribe(topic) is not None
        probes.append(client)
        return client

    yield make
    for client in probes:
        client.close()


class _Recorder(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        self.server.requests.append((self.path, dict(self.headers), json.loads(self.rfile.read(length))))
        status = self.server.answers.pop(0) if self.server.answers else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok" if status < 400 else b"nope")

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 (a free port) that records each POST; ``answers`` lists the
    status codes of the next answers (200 once they run out)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.requests, server.answers = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def run(action_type, params, msg=None, **ctx_fields):
    ctx = actions.ActionContext(**ctx_fields)
    outcome = actions.run_actions(ctx, [{"type": action_type, "params": params}], RULE, msg or message())
    return ctx, outcome


# --- The registry ----------------------------------------------------------------------------------


def test_builtins_are_registered_with_schema_and_example():
    catalogue = {spec["type"]: spec for spec in actions.catalogue()}
    assert {"emit_event", "store_telemetry", "send_command", "publish_mqtt", "webhook"} <= set(catalogue)
    for spec in catalogue.values():
        assert spec["description"] and spec["params_schema"]["type"] == "object"


def test_examples_are_valid(lamp):
    for spec in actions.registry().values():
        assert spec.validate(spec.example) == [], spec.type


def test_register_adds_a_type_others_can_use():
    calls = []

    class Beep(actions.ActionSpec):
        type = "beep_for_test"
        description = "Beep."
        schema = {"type": "object", "properties": {"times": {"type": "integer", "minimum": 1}}}

        def execute(self, ctx, params, rule, message):
            calls.append(params["times"])

    actions.register(Beep())
    try:
        assert actions.validate_actions([{"type": "beep_for_test", "params": {"times": 0}}])
        assert actions.validate_actions([{"type": "beep_for_test", "params": {"times": 2}}]) == []
        ctx, _ = run("beep_for_test", {"times": 2})
        assert calls == [2] and ctx.errors == []
    finally:
        actions._REGISTRY.pop("beep_for_test")
    with pytest.raises(ValueError):
        actions.register(type("Bad", (actions.ActionSpec,), {"type": "Bad Name"})())


def test_validate_actions_shape():
    assert actions.validate_actions({"type": "emit_event"}) == ['A list of actions, each {"type": …, "params": {…}}.']
    assert actions.validate_actions([{"type": "emit_event", "params": {}, "when": "x"}])[0].endswith(
        "unknown keys when (only type and params)."
    )
    assert actions.validate_actions([{"type": "emit_event", "params": []}]) == [
        "actions[0] (emit_event): params must be an object."
    ]
    assert len(actions.validate_actions([{"type": "emit_event"}] * 21)) == 1
    assert actions.validate_actions([{"type": "emit_event"}]) == []  # params default to {}


# --- emit_event ------------------------------------------------------------------------------------


def test_emit_event_publishes_rule_matched_after_commit(bus, django_capture_on_commit_callbacks):
    listener = bus("rule.matched")
    with django_capture_on_commit_callbacks(execute=True):
        ctx, outcome = run("emit_event", {"message": "Lab too warm"})
    assert ctx.errors == [] and outcome == [{"type": "emit_event"}]
    [event] = listener.received()
    assert event["data"] == {
        "rule": {"id": 7, "name": "Lab too warm"},
        "device": "lamp-1",
        "trigger": "telemetry",
        "received": RECEIVED.isoformat(),
        "telemetry": {"temperature": 31.5},
        "message": "Lab too warm",
    }


def test_emit_event_checks_its_params():
    spec = actions.get("emit_event")
    assert spec.validate({}) == []
    assert spec.validate({"message": 3})
    assert spec.validate({"text": "x"})


# --- store_telemetry -------------------------------------------------------------------------------


def test_store_telemetry_adds_derived_points_at_the_messages_time():
    params = {"values": {"temperature_f": "telemetry.temperature * 1.8 + 32.0", "hot": "telemetry.temperature > 30.0"}}
    ctx, _ = run("store_telemetry", params, points=[("lamp-1", "temperature", RECEIVED, 31.5)])
    assert ctx.errors == []
    assert ctx.points == [
        ("lamp-1", "temperature", RECEIVED, 31.5),
        ("lamp-1", "temperature_f", RECEIVED, pytest.approx(88.7)),
        ("lamp-1", "hot", RECEIVED, True),
    ]


def test_store_telemetry_keeps_the_good_values_and_records_the_failing_one():
    params = {"values": {"missing": "telemetry.humidity * 2.0", "label": '"t=" + string(telemetry.temperature)'}}
    ctx, outcome = run("store_telemetry", params)
    assert ctx.points == [("lamp-1", "label", RECEIVED, "t=31.5")]
    assert len(ctx.errors) == 1 and ctx.errors[0].startswith("store_telemetry: missing:")
    assert "humidity" in outcome[0]["error"]
    ctx, _ = run("store_telemetry", {"values": {"nothing": "null"}})
    assert ctx.points == [] and "null" in ctx.errors[0]


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ('"a\\u0000b"', "NUL"),
        ('{"k": ["\\x00"]}', "NUL"),
        ("[1.0, 1.0 / 0.0]", "not a finite number"),
    ],
)
def test_store_telemetry_refuses_values_postgresql_cannot_store(expression, problem):
    ctx, _ = run("store_telemetry", {"values": {"bad": expression, "good": "1"}})
    assert ctx.points == [("lamp-1", "good", RECEIVED, 1)]
    assert len(ctx.errors) == 1 and problem in ctx.errors[0]


def test_store_telemetry_checks_that_expressions_compile_but_not_that_they_are_boolean():
    spec = actions.get("store_telemetry")
    assert spec.validate({"values": {"f": "telemetry.t * 2.0"}}) == []
    [error] = spec.validate({"values": {"f": "telemetry.t *"}})
    assert error.startswith("values.f: ") and "Syntax error" in error
    assert spec.validate({"values": {}})
    assert spec.validate({"values": {"ts": "1"}})
    assert spec.validate({"values": {"f": 3}})
    assert spec.validate({})


# --- send_command ----------------------------------------------------------------------------------


def test_send_command_to_the_messages_device_is_published_after_commit(lamp, probe, django_capture_on_commit_callbacks):
    listener = probe("devices/lamp-1/commands/+")
    with django_capture_on_commit_callbacks(execute=True):
        ctx, _ = run("send_command", {"type": "set_state", "params": {"state": True}, "timeout": 20})
        command = DeviceCommand.objects.get(device=lamp)
        assert listener.message(timeout=0.3) is None  # nothing leaves before the commit
    assert ctx.errors == []
    assert (command.command_type, command.params, command.timeout) == ("set_state", {"state": True}, 20)
    received = listener.message()
    assert received is not None and received.topic == f"devices/lamp-1/commands/{command.pk}"
    assert json.loads(received.payload)["params"] == {"state": True}
    command.refresh_from_db()
    assert command.status == "sent"


def test_send_command_to_a_named_device_group_or_tags(lamp, django_capture_on_commit_callbacks):
    group = DeviceGroupFactory()
    DeviceFactory(id="lamp-2", device_type="actuator", activation_state=ActivationState.ACTIVE, group=group, tags=["x"])
    ctx, _ = run("send_command", {"type": "reboot", "target": {"device": "lamp-2"}}, msg=message("other"))
    assert ctx.errors == [] and DeviceCommand.objects.filter(device_id="lamp-2").count() == 1
    with django_capture_on_commit_callbacks(execute=False):
        ctx, _ = run("send_command", {"type": "reboot", "target": {"group": group.pk}})
        ctx2, _ = run("send_command", {"type": "reboot", "target": {"tags": ["x"], "match": "all"}})
    assert ctx.errors == ctx2.errors == []
    assert [batch.total for batch in CommandBatch.objects.order_by("created_at")] == [1, 1]


def test_send_command_failures_are_recorded_and_the_next_action_runs(django_capture_on_commit_callbacks, bus):
    DeviceFactory(id="sleepy", device_type="actuator")  # registered, never activated
    listener = bus("rule.matched")
    ctx = actions.ActionContext()
    with django_capture_on_commit_callbacks(execute=True):
        outcome = actions.run_actions(
            ctx,
            [
                {"type": "send_command", "params": {"type": "set_state", "params": {"state": True}}},
                {"type": "send_command", "params": {"type": "reboot", "target": {"device": "ghost"}}},
                {"type": "emit_event", "params": {}},
            ],
            RULE,
            message("sleepy"),
        )
    assert len(ctx.errors) == 2 and "not active" in ctx.errors[0] and "ghost" in ctx.errors[1]
    assert [entry.get("error") is None for entry in outcome] == [False, False, True]
    assert not DeviceCommand.objects.exists()
    assert len(listener.received()) == 1


def test_send_command_checks(lamp):
    spec = actions.get("send_command")
    assert spec.validate({"type": "set_state", "params": {"state": True}}) == []
    assert spec.validate({"type": "set_state", "params": {"state": True}, "target": {"device": "lamp-1"}}) == []
    assert spec.validate({"type": "fly"})[0].startswith("type: unknown command type 'fly'")
    assert spec.validate({"type": "set_state", "params": {"state": "on"}})[0].startswith("params: state:")
    assert spec.validate({"type": "reboot", "target": {"device": "ghost"}}) == ["target: no device 'ghost'"]
    assert spec.validate({"type": "take_snapshot", "target": {"device": "lamp-1"}}) == [
        "target: device lamp-1 does not accept take_snapshot commands"
    ]
    assert spec.validate({"type": "reboot", "target": {"group": 999999}}) == ["target: no device group 999999"]
    assert spec.validate({"type": "reboot", "target": "everyone"})
    assert spec.validate({"type": "reboot", "timeout": 0})
    assert spec.validate({"type": "reboot", "timeout": 10**9})[0].startswith("timeout: at most")


# --- publish_mqtt ----------------------------------------------------------------------------------


def test_publish_mqtt_reaches_a_subscriber_after_commit(probe, django_capture_on_commit_callbacks):
    listener = probe("alerts/#")
    with django_capture_on_commit_callbacks(execute=True):
        ctx, _ = run("publish_mqtt", {"topic": "alerts/{device}/hot", "qos": 1})
        assert listener.message(timeout=0.3) is None
    assert ctx.errors == []
    received = listener.message()
    assert received.topic == "alerts/lamp-1/hot"
    assert json.loads(received.payload) == {
        "rule": {"id": 7, "name": "Lab too warm"},
        "device": "lamp-1",
        "trigger": "telemetry",
        "received": RECEIVED.isoformat(),
        "telemetry": {"temperature": 31.5},
    }
    with django_capture_on_commit_callbacks(execute=True):
        run("publish_mqtt", {"topic": "alerts/plain", "payload": "on"})
        run("publish_mqtt", {"topic": "alerts/json", "payload": {"level": 2}})
    assert listener.message().payload == b"on"
    assert json.loads(listener.message().payload) == {"level": 2}


def test_publish_mqtt_retains_when_asked(probe, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        run("publish_mqtt", {"topic": "devices/{device}/config", "payload": {"rate": 2}, "retain": True})
    late = probe("devices/+/config")  # subscribes after the publish: only a retained message reaches it
    message = late.message()
    assert message is not None and message.retain and json.loads(message.payload) == {"rate": 2}


def test_publish_mqtt_never_publishes_a_rolled_back_batch(probe, django_capture_on_commit_callbacks):
    listener = probe("alerts/#")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run("publish_mqtt", {"topic": "alerts/x"})
    assert len(callbacks) == 1  # registered for the commit; the test's transaction never commits
    assert listener.message(timeout=0.5) is None


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("alerts/+/x", "no wildcards"),
        ("alerts/#", "no wildcards"),
        ("$SYS/x", "belong to the broker"),
        ("devices/{device}/telemetry", "the platform ingests"),
        ("devices/x/commands/1", "the platform ingests"),
        ("alerts/{id}", "only {device}"),
    ],
)
def test_publish_mqtt_refuses_bad_topics(topic, expected):
    [error] = actions.get("publish_mqtt").validate({"topic": topic})
    assert expected in error


def test_publish_mqtt_checks_qos_and_retain():
    spec = actions.get("publish_mqtt")
    assert spec.validate({"topic": "a/b", "qos": 0, "retain": False}) == []
    assert spec.validate({"topic": "a/b", "qos": 2})
    assert spec.validate({"topic": "a/b", "retain": "yes"})
    assert spec.validate({"topic": "devices/{device}/config"}) == []  # a device's desired configuration


# --- webhook ---------------------------------------------------------------------------------------


def test_webhook_posts_json_after_commit(http_server, eager_celery, django_capture_on_commit_callbacks):
    params = {"url": f"{http_server.url}/hook?x=1", "headers": {"Authorization": "Bearer t"}, "timeout": 5}
    with django_capture_on_commit_callbacks(execute=True):
        ctx, _ = run("webhook", params)
        assert http_server.requests == []
    assert ctx.errors == []
    [(path, headers, body)] = http_server.requests
    assert path == "/hook?x=1"
    assert headers["Authorization"] == "Bearer t" and headers["Content-Type"] == "application/json"
    assert body == {
        "rule": {"id": 7, "name": "Lab too warm"},
        "device": "lamp-1",
        "trigger": "telemetry",
        "received": RECEIVED.isoformat(),
        "telemetry": {"temperature": 31.5},
    }


def test_webhook_task_retries_server_errors_and_drops_client_errors(http_server):
    assert actions.post_webhook(http_server.url, {"a": 1}, {}, 2) == 200
    http_server.answers = [404]
    assert actions.post_webhook(http_server.url, {"a": 1}) == 404
    http_server.answers = [503]
    with pytest.raises(actions.WebhookRetry):
        actions.post_webhook.run(http_server.url, {"a": 1})
    assert len(http_server.requests) == 3
    assert actions.post_webhook.max_retries == 5 and actions.post_webhook.retry_backoff


def test_webhook_task_network_errors_are_retried():
    import urllib.error

    from tests.brokers import free_port

    with pytest.raises(urllib.error.URLError):
        actions.post_webhook.run(f"http://127.0.0.1:{free_port()}/", {"a": 1}, {}, 1)
    assert urllib.error.URLError in actions.post_webhook.autoretry_for


def test_webhook_checks():
    spec = actions.get("webhook")
    assert spec.validate({"url": "https://example.com/hook", "headers": {"X-Key": "k"}, "timeout": 3}) == []
    assert spec.validate({"url": "ftp://example.com/"}) == ["url: an http:// or https:// URL with a host"]
    assert spec.validate({"url": "https://"}) == ["url: an http:// or https:// URL with a host"]
    assert spec.validate({"url": "https://example.com/", "headers": {"Bad Name": "x"}})
    assert spec.validate({"url": "https://example.com/", "headers": {"Host": "x"}}) == [
        "headers: Host is set by the platform"
    ]
    assert spec.validate({"url": "https://example.com/", "headers": {"X": "a\r\nb"}}) == ["headers.X: no line breaks"]
    assert spec.validate({"url": "https://example.com/", "timeout": 600})[0].startswith("timeout: at most")
    assert spec.validate({"url": "https://example.com/", "timeout": 0})


# --- Dry runs --------------------------------------------------------------------------------------


def test_dry_runs_do_nothing(lamp, bus, django_capture_on_commit_callbacks):
    listener = bus("rule.matched")
    rule_actions = [
        {"type": "emit_event", "params": {}},
        {"type": "store_telemetry", "params": {"values": {"f": "telemetry.temperature * 2.0"}}},
        {"type": "send_command", "params": {"type": "reboot"}},
        {"type": "publish_mqtt", "params": {"topic": "a/{device}"}},
        {"type": "webhook", "params": {"url": "http://127.0.0.1:9/"}},
        {"type": "store_telemetry", "params": {"values": {"g": "telemetry.nope * 2.0"}}},
    ]
    ctx = actions.ActionContext(dry_run=True)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        outcome = actions.run_actions(ctx, rule_actions, RULE, message())
    assert callbacks == [] and ctx.points == [] and not DeviceCommand.objects.exists()
    assert listener.received() == []
    assert [entry["would"] != "" for entry in outcome] == [True, True, True, True, True, False]
    assert outcome[1]["would"] == "would store f = 63.0 for device lamp-1"
    assert outcome[3]["would"].startswith("would publish") and "to a/lamp-1" in outcome[3]["would"]
    assert "nope" in outcome[5]["error"] and len(ctx.errors) == 1
