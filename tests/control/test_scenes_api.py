"""The scenes API: CRUD with its schedules, execute by hand, the execution log, permissions, and
every kind of bad input refused with a clear 4xx when saved."""

from __future__ import annotations

import json

import pytest
from django_celery_beat.models import PeriodicTask

from control.models import Scene, SceneExecution
from control.scenes import services
from devices.choices import ActivationState, DeviceStatus
from tests.factories import DeviceFactory, DeviceGroupFactory

pytestmark = pytest.mark.django_db

SCENES = "/api/v1/scenes/"
EMIT = {"type": "emit_event", "params": {"message": "hi"}}


@pytest.fixture
def fan(db):
    return DeviceFactory(
        id="fan_01", device_type="actuator", activation_state=ActivationState.ACTIVE, status=DeviceStatus.ONLINE
    )


@pytest.fixture
def sensor(db):
    return DeviceFactory(id="temp_sensor_01", device_type="sensor", activation_state=ActivationState.ACTIVE)


def temperature_control(**overrides):
    body = {
        "name": "temperature control",
        "time_zone": "Europe/Paris",
        "cooldown": 30,
        "triggers": [
            {"kind": "device_data", "device": "temp_sensor_01", "condition": "has(trigger.telemetry.temperature)"},
            {"kind": "manual"},
        ],
        "conditions": ["trigger.telemetry.temperature > 30.0", "local.hour >= 8 && local.hour < 20"],
        "then_actions": [
            {
                "type": "send_command",
                "params": {"type": "set_state", "params": {"state": True}, "target": {"device": "fan_01"}},
            }
        ],
        "else_if": [
            {
                "condition": "trigger.telemetry.temperature < 25.0",
                "actions": [
                    {
                        "type": "send_command",
                        "params": {"type": "set_state", "params": {"state": False}, "target": {"device": "fan_01"}},
                    }
                ],
            }
        ],
    }
    body.update(overrides)
    return body


def post(client, body):
    return client.post(SCENES, body, format="json")


def test_create_read_update_delete(admin_client_api, fan, sensor, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = post(admin_client_api, temperature_control())
    assert response.status_code == 201, response.json()
    scene = response.json()
    assert scene["name"] == "temperature control" and scene["created_by"] == "administrator"
    assert scene["else_if"][0]["condition"] == "trigger.telemetry.temperature < 25.0"
    assert scene["schedules"] == [] and scene["last_run_at"] is None

    detail = admin_client_api.get(f"{SCENES}{scene['id']}/").json()
    assert detail["triggers"] == temperature_control()["triggers"]
    listed = admin_client_api.get(SCENES, {"enabled": "true"}).json()
    assert [item["id"] for item in listed["results"]] == [scene["id"]]

    schedule = {"kind": "schedule", "cron": "0 7 * * 1-5"}
    response = admin_client_api.patch(
        f"{SCENES}{scene['id']}/", {"triggers": [*scene["triggers"], schedule]}, format="json"
    )
    assert response.status_code == 200, response.json()
    [shown] = response.json()["schedules"]
    assert shown["task"] == f"scene:{scene['id']}:2" and shown["cron"] == "0 7 * * 1-5" and shown["enabled"]
    assert "Monday through Friday" in shown["description"] and shown["time_zone"] == "Europe/Paris"
    assert PeriodicTask.objects.filter(name=f"scene:{scene['id']}:2").exists()

    response = admin_client_api.delete(f"{SCENES}{scene['id']}/")
    assert response.status_code == 204
    assert not Scene.objects.exists() and not PeriodicTask.objects.filter(name__startswith="scene:").exists()


def test_execute_by_hand_and_the_execution_log(operator_client, viewer_client, fan, sensor):
    scene = services.create_scene(None, **temperature_control())
    response = operator_client.post(f"{SCENES}{scene.pk}/execute/")
    assert response.status_code == 201, response.json()
    execution = response.json()
    # A run by hand has no telemetry: the first condition fails, nothing runs, and it says why.
    assert execution["branch"] == "error" and "conditions[0]" in execution["error"]
    assert execution["kind"] == "manual" and execution["trigger"]["user"] == "operator"
    assert execution["triggered_by"] == "operator" and execution["scene_name"] == "temperature control"

    other = services.create_scene(None, name="plain", triggers=[{"kind": "manual"}], then_actions=[EMIT, EMIT])
    ran = operator_client.post(f"{SCENES}{other.pk}/execute/").json()
    assert ran["branch"] == "then" and ran["status"] == "done"
    assert [(r["index"], r["type"], r["status"]) for r in ran["results"]] == [
        (0, "emit_event", "ok"),
        (1, "emit_event", "ok"),
    ]
    assert ran["actions"] == [EMIT, EMIT]

    log = viewer_client.get(f"{SCENES}{scene.pk}/executions/").json()
    assert [item["id"] for item in log["results"]] == [execution["id"]]
    everything = viewer_client.get("/api/v1/scene-executions/").json()
    assert [item["id"] for item in everything["results"]] == [ran["id"], execution["id"]]
    assert [i["id"] for i in viewer_client.get("/api/v1/scene-executions/", {"branch": "then"}).json()["results"]] == [
        ran["id"]
    ]
    filtered = viewer_client.get("/api/v1/scene-executions/", {"scene": scene.pk, "kind": "manual"}).json()
    assert [item["id"] for item in filtered["results"]] == [execution["id"]]
    assert viewer_client.get(f"/api/v1/scene-executions/{ran['id']}/").json()["branch"] == "then"


def test_permissions(viewer_client, operator_client, nobody_client, admin_client_api, fan, sensor):
    scene = services.create_scene(None, name="p", triggers=[{"kind": "manual"}], then_actions=[EMIT])
    assert viewer_client.get(SCENES).status_code == 200
    assert nobody_client.get(SCENES).status_code == 403
    assert viewer_client.post(f"{SCENES}{scene.pk}/execute/").status_code == 403
    assert nobody_client.post(f"{SCENES}{scene.pk}/execute/").status_code == 403
    # Operators run scenes, but do not write them.
    assert operator_client.post(f"{SCENES}{scene.pk}/execute/").status_code == 201
    assert post(operator_client, temperature_control()).status_code == 403
    assert operator_client.delete(f"{SCENES}{scene.pk}/").status_code == 403
    assert admin_client_api.post(f"{SCENES}{scene.pk}/execute/").status_code == 201
    assert SceneExecution.objects.count() == 2
    types = [item["type"] for item in viewer_client.get(f"{SCENES}action-types/").json()]
    assert {"delay", "run_scene", "send_command", "webhook", "raise_alarm", "clear_alarm", "notify"} <= set(types)


def test_disabled_scene_cannot_be_executed(admin_client_api):
    scene = services.create_scene(None, name="off", enabled=False, triggers=[{"kind": "manual"}], then_actions=[EMIT])
    response = admin_client_api.post(f"{SCENES}{scene.pk}/execute/")
    assert response.status_code == 409 and "disabled" in response.json()["detail"]


def test_a_scene_another_scene_runs_cannot_be_deleted(admin_client_api):
    target = services.create_scene(None, name="target", triggers=[{"kind": "manual"}], then_actions=[EMIT])
    services.create_scene(
        None,
        name="caller",
        triggers=[{"kind": "manual"}],
        then_actions=[{"type": "run_scene", "params": {"scene": target.pk}}],
    )
    response = admin_client_api.delete(f"{SCENES}{target.pk}/")
    assert response.status_code == 409 and "caller" in response.json()["detail"]
    assert Scene.objects.filter(pk=target.pk).exists()


def _errors(response):
    assert response.status_code == 400, response.json()
    return json.dumps(response.json())


def test_bad_input_is_a_clear_400(admin_client_api, fan, sensor):
    group = DeviceGroupFactory(name="gone group")
    group_id = group.pk
    group.delete()
    a = services.create_scene(None, name="a", triggers=[{"kind": "manual"}], then_actions=[EMIT])
    b = services.create_scene(
        None, name="b", triggers=[{"kind": "manual"}], then_actions=[{"type": "run_scene", "params": {"scene": a.pk}}]
    )

    cases = [
        # Invalid CEL: in a condition, an else-if, a trigger.
        ({"conditions": ["trigger.telemetry.temperature >"]}, "conditions[0]"),
        ({"conditions": ["telemetry.temperature > 30.0"]}, "Unknown variable 'telemetry'"),
        ({"conditions": ["local.hour + 1"]}, "must be true or false"),
        ({"else_if": [{"condition": "nope(", "actions": []}]}, "else_if[0].condition"),
        (
            {"triggers": [{"kind": "device_data", "condition": 'devices["fan_01"].state'}]},
            "not available here",
        ),
        ({"conditions": ['devices["no-such-sensor"].t > 1.0']}, "no device 'no-such-sensor'"),
        ({"conditions": ["size(devices) > 1"]}, "literal id"),
        # A cron expression that does not parse, a time zone that does not exist.
        ({"triggers": [{"kind": "schedule", "cron": "0 25 * * *"}]}, "cron"),
        ({"triggers": [{"kind": "schedule", "cron": "every morning"}]}, "five fields"),
        ({"triggers": [{"kind": "schedule", "cron": "0 7 * * 8"}]}, "cron"),
        ({"time_zone": "Mars/Olympus_Mons"}, "Unknown time zone"),
        # Triggers naming nothing that exists, or nothing at all.
        ({"triggers": [{"kind": "device_data", "device": "ghost"}]}, "no device 'ghost'"),
        ({"triggers": [{"kind": "telepathy"}]}, "kind one of"),
        ({"triggers": [{"kind": "device_status", "to": "asleep"}]}, "to: one of"),
        ({"triggers": [{"kind": "alarm", "severity": "apocalyptic"}]}, "severity"),
        ({"triggers": [{"kind": "manual", "device": "fan_01"}]}, "unknown keys"),
        # Actions pointing at deleted devices or groups, or a scene that does not exist.
        (
            {"then_actions": [{"type": "send_command", "params": {"type": "reboot", "target": {"device": "ghost"}}}]},
            "no device 'ghost'",
        ),
        (
            {"then_actions": [{"type": "send_command", "params": {"type": "reboot", "target": {"group": group_id}}}]},
            f"no device group {group_id}",
        ),
        ({"then_actions": [{"type": "run_scene", "params": {"scene": 999999}}]}, "no scene 999999"),
        ({"then_actions": [{"type": "teleport", "params": {}}]}, "unknown action type 'teleport'"),
        ({"then_actions": [{"type": "delay", "params": {"seconds": 10**7}}]}, "seconds: at most"),
        # An empty scene.
        ({"triggers": []}, "needs a trigger"),
        ({"then_actions": [], "else_if": [], "else_actions": []}, "at least one action"),
        # "self" without a triggering device.
        (
            {
                "triggers": [{"kind": "manual"}],
                "then_actions": [{"type": "send_command", "params": {"type": "reboot"}}],
            },
            "triggering device",
        ),
        ({"cooldown": -1}, "cooldown"),
    ]
    for change, expected in cases:
        text = _errors(post(admin_client_api, temperature_control(**change)))
        assert expected in text, (change, text)
    assert not Scene.objects.filter(name="temperature control").exists()

    # A scene chain with a cycle: a runs nothing yet; b runs a; a running b closes the loop.
    response = admin_client_api.patch(
        f"{SCENES}{a.pk}/", {"then_actions": [{"type": "run_scene", "params": {"scene": b.pk}}]}, format="json"
    )
    assert "loop: a (" in _errors(response)
    response = admin_client_api.patch(
        f"{SCENES}{a.pk}/", {"then_actions": [{"type": "run_scene", "params": {"scene": a.pk}}]}, format="json"
    )
    assert "cannot run itself" in _errors(response)
    # The same name twice.
    assert "name" in _errors(post(admin_client_api, {**temperature_control(), "name": "a"}))
