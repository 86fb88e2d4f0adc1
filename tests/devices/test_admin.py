import io

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from devices import services
from devices.choices import ActivationState, DeviceStatus
from devices.models import Device, DeviceGroup
from fluxiot import roles
from tests.factories import DeviceFactory, DeviceGroupFactory, UserFactory

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:devices_device_changelist")


@pytest.fixture
def staff_client(client):
    user = UserFactory(username="ops", is_staff=True, roles=[roles.ADMINISTRATOR])
    client.force_login(user)
    return client


@pytest.fixture
def viewer_staff_client(client):
    user = UserFactory(username="watcher", is_staff=True, roles=[roles.VIEWER])
    client.force_login(user)
    return client


def test_admin_index_shows_counts_by_status(staff_client):
    DeviceFactory(status=DeviceStatus.ONLINE)
    DeviceFactory(status=DeviceStatus.ONLINE)
    DeviceFactory(status=DeviceStatus.FAULT)
    response = staff_client.get(reverse("admin:index"))
    assert response.status_code == 200
    counts = {row["status"]: row["count"] for row in response.context["device_status_counts"]}
    assert counts == {"online": 2, "offline": 0, "fault": 1, "maintenance": 0}
    assert b'data-status="online">2<' in response.content


@pytest.mark.parametrize(
    "query",
    ["", "?status__exact=online", "?device_type__exact=camera", "?q=cam", "?activation_state__exact=active", "?o=2"],
)
def test_device_changelist_with_filters_and_search(staff_client, query):
    group = DeviceGroupFactory()
    DeviceFactory(id="cam-1", device_type="camera", group=group, tags=["a", "b"])
    response = staff_client.get(CHANGELIST + query)
    assert response.status_code == 200


def test_device_pages_render_with_history(staff_client):
    device = DeviceFactory(id="d1")
    services.set_status(device, DeviceStatus.ONLINE, reason="connected")
    response = staff_client.get(reverse("admin:devices_device_change", args=["d1"]))
    assert response.status_code == 200
    assert b"Status history" in response.content and b"connected" in response.content
    assert staff_client.get(reverse("admin:devices_device_add")).status_code == 200


def test_add_and_edit_a_device_with_tags(staff_client):
    group = DeviceGroupFactory()
    form = {
        "id": "new-1",
        "name": "New",
        "device_type": "sensor",
        "custom_type": "",
        "protocol": "mqtt",
        "group": group.pk,
        "tags": "lab, roof , lab",
        "metadata": "{}",
        "cert_fingerprint": "",
        "status_changes-TOTAL_FORMS": "0",
        "status_changes-INITIAL_FORMS": "0",
        "latest_values-TOTAL_FORMS": "0",
        "latest_values-INITIAL_FORMS": "0",
    }
    response = staff_client.post(reverse("admin:devices_device_add"), form)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    device = Device.objects.get(pk="new-1")
    assert device.tags == ["lab", "roof"] and device.group == group
    form.update({"name": "Renamed", "tags": "basement"})
    response = staff_client.post(reverse("admin:devices_device_change", args=["new-1"]), form)
    assert response.status_code == 302
    device.refresh_from_db()
    assert (device.name, device.tags) == ("Renamed", ["basement"])


def test_add_form_shows_field_errors(staff_client):
    response = staff_client.post(
        reverse("admin:devices_device_add"),
        {
            "id": "bad id",
            "name": "x",
            "device_type": "sensor",
            "protocol": "mqtt",
            "tags": "a b",
            "metadata": "[]",
            "status_changes-TOTAL_FORMS": "0",
            "status_changes-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert {"id", "tags", "metadata"} <= set(errors)
    assert not Device.objects.exists()


def _action(client, action, devices, **extra):
    return client.post(CHANGELIST, {"action": action, ACTION_CHECKBOX_NAME: [d.pk for d in devices], **extra})


def test_activate_action_shows_secrets_once(staff_client):
    a, b = DeviceFactory(id="a"), DeviceFactory(id="b")
    services.activate_device(b, actor=None)
    response = _action(staff_client, "activate_devices", [a, b])
    assert response.status_code == 200
    [(device_id, secret)] = response.context["issued"]
    assert device_id == "a" and secret.encode() in response.content
    assert services.verify_device_secret("a", secret)


def test_rotate_and_disable_actions(staff_client):
    device = DeviceFactory(id="a")
    old = services.activate_device(device, actor=None)
    response = _action(staff_client, "rotate_device_credentials", [device])
    [(_, new)] = response.context["issued"]
    assert not services.verify_device_secret("a", old) and services.verify_device_secret("a", new)
    response = _action(staff_client, "disable_devices", [device])
    assert response.status_code == 302
    device.refresh_from_db()
    assert device.activation_state == ActivationState.DISABLED


def test_move_to_group_action(staff_client):
    group = DeviceGroupFactory()
    devices = [DeviceFactory(), DeviceFactory()]
    page = _action(staff_client, "move_to_group", devices)
    assert page.status_code == 200 and b"Move 2 devices" in page.content
    done = _action(staff_client, "move_to_group", devices, apply="Move", group=group.pk)
    assert done.status_code == 302
    assert group.devices.count() == 2


def test_viewers_cannot_run_actions_or_import(viewer_staff_client):
    device = DeviceFactory()
    response = viewer_staff_client.get(CHANGELIST)
    assert response.status_code == 200
    action_form = response.context["action_form"]
    assert action_form is None or "activate_devices" not in dict(action_form.fields["action"].choices)
    assert viewer_staff_client.get(reverse("admin:devices_device_import")).status_code == 403
    _action(viewer_staff_client, "activate_devices", [device])
    device.refresh_from_db()
    assert device.activation_state == ActivationState.REGISTERED


def _import(client, content: bytes, name="devices.csv"):
    file = io.BytesIO(content)
    file.name = name
    return client.post(reverse("admin:devices_device_import"), {"file": file})


def test_import_page(staff_client):
    assert staff_client.get(reverse("admin:devices_device_import")).status_code == 200
    response = _import(staff_client, b"id,name,tags\nx1,One,lab\nx2,Two,\n")
    assert response.status_code == 302
    assert set(Device.objects.values_list("pk", flat=True)) == {"x1", "x2"}


def test_import_page_lists_bad_rows(staff_client):
    response = _import(staff_client, b"id,name,device_type\ny1,One,toaster\ny2,,sensor\n")
    assert response.status_code == 200
    assert [e["row"] for e in response.context["errors"]] == [1, 2]
    assert b"Nothing imported" in response.content and b"import-errors" in response.content
    response = _import(staff_client, b"id,name,colour\n")
    assert b"Unknown columns" in response.content
    assert not Device.objects.exists()


def test_group_admin_tree_and_cycle_refusal(staff_client):
    root = DeviceGroupFactory(name="root")
    child = DeviceGroupFactory(name="child", parent=root)
    DeviceFactory(group=child)
    response = staff_client.get(reverse("admin:devices_devicegroup_changelist"))
    assert response.status_code == 200 and b"child" in response.content
    response = staff_client.post(
        reverse("admin:devices_devicegroup_change", args=[root.pk]), {"name": "root", "parent": child.pk}
    )
    assert response.status_code == 200
    assert "parent" in response.context["adminform"].form.errors
    root.refresh_from_db()
    assert root.parent is None


@pytest.mark.parametrize(
    "name", ["devices_devicestatuschange_changelist", "devices_devicecredential_changelist", "devices_devicegroup_add"]
)
def test_other_admin_pages_render(staff_client, name):
    device = DeviceFactory()
    services.activate_device(device, actor=None)
    services.set_status(device, DeviceStatus.ONLINE)
    response = staff_client.get(reverse(f"admin:{name}"))
    assert response.status_code == 200
    assert b"secret_hash" not in response.content


def test_admin_deletion_goes_through_the_service(staff_client):
    device = DeviceFactory(id="gone")
    response = staff_client.post(reverse("admin:devices_device_delete", args=["gone"]), {"post": "yes"})
    assert response.status_code == 302
    assert not Device.objects.filter(pk=device.pk).exists()
    assert not DeviceGroup.objects.exists()
