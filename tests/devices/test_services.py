import pytest
from django.core.exceptions import ValidationError
from django.db import transaction

from devices import services
from devices.choices import ActivationState, DeviceStatus
from devices.models import Device, DeviceCredential, DeviceStatusChange
from fluxiot import events
from fluxiot.errors import ConflictError
from tests.factories import DeviceFactory, DeviceGroupFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_set_status_writes_history_and_announces_after_commit(bus, django_capture_on_commit_callbacks):
    listener = bus(events.DEVICE_STATUS_CHANGED)
    user = UserFactory()
    device = DeviceFactory()
    with django_capture_on_commit_callbacks(execute=True):
        change = services.set_status(device, DeviceStatus.ONLINE, actor=user, reason="hello", metadata={"ip": "x"})
    assert change is not None
    assert (change.old_status, change.new_status, change.changed_by) == ("offline", "online", user)
    device.refresh_from_db()
    assert device.status == DeviceStatus.ONLINE
    [event] = listener.received()
    assert event["type"] == "device.status_changed"
    assert event["data"]["device"] == device.id
    assert (event["data"]["old_status"], event["data"]["new_status"]) == ("offline", "online")


def test_set_status_does_nothing_when_unchanged(bus, django_capture_on_commit_callbacks):
    listener = bus(events.DEVICE_STATUS_CHANGED)
    device = DeviceFactory()
    with django_capture_on_commit_callbacks(execute=True):
        assert services.set_status(device.id, DeviceStatus.OFFLINE) is None
    assert not DeviceStatusChange.objects.exists()
    assert listener.received() == []


def test_set_status_rejects_unknown_status():
    device = DeviceFactory()
    with pytest.raises(ValidationError):
        services.set_status(device, "exploded")


@pytest.mark.django_db(transaction=True)
def test_rolled_back_status_change_is_never_announced(bus):
    listener = bus(events.DEVICE_STATUS_CHANGED)
    device = DeviceFactory()
    with pytest.raises(RuntimeError), transaction.atomic():
        services.set_status(device, DeviceStatus.FAULT)
        raise RuntimeError("something later in the transaction failed")
    device.refresh_from_db()
    assert device.status == DeviceStatus.OFFLINE
    assert not DeviceStatusChange.objects.exists()
    assert listener.received() == []
    # ...while a committed one is, through the real Redis layer
    services.set_status(device, DeviceStatus.FAULT)
    assert [e["data"]["new_status"] for e in listener.received()] == ["fault"]


def test_activation_issues_a_secret_that_verifies():
    device = DeviceFactory()
    secret = services.activate_device(device, actor=None)
    device.refresh_from_db()
    assert device.activation_state == ActivationState.ACTIVE and device.activated_at is not None
    assert len(secret) >= 40
    stored = DeviceCredential.objects.get(device=device)
    assert secret not in stored.secret_hash and stored.secret_hash == services.hash_secret(secret)
    assert services.verify_device_secret(device.id, secret)


def test_activating_an_active_device_is_a_conflict():
    device = DeviceFactory()
    services.activate_device(device, actor=None)
    with pytest.raises(ConflictError):
        services.activate_device(device, actor=None)


def test_rotation_invalidates_the_old_secret():
    device = DeviceFactory()
    old = services.activate_device(device, actor=None)
    new = services.rotate_credentials(device, actor=None)
    assert old != new
    assert not services.verify_device_secret(device.id, old)
    assert services.verify_device_secret(device.id, new)


def test_rotation_needs_an_active_device():
    device = DeviceFactory()
    with pytest.raises(ConflictError):
        services.rotate_credentials(device, actor=None)


def test_disable_stops_the_secret_and_reactivation_issues_a_new_one():
    device = DeviceFactory()
    old = services.activate_device(device, actor=None)
    assert services.disable_device(device, actor=None) is True
    assert services.disable_device(device, actor=None) is False  # no-op the second time
    assert not services.verify_device_secret(device.id, old)
    assert not DeviceCredential.objects.filter(device=device).exists()
    new = services.activate_device(device, actor=None)
    assert services.verify_device_secret(device.id, new) and not services.verify_device_secret(device.id, old)


def test_verify_refuses_wrong_device_wrong_secret_and_junk():
    a, b = DeviceFactory(), DeviceFactory()
    secret_a = services.activate_device(a, actor=None)
    secret_b = services.activate_device(b, actor=None)
    assert not services.verify_device_secret(b.id, secret_a)  # a secret on the wrong device
    assert not services.verify_device_secret(a.id, secret_b)
    assert not services.verify_device_secret(a.id, secret_a + "x")
    assert not services.verify_device_secret("no-such-device", secret_a)
    assert not services.verify_device_secret(a.id, "")
    assert not services.verify_device_secret("", secret_a)
    assert not services.verify_device_secret("x" * 500, secret_a)
    assert not services.verify_device_secret(a.id, "y" * 10_000)


def test_verify_refuses_a_registered_device():
    device = DeviceFactory()
    assert not services.verify_device_secret(device.id, "anything")


def test_create_update_delete_announce(bus, django_capture_on_commit_callbacks):
    listener = bus(events.DEVICE_CREATED, events.DEVICE_UPDATED, events.DEVICE_DELETED)
    user = UserFactory()
    with django_capture_on_commit_callbacks(execute=True):
        device = services.create_device(actor=user, id="new-1", name="New")
        services.update_device(device, actor=user, name="Renamed", tags=["a"])
        services.delete_device(device, actor=user)
    assert [e["type"] for e in listener.received()] == ["device.created", "device.updated", "device.deleted"]
    assert not Device.objects.filter(pk="new-1").exists()


def test_update_refuses_state_fields():
    device = DeviceFactory()
    with pytest.raises(ValidationError):
        services.update_device(device, actor=None, status=DeviceStatus.ONLINE)


def test_move_devices_and_list_with_descendants():
    root = DeviceGroupFactory(name="root")
    child = DeviceGroupFactory(name="child", parent=root)
    other = DeviceGroupFactory(name="other")
    d1, d2, d3 = DeviceFactory(), DeviceFactory(), DeviceFactory(group=other)
    assert services.move_devices([d1, d2.id], child, actor=None) == 2
    assert services.move_devices([d1], child, actor=None) == 0  # already there
    assert set(services.devices_in_group(root)) == set()
    assert set(services.devices_in_group(root, descendants=True)) == {d1, d2}
    assert set(services.devices_in_group(other, descendants=True)) == {d3}
    assert services.move_devices([d3], None, actor=None) == 1
    d3.refresh_from_db()
    assert d3.group is None


def test_import_creates_all_rows():
    group = DeviceGroupFactory()
    result = services.import_devices(
        [
            {"id": "imp-1", "name": "One", "device_type": "camera", "protocol": "rtsp", "group": group.pk},
            {"name": "Two", "tags": ["lab", "lab"], "metadata": {"floor": 2}},
        ],
        actor=None,
    )
    assert result.created == 2
    two = Device.objects.get(pk=result.ids[1])
    assert two.tags == ["lab"] and two.metadata == {"floor": 2}
    assert Device.objects.get(pk="imp-1").group == group


def test_import_is_all_or_nothing_with_a_row_report():
    DeviceFactory(id="taken")
    rows = [
        {"id": "fine", "name": "Fine"},
        {"id": "taken", "name": "Exists already"},
        {"id": "bad id!", "name": "x", "device_type": "toaster"},
        {"id": "dup", "name": "a"},
        {"id": "dup", "name": "b"},
        {"name": "x", "group": 999999},
        {"name": "x", "metadata": [1]},
        {"name": "x", "colour": "red"},
        {"id": "no-name"},
    ]
    with pytest.raises(services.ImportFailed) as caught:
        services.import_devices(rows, actor=None)
    report = {e["row"]: e["errors"] for e in caught.value.errors}
    assert set(report) == {2, 3, 5, 6, 7, 8, 9}
    assert "id" in report[2] and "already exists" in report[2]["id"][0]
    assert {"id", "device_type"} <= set(report[3])
    assert "Duplicate id" in report[5]["id"][0]
    assert "group" in report[6]
    assert "metadata" in report[7]
    assert "non_field_errors" in report[8]
    assert "name" in report[9]
    assert not Device.objects.filter(pk="fine").exists()


def test_update_without_a_real_change_saves_and_announces_nothing(bus, django_capture_on_commit_callbacks):
    listener = bus(events.DEVICE_UPDATED)
    device = DeviceFactory(name="Same", tags=["a"])
    before = Device.objects.get(pk=device.pk).updated_at
    with django_capture_on_commit_callbacks(execute=True):
        services.update_device(device, actor=None, name="Same", tags=["a"])
        services.update_device(device, actor=None, name="Other", tags=["a"])
    assert [e["data"]["fields"] for e in listener.received()] == [["name"]]
    assert Device.objects.get(pk=device.pk).updated_at > before


def test_group_operations_announce(bus, django_capture_on_commit_callbacks):
    from devices.models import DeviceGroup

    listener = bus(events.GROUP_CREATED, events.GROUP_UPDATED, events.GROUP_DELETED, events.DEVICES_MOVED)
    with django_capture_on_commit_callbacks(execute=True):
        group = services.save_group(DeviceGroup(name="site"), actor=None)
        group.description = "main site"
        services.save_group(group, actor=None)
        services.move_devices([DeviceFactory()], group, actor=None)
        services.move_devices([], group, actor=None)  # nothing moved, nothing said
        Device.objects.update(group=None)
        services.delete_group(group, actor=None)
    assert [e["type"] for e in listener.received()] == [
        "group.created",
        "group.updated",
        "device.moved",
        "group.deleted",
    ]


def test_verification_cache_forgets_at_once_on_changes_in_this_process(settings):
    settings.DEVICE_AUTH_CACHE_SECONDS = 60
    device = DeviceFactory()
    old = services.activate_device(device, actor=None)
    assert services.verify_device_secret(device.id, old)  # now cached
    new = services.rotate_credentials(device, actor=None)
    assert not services.verify_device_secret(device.id, old)
    assert services.verify_device_secret(device.id, new)
    services.disable_device(device, actor=None)
    assert not services.verify_device_secret(device.id, new)


def test_verification_cache_expires_for_changes_made_elsewhere(settings):
    """Another process's rotation (simulated by writing the row directly) is seen after the TTL."""
    import time

    settings.DEVICE_AUTH_CACHE_SECONDS = 0.2
    device = DeviceFactory()
    secret = services.activate_device(device, actor=None)
    assert services.verify_device_secret(device.id, secret)
    DeviceCredential.objects.filter(device=device).update(secret_hash=services.hash_secret("elsewhere"))
    time.sleep(0.3)
    assert not services.verify_device_secret(device.id, secret)
    assert services.verify_device_secret(device.id, "elsewhere")


def test_verification_without_cache_asks_the_database_each_time(settings):
    settings.DEVICE_AUTH_CACHE_SECONDS = 0
    device = DeviceFactory()
    secret = services.activate_device(device, actor=None)
    assert services.verify_device_secret(device.id, secret)
    DeviceCredential.objects.filter(device=device).update(secret_hash=services.hash_secret("elsewhere"))
    assert not services.verify_device_secret(device.id, secret)
