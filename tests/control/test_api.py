"""The commands API: sending, history, cancel, batches, the catalogue, permissions and bad input."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from control import services
from control.choices import CommandStatus, CommandType
from control.models import DeviceCommand
from tests.factories import DeviceFactory, DeviceGroupFactory

pytestmark = pytest.mark.django_db


@pytest.mark.django_db(transaction=True)
def test_operator_sends_a_command_the_device_receives_over_mqtt(operator_client, online_device, listen):
    """Committed for real: the command is published before the answer, which says "sent"."""
    device = listen(online_device.id)
    response = operator_client.post(
        f"/api/v1/devices/{online_device.id}/commands/", {"type": "set_state", "params": {"state": True}}, format="json"
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "sent" and body["type"] == "set_state" and body["created_by"]
    message = device.message()
    assert message is not None and json.loads(message.payload)["id"] == body["id"]


def test_a_command_for_an_offline_device_answers_pending(operator_client, db):
    offline = DeviceFactory(activation_state="active", status="offline")
    response = operator_client.post(f"/api/v1/devices/{offline.id}/commands/", {"type": "reboot"}, format="json")
    assert response.status_code == 201
    assert response.json()["status"] == "pending"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "launch"}, "type"),
        ({}, "type"),
        ({"type": "set_state", "params": {"state": 1}}, "params"),
        ({"type": "set_state", "params": []}, "params"),
        ({"type": "set_sampling_rate", "params": {"rate": -1}}, "params"),
        ({"type": "update", "params": {"url": "ftp://x", "checksum": "abc", "version": "1"}}, "params"),
        ({"type": "take_snapshot"}, "type"),
        ({"type": "reboot", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"type": "reboot", "timeout": 0}, "timeout"),
        ({"type": "reboot", "timeout": "soon"}, "timeout"),
    ],
)
def test_bad_commands_are_400_with_the_field(operator_client, online_device, body, field):
    response = operator_client.post(f"/api/v1/devices/{online_device.id}/commands/", body, format="json")
    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert not DeviceCommand.objects.exists()


def test_commands_for_disabled_or_unknown_devices(operator_client, db):
    disabled = DeviceFactory(activation_state="disabled")
    response = operator_client.post(f"/api/v1/devices/{disabled.id}/commands/", {"type": "reboot"}, format="json")
    assert response.status_code == 400 and "disabled" in json.dumps(response.json())
    assert operator_client.post("/api/v1/devices/ghost/commands/", {"type": "reboot"}, format="json").status_code == 404
    assert (
        operator_client.post("/api/v1/devices/batch/commands/", "not json", content_type="application/json").status_code
        == 400
    )


def test_permissions(viewer_client, nobody_client, api_client, online_device):
    url = f"/api/v1/devices/{online_device.id}/commands/"
    assert viewer_client.post(url, {"type": "reboot"}, format="json").status_code == 403
    assert viewer_client.get(url).status_code == 200
    assert nobody_client.get(url).status_code == 403
    assert api_client.get(url).status_code == 401
    command = services.send_command(online_device, "reboot", {})
    assert viewer_client.delete(f"/api/v1/commands/{command.pk}/").status_code == 403
    batch = {"type": "reboot", "targets": {"devices": [online_device.id]}}
    assert viewer_client.post("/api/v1/devices/batch/commands/", batch, format="json").status_code == 403
    assert viewer_client.get("/api/v1/command-types/").status_code == 200
    assert nobody_client.get("/api/v1/command-types/").status_code == 403


def test_history_filters_and_detail_with_replies(operator_client, online_device):
    reboot = services.send_command(online_device, "reboot", {})
    state = services.send_command(online_device, "set_state", {"state": True})
    services.record_replies(
        [services.parse_reply(online_device.id, str(state.pk), b'{"status":"success"}', timezone.now())]
    )
    other = DeviceFactory(device_type="actuator", activation_state="active")
    services.send_command(other, "reboot", {})

    url = f"/api/v1/devices/{online_device.id}/commands/"
    assert [c["id"] for c in operator_client.get(url).json()["results"]] == [str(state.pk), str(reboot.pk)]
    assert [c["id"] for c in operator_client.get(url, {"status": "success"}).json()["results"]] == [str(state.pk)]
    assert [c["id"] for c in operator_client.get(url, {"type": "reboot"}).json()["results"]] == [str(reboot.pk)]
    assert operator_client.get("/api/v1/commands/", {"type": "reboot"}).json()["count"] == 2
    assert operator_client.get("/api/v1/commands/", {"device": other.id}).json()["count"] == 1
    assert operator_client.get("/api/v1/commands/", {"status": "nonsense"}).status_code == 400

    detail = operator_client.get(f"/api/v1/commands/{state.pk}/").json()
    assert detail["status"] == "success"
    assert [(r["status"], r["applied"]) for r in detail["replies"]] == [("success", True)]
    assert operator_client.get(f"/api/v1/commands/{uuid.uuid4()}/").status_code == 404


def test_cancel_answers_the_command_then_409(operator_client, online_device):
    command = services.send_command(online_device, "reboot", {}, expires_at=timezone.now() + timedelta(hours=1))
    response = operator_client.delete(f"/api/v1/commands/{command.pk}/")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    again = operator_client.delete(f"/api/v1/commands/{command.pk}/")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]


def test_batch_by_tags_reports_progress_per_status(
    operator_client, listen, eager_celery, django_capture_on_commit_callbacks
):
    online = [
        DeviceFactory(tags=["fans"], device_type="actuator", activation_state="active", status="online")
        for _ in range(3)
    ]
    DeviceFactory(tags=["fans"], device_type="actuator", activation_state="active", status="offline")
    DeviceFactory(tags=["fans"], device_type="sensor", activation_state="active", status="online")
    probes = [listen(d.id) for d in online]

    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(
            "/api/v1/devices/batch/commands/",
            {"type": "set_state", "params": {"state": False}, "targets": {"tags": ["fans"]}},
            format="json",
        )
    assert response.status_code == 201, response.json()
    batch = response.json()
    assert batch["total"] == 4 and batch["skipped"] == {"refuses_type": 1}
    assert all(probe.message() is not None for probe in probes)

    progress = operator_client.get(f"/api/v1/command-batches/{batch['id']}/").json()
    assert progress["counts"]["sent"] == 3 and progress["counts"]["pending"] == 1 and progress["finished"] == 0
    assert operator_client.get("/api/v1/command-batches/").json()["count"] == 1
    assert operator_client.get("/api/v1/commands/", {"batch": batch["id"]}).json()["count"] == 4


@pytest.mark.parametrize(
    "targets",
    [
        {},
        {"devices": []},
        {"devices": ["a"], "tags": ["b"]},
        {"devices": ["no-such-device"]},
        {"group": 987654},
        {"tags": ["nobody-has-this"]},
        {"devices": "not-a-list"},
        {"tags": ["x"], "match": "some"},
    ],
)
def test_bad_batches_are_400(operator_client, db, targets):
    DeviceFactory(tags=["x"], activation_state="active")
    response = operator_client.post(
        "/api/v1/devices/batch/commands/", {"type": "reboot", "targets": targets}, format="json"
    )
    assert response.status_code == 400, response.json()
    assert "targets" in response.json()


def test_a_batch_over_the_limit_is_400(operator_client, db, settings):
    settings.COMMAND_BATCH_MAX_DEVICES = 2
    group = DeviceGroupFactory()
    for _ in range(3):
        DeviceFactory(group=group, activation_state="active")
    response = operator_client.post(
        "/api/v1/devices/batch/commands/", {"type": "reboot", "targets": {"group": group.pk}}, format="json"
    )
    assert response.status_code == 400 and "at most 2" in json.dumps(response.json())


def test_the_catalogue_documents_every_type(viewer_client):
    catalogue = viewer_client.get("/api/v1/command-types/").json()
    assert [entry["type"] for entry in catalogue] == list(CommandType.values)
    ptz = next(entry for entry in catalogue if entry["type"] == "ptz_control")
    assert ptz["device_types"] == ["camera", "custom", "gateway"]
    assert ptz["params_schema"]["properties"]["pan"]["maximum"] == 180


def test_batch_is_a_reserved_device_id(admin_client_api):
    response = admin_client_api.post(
        "/api/v1/devices/", {"id": "batch", "name": "x", "device_type": "sensor"}, format="json"
    )
    assert response.status_code == 400 and "id" in response.json()


def test_status_values_are_the_documented_lifecycle():
    assert set(CommandStatus.values) == {
        "pending",
        "sent",
        "executing",
        "success",
        "failed",
        "timeout",
        "cancelled",
        "expired",
    }
