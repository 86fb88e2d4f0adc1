import io
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from devices import services
from devices.choices import DeviceStatus
from devices.models import Device, DeviceGroup
from fluxiot.api.throttling import UserRateThrottle
from tests.factories import DeviceFactory, DeviceGroupFactory, UserFactory

pytestmark = pytest.mark.django_db

DEVICES = "/api/v1/devices/"
GROUPS = "/api/v1/device-groups/"


def ids(response):
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


# --- Authentication and permissions ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", DEVICES),
        ("post", DEVICES),
        ("get", f"{DEVICES}d1/"),
        ("patch", f"{DEVICES}d1/"),
        ("delete", f"{DEVICES}d1/"),
        ("post", f"{DEVICES}d1/activate/"),
        ("post", f"{DEVICES}d1/rotate-credentials/"),
        ("get", f"{DEVICES}d1/status/"),
        ("post", f"{DEVICES}import/"),
        ("get", GROUPS),
        ("get", f"{GROUPS}1/devices/"),
    ],
)
def test_unauthenticated_requests_get_401(api_client, method, path):
    DeviceFactory(id="d1")
    response = getattr(api_client, method)(path, {}, format="json")
    assert response.status_code == 401
    assert "detail" in response.json()


def test_a_user_without_a_role_gets_403(nobody_client):
    DeviceFactory(id="d1")
    assert nobody_client.get(DEVICES).status_code == 403
    assert nobody_client.get(f"{DEVICES}d1/").status_code == 403
    assert nobody_client.get(GROUPS).status_code == 403


@pytest.mark.parametrize("client_name", ["viewer_client", "operator_client"])
def test_viewers_and_operators_read_but_do_not_write(request, client_name):
    client = request.getfixturevalue(client_name)
    DeviceFactory(id="d1")
    group = DeviceGroupFactory()
    assert client.get(DEVICES).status_code == 200
    assert client.get(f"{DEVICES}d1/").status_code == 200
    assert client.get(f"{DEVICES}d1/status/").status_code == 200
    assert client.get(f"{GROUPS}{group.pk}/devices/").status_code == 200
    for method, path, body in [
        ("post", DEVICES, {"name": "x"}),
        ("patch", f"{DEVICES}d1/", {"name": "y"}),
        ("delete", f"{DEVICES}d1/", None),
        ("post", f"{DEVICES}d1/activate/", None),
        ("post", f"{DEVICES}d1/rotate-credentials/", None),
        ("post", f"{DEVICES}d1/disable/", None),
        ("post", f"{DEVICES}d1/status/", {"status": "maintenance"}),
        ("post", f"{DEVICES}import/", [{"name": "x"}]),
        ("post", GROUPS, {"name": "g"}),
        ("post", f"{GROUPS}{group.pk}/move-devices/", {"devices": ["d1"]}),
    ]:
        response = getattr(client, method)(path, body, format="json")
        assert response.status_code == 403, (method, path, response.content)
    assert Device.objects.get(pk="d1").name != "y"


def test_jwt_obtain_use_and_refresh(api_client):
    UserFactory(username="alice", roles=["Viewer"])
    token = api_client.post("/api/v1/auth/token/", {"username": "alice", "password": "pw-for-tests"}, format="json")
    assert token.status_code == 200
    access, refresh = token.json()["access"], token.json()["refresh"]
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    assert api_client.get(DEVICES).status_code == 200
    refreshed = api_client.post("/api/v1/auth/token/refresh/", {"refresh": refresh}, format="json")
    assert refreshed.status_code == 200 and refreshed.json()["access"]


def test_bad_credentials_and_bad_tokens_are_401(api_client):
    UserFactory(username="alice")
    assert (
        api_client.post("/api/v1/auth/token/", {"username": "alice", "password": "no"}, format="json").status_code
        == 401
    )
    api_client.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    assert api_client.get(DEVICES).status_code == 401


def test_session_auth_serves_the_browsable_api(client, administrator):
    client.force_login(administrator)
    response = client.get(DEVICES, HTTP_ACCEPT="text/html")
    assert response.status_code == 200 and b"<html" in response.content.lower()


def test_throttling_answers_429(admin_client_api, monkeypatch):
    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "3/min", "anon": "3/min"})
    codes = [admin_client_api.get(DEVICES).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]


# --- CRUD -------------------------------------------------------------------------------------


def test_create_read_update_delete(admin_client_api):
    group = DeviceGroupFactory()
    body = {
        "id": "fan_01",
        "name": "Fan",
        "device_type": "actuator",
        "protocol": "mqtt",
        "tags": ["lab", " hvac ", "lab"],
        "metadata": {"room": 12},
        "group": group.pk,
    }
    created = admin_client_api.post(DEVICES, body, format="json")
    assert created.status_code == 201, created.content
    data = created.json()
    assert data["tags"] == ["lab", "hvac"] and data["group_name"] == group.name
    assert data["status"] == "offline" and data["activation_state"] == "registered"

    assert admin_client_api.get(f"{DEVICES}fan_01/").json()["metadata"] == {"room": 12}
    patched = admin_client_api.patch(f"{DEVICES}fan_01/", {"name": "Big fan", "status": "online"}, format="json")
    assert patched.status_code == 200
    assert patched.json()["name"] == "Big fan" and patched.json()["status"] == "offline"  # status is read-only

    assert admin_client_api.delete(f"{DEVICES}fan_01/").status_code == 204
    assert admin_client_api.get(f"{DEVICES}fan_01/").status_code == 404


def test_create_without_id_generates_one(admin_client_api):
    response = admin_client_api.post(DEVICES, {"name": "Anon"}, format="json")
    assert response.status_code == 201
    assert Device.objects.filter(pk=response.json()["id"]).exists()


def test_the_id_of_an_existing_device_cannot_change(admin_client_api):
    DeviceFactory(id="d1")
    response = admin_client_api.patch(f"{DEVICES}d1/", {"id": "d2"}, format="json")
    assert response.status_code == 200
    assert Device.objects.filter(pk="d1").exists() and not Device.objects.filter(pk="d2").exists()


def test_unknown_device_is_a_json_404(admin_client_api):
    response = admin_client_api.get(f"{DEVICES}nope/")
    assert response.status_code == 404 and response.json() == {"detail": "No Device matches the given query."}


# --- Bad input: a 4xx naming the field, never a 500 ---------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "device_type": "toaster"}, "device_type"),
        ({"name": "x", "protocol": "smoke"}, "protocol"),
        ({"name": "x", "id": "x" * 65}, "id"),
        ({"name": "x", "id": "bad id"}, "id"),
        ({"name": "x", "id": "a/b"}, "id"),
        ({"name": "x", "id": "dup"}, "id"),
        ({"name": "x", "id": "fluxiot-bridge"}, "id"),
        ({"name": "x", "id": "fluxiot-admin"}, "id"),
        ({"name": "x", "metadata": [1, 2]}, "metadata"),
        ({"name": "x", "metadata": "text"}, "metadata"),
        ({"name": "x", "tags": "lab"}, "tags"),
        ({"name": "x", "tags": [1]}, "tags"),
        ({"name": "x", "tags": [{"a": 1}]}, "tags"),
        ({"name": "x", "tags": ["with space"]}, "tags"),
        ({"name": "x", "group": 999999}, "group"),
        ({"name": "x", "group": "abc"}, "group"),
        ({"name": "x", "device_type": "custom"}, "custom_type"),
        ({"name": "x", "cert_fingerprint": "zz"}, "cert_fingerprint"),
        ({"device_type": "sensor"}, "name"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_device_input_is_a_400_naming_the_field(admin_client_api, body, field):
    DeviceFactory(id="dup")
    response = admin_client_api.post(DEVICES, body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()


def test_a_body_that_is_not_json_is_a_400(admin_client_api):
    response = admin_client_api.generic("POST", DEVICES, "{not json", content_type="application/json")
    assert response.status_code == 400 and "detail" in response.json()


def test_a_body_that_is_a_list_is_a_400(admin_client_api):
    response = admin_client_api.post(DEVICES, [1, 2], format="json")
    assert response.status_code == 400


def test_bad_filter_values_are_400(admin_client_api):
    for query in ["status=exploded", "in_group=999999", "created_after=yesterday", "device_type=toaster", "group=x"]:
        response = admin_client_api.get(f"{DEVICES}?{query}")
        assert response.status_code == 400, query


# --- Activation, credentials, status -----------------------------------------------------------


def test_activate_shows_the_secret_once(admin_client_api):
    DeviceFactory(id="d1")
    response = admin_client_api.post(f"{DEVICES}d1/activate/")
    assert response.status_code == 200
    secret = response.json()["secret"]
    assert services.verify_device_secret("d1", secret)
    detail = admin_client_api.get(f"{DEVICES}d1/").json()
    assert detail["activation_state"] == "active" and secret not in json.dumps(detail)
    again = admin_client_api.post(f"{DEVICES}d1/activate/")
    assert again.status_code == 409 and "detail" in again.json()


def test_rotate_and_disable(admin_client_api):
    DeviceFactory(id="d1")
    assert admin_client_api.post(f"{DEVICES}d1/rotate-credentials/").status_code == 409  # not active yet
    first = admin_client_api.post(f"{DEVICES}d1/activate/").json()["secret"]
    second = admin_client_api.post(f"{DEVICES}d1/rotate-credentials/").json()["secret"]
    assert not services.verify_device_secret("d1", first) and services.verify_device_secret("d1", second)
    disabled = admin_client_api.post(f"{DEVICES}d1/disable/")
    assert disabled.status_code == 200 and disabled.json()["activation_state"] == "disabled"
    assert not services.verify_device_secret("d1", second)


def test_activation_needs_the_activate_permission(api_client):
    DeviceFactory(id="d1")
    user = UserFactory()
    user.user_permissions.add(*_perms("view_device", "change_device"))
    api_client.force_authenticate(user)
    assert api_client.post(f"{DEVICES}d1/activate/").status_code == 403
    user.user_permissions.add(*_perms("activate_device"))
    user = type(user).objects.get(pk=user.pk)  # drop the permission cache
    api_client.force_authenticate(user)
    assert api_client.post(f"{DEVICES}d1/activate/").status_code == 200


def _perms(*codenames):
    from django.contrib.auth.models import Permission

    return Permission.objects.filter(content_type__app_label="devices", codename__in=codenames)


def test_status_shows_current_state_and_history(admin_client_api, viewer_client):
    device = DeviceFactory(id="d1")
    services.set_status(device, DeviceStatus.ONLINE, reason="connected")
    services.set_status(device, DeviceStatus.OFFLINE, reason="last will")
    data = viewer_client.get(f"{DEVICES}d1/status/").json()
    assert data["status"] == "offline"
    assert [(h["old_status"], h["new_status"], h["reason"]) for h in data["history"]] == [
        ("online", "offline", "last will"),
        ("offline", "online", "connected"),
    ]
    response = admin_client_api.post(f"{DEVICES}d1/status/", {"status": "maintenance", "reason": "swap"}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == "maintenance"
    assert response.json()["history"][0]["changed_by"] == "administrator"
    bad = admin_client_api.post(f"{DEVICES}d1/status/", {"status": "melted"}, format="json")
    assert bad.status_code == 400 and "status" in bad.json()


# --- Lists: filters, ordering, pagination --------------------------------------------------------


@pytest.fixture
def fleet():
    site = DeviceGroupFactory(name="site")
    floor = DeviceGroupFactory(name="floor", parent=site)
    room = DeviceGroupFactory(name="room", parent=floor)
    other = DeviceGroupFactory(name="other")
    now = timezone.now()
    DeviceFactory(id="cam-1", name="Door camera", device_type="camera", protocol="rtsp", group=site, tags=["security"])
    DeviceFactory(id="temp-1", name="Room temp", group=room, tags=["lab", "temperature"], status="online")
    DeviceFactory(id="temp-2", name="Floor temp", group=floor, tags=["temperature"], status="online")
    DeviceFactory(id="plc-1", name="PLC", device_type="industrial", protocol="modbus", group=other, tags=["lab"])
    DeviceFactory(id="loose", name="Ungrouped thing", device_type="custom", custom_type="beehive")
    Device.objects.filter(pk="temp-1").update(last_seen_at=now, created_at=now - timedelta(days=10))
    Device.objects.filter(pk="temp-2").update(last_seen_at=now - timedelta(hours=2))
    services.activate_device("plc-1", actor=None)
    return {"site": site, "floor": floor, "room": room, "other": other, "now": now}


def test_list_filters(viewer_client, fleet):
    def query(q):
        return sorted(ids(viewer_client.get(f"{DEVICES}?{q}&page_size=100")))

    site, floor, room = fleet["site"].pk, fleet["floor"].pk, fleet["room"].pk
    assert query("device_type=camera&device_type=industrial") == ["cam-1", "plc-1"]
    assert query("custom_type=beehive") == ["loose"]
    assert query("status=online") == ["temp-1", "temp-2"]
    assert query("protocol=modbus") == ["plc-1"]
    assert query("activation_state=active") == ["plc-1"]
    assert query(f"group={floor}") == ["temp-2"]
    assert query(f"group={floor}&group={room}") == ["temp-1", "temp-2"]
    assert query(f"in_group={site}") == ["cam-1", "temp-1", "temp-2"]
    assert query(f"in_group={floor}") == ["temp-1", "temp-2"]
    assert query("ungrouped=true") == ["loose"]
    assert query("tags=lab") == ["plc-1", "temp-1"]
    assert query("tags=lab,security") == ["cam-1", "plc-1", "temp-1"]
    assert query("tags_all=lab,temperature") == ["temp-1"]
    assert query("q=temp") == ["temp-1", "temp-2"]
    assert query("q=CAMERA") == ["cam-1"]
    assert query(f"in_group={site}&tags=temperature&status=online") == ["temp-1", "temp-2"]
    hour_ago = (fleet["now"] - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert query(f"last_seen_after={hour_ago}") == ["temp-1"]
    assert query(f"last_seen_before={hour_ago}") == ["temp-2"]
    day_ago = (fleet["now"] - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert query(f"created_before={day_ago}") == ["temp-1"]
    assert "temp-1" not in query(f"created_after={day_ago}")


def test_ordering_and_pagination(viewer_client, fleet):
    assert ids(viewer_client.get(f"{DEVICES}?ordering=-id&page_size=2")) == ["temp-2", "temp-1"]
    assert ids(viewer_client.get(f"{DEVICES}?ordering=name&page_size=1&page=2")) == ["temp-2"]
    page = viewer_client.get(f"{DEVICES}?page_size=2").json()
    assert page["count"] == 5 and page["next"] and page["previous"] is None
    assert viewer_client.get(f"{DEVICES}?page=99").status_code == 404


def test_group_devices_with_and_without_descendants(viewer_client, fleet):
    site = fleet["site"].pk
    assert ids(viewer_client.get(f"{GROUPS}{site}/devices/")) == ["cam-1"]
    assert sorted(ids(viewer_client.get(f"{GROUPS}{site}/devices/?descendants=true"))) == ["cam-1", "temp-1", "temp-2"]
    assert ids(viewer_client.get(f"{GROUPS}{site}/devices/?descendants=true&tags=lab")) == ["temp-1"]
    assert ids(viewer_client.get(f"{GROUPS}{site}/devices/?descendants=true&ordering=-id")) == [
        "temp-2",
        "temp-1",
        "cam-1",
    ]
    assert viewer_client.get(f"{GROUPS}{site}/devices/?status=bogus").status_code == 400
    assert viewer_client.get(f"{GROUPS}999999/devices/").status_code == 404


def test_list_query_count_does_not_grow_with_rows(viewer_client, django_assert_max_num_queries):
    group = DeviceGroupFactory()
    for _ in range(30):
        DeviceFactory(group=group)
    with django_assert_max_num_queries(6):
        assert len(ids(viewer_client.get(f"{DEVICES}?page_size=30"))) == 30


# --- Groups -------------------------------------------------------------------------------------


def test_group_crud_and_tree(admin_client_api):
    root = admin_client_api.post(GROUPS, {"name": "HQ", "description": "head office"}, format="json")
    assert root.status_code == 201, root.content
    root_id = root.json()["id"]
    child = admin_client_api.post(GROUPS, {"name": "Floor 1", "parent": root_id}, format="json").json()
    assert child["path"] == f"/{root_id}/{child['id']}/" and child["depth"] == 2
    DeviceFactory(group_id=child["id"])
    listed = admin_client_api.get(f"{GROUPS}?within={root_id}").json()["results"]
    assert [(g["name"], g["device_count"]) for g in listed] == [("Floor 1", 1)]
    assert [g["name"] for g in admin_client_api.get(f"{GROUPS}?root=true").json()["results"]] == ["HQ"]


def test_group_cycles_are_refused(admin_client_api):
    a = DeviceGroupFactory(name="a")
    b = DeviceGroupFactory(name="b", parent=a)
    c = DeviceGroupFactory(name="c", parent=b)
    for parent in (a, c):
        response = admin_client_api.patch(f"{GROUPS}{a.pk}/", {"parent": parent.pk}, format="json")
        assert response.status_code == 400 and "parent" in response.json(), response.content
    a.refresh_from_db()
    assert a.parent is None


def test_group_bad_input(admin_client_api):
    DeviceGroupFactory(name="taken")
    assert "name" in admin_client_api.post(GROUPS, {"name": "taken"}, format="json").json()
    assert "parent" in admin_client_api.post(GROUPS, {"name": "x", "parent": 999999}, format="json").json()
    assert "name" in admin_client_api.post(GROUPS, {"name": "x" * 101}, format="json").json()
    assert admin_client_api.post(GROUPS, {}, format="json").status_code == 400


def test_a_group_in_use_cannot_be_deleted(admin_client_api):
    parent = DeviceGroupFactory()
    child = DeviceGroupFactory(parent=parent)
    DeviceFactory(group=child)
    for group in (parent, child):
        response = admin_client_api.delete(f"{GROUPS}{group.pk}/")
        assert response.status_code == 409 and "detail" in response.json()
    empty = DeviceGroupFactory()
    assert admin_client_api.delete(f"{GROUPS}{empty.pk}/").status_code == 204


def test_move_devices_into_a_group(admin_client_api):
    group = DeviceGroupFactory()
    DeviceFactory(id="d1")
    DeviceFactory(id="d2")
    response = admin_client_api.post(f"{GROUPS}{group.pk}/move-devices/", {"devices": ["d1", "d2"]}, format="json")
    assert response.status_code == 200 and response.json() == {"moved": 2}
    assert set(group.devices.values_list("pk", flat=True)) == {"d1", "d2"}
    bad = admin_client_api.post(f"{GROUPS}{group.pk}/move-devices/", {"devices": ["d1", "ghost"]}, format="json")
    assert bad.status_code == 400 and "ghost" in bad.json()["devices"][0]
    assert admin_client_api.post(f"{GROUPS}{group.pk}/move-devices/", {"devices": []}, format="json").status_code == 400


# --- Import -------------------------------------------------------------------------------------


def _upload(client, content: bytes, name: str = "devices.csv"):
    file = io.BytesIO(content)
    file.name = name
    return client.post(f"{DEVICES}import/", {"file": file}, format="multipart")


def test_import_csv(admin_client_api):
    group = DeviceGroupFactory()
    csv = (
        "id,name,device_type,protocol,group,tags,metadata\n"
        f'cam-1,Camera,camera,rtsp,{group.pk},"security,outdoor","{{""fps"": 25}}"\n'
        "temp-1,Temp,sensor,mqtt,,lab;roof,\n"
    ).encode()
    response = _upload(admin_client_api, csv)
    assert response.status_code == 201, response.content
    assert response.json() == {"created": 2, "ids": ["cam-1", "temp-1"]}
    cam = Device.objects.get(pk="cam-1")
    assert (cam.group, cam.tags, cam.metadata) == (group, ["security", "outdoor"], {"fps": 25})
    assert Device.objects.get(pk="temp-1").tags == ["lab", "roof"]


def test_import_json_body_and_file(admin_client_api):
    response = admin_client_api.post(f"{DEVICES}import/", [{"id": "j1", "name": "J", "tags": ["a"]}], format="json")
    assert response.status_code == 201 and response.json()["ids"] == ["j1"]
    response = _upload(admin_client_api, json.dumps({"devices": [{"name": "K"}]}).encode(), "devices.json")
    assert response.status_code == 201 and response.json()["created"] == 1


def test_import_reports_every_bad_row_and_imports_nothing(admin_client_api):
    DeviceFactory(id="taken")
    csv = (
        b"id,name,device_type,metadata,group\n"
        b"ok-1,Fine,sensor,,\n"
        b"taken,Dup,sensor,,\n"
        b"ok-2,Bad type,toaster,,\n"
        b"ok-3,Bad meta,sensor,{nope,\n"
        b"ok-4,Bad group,sensor,,abc\n"
    )
    response = _upload(admin_client_api, csv)
    assert response.status_code == 400
    body = response.json()
    assert body["detail"].startswith("Nothing imported")
    assert {(e["row"], field) for e in body["errors"] for field in e["errors"]} >= {
        (2, "id"),
        (3, "device_type"),
        (4, "metadata"),
        (5, "group"),
    }
    assert not Device.objects.filter(pk="ok-1").exists()


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"", "devices.csv", "empty"),
        (b"\xff\xfe\x00garbage", "devices.csv", "UTF-8"),
        (b"id,name,colour\nx,y,red\n", "devices.csv", "Unknown columns"),
        (b"id\nx\n", "devices.csv", "'name' column"),
        (b'id,name\n"unterminated,x\n', "devices.csv", "Malformed CSV"),
        (b"[1, 2", "devices.json", "Malformed JSON"),
        (b'{"a": 1}', "devices.json", "list of device objects"),
        (b"[1, 2]", "devices.json", "not an object"),
        (b"name\n", "devices.csv", "no devices"),
    ],
)
def test_malformed_import_files_are_400(admin_client_api, content, name, message):
    response = _upload(admin_client_api, content, name)
    assert response.status_code == 400, response.content
    assert message in response.json()["detail"]


def test_import_limits(admin_client_api, settings):
    settings.DEVICE_IMPORT_MAX_ROWS = 2
    response = _upload(admin_client_api, b"name\na\nb\nc\n")
    assert response.status_code == 400 and "Too many rows" in response.json()["detail"]
    settings.DEVICE_IMPORT_MAX_BYTES = 10
    response = _upload(admin_client_api, b"name\nabcdefghijkl\n")
    assert response.status_code == 400 and "bytes" in response.json()["detail"]
    assert admin_client_api.post(f"{DEVICES}import/", {}, format="multipart").status_code == 400
    assert not DeviceGroup.objects.exists() and not Device.objects.exists()


def test_certificate_fingerprints_are_unique_and_filterable(admin_client_api, viewer_client):
    fingerprint = "AB:" * 31 + "AB"
    first = admin_client_api.post(DEVICES, {"id": "c1", "name": "x", "cert_fingerprint": fingerprint}, format="json")
    assert first.status_code == 201 and first.json()["cert_fingerprint"] == "ab" * 32
    clash = admin_client_api.post(DEVICES, {"id": "c2", "name": "x", "cert_fingerprint": "ab" * 32}, format="json")
    assert clash.status_code == 400 and "cert_fingerprint" in clash.json()
    assert admin_client_api.patch(f"{DEVICES}c1/", {"cert_fingerprint": fingerprint}, format="json").status_code == 200
    assert ids(viewer_client.get(f"{DEVICES}?cert_fingerprint={fingerprint}")) == ["c1"]


def test_group_answers_carry_device_counts(admin_client_api):
    created = admin_client_api.post(GROUPS, {"name": "new"}, format="json")
    assert created.status_code == 201 and created.json()["device_count"] == 0


def test_a_body_over_the_upload_limit_is_a_json_400(admin_client_api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = admin_client_api.post(f"{DEVICES}import/", [{"name": "x" * 50}] * 100, format="json")
    assert response.status_code == 400
    assert response.json() == {"detail": "Bad request."}


def test_anonymous_throttling_ignores_a_forged_forwarded_for(api_client, monkeypatch):
    from fluxiot.api.throttling import AnonRateThrottle

    monkeypatch.setattr(AnonRateThrottle, "THROTTLE_RATES", {"user": "2/min", "anon": "2/min"})
    # Login attempts are the anonymous requests worth limiting; a client rotating its own
    # X-Forwarded-For is still one client.
    codes = [
        api_client.post(
            "/api/v1/auth/token/", {"username": "x", "password": "y"}, format="json", HTTP_X_FORWARDED_FOR=f"10.0.0.{n}"
        ).status_code
        for n in range(4)
    ]
    assert codes == [401, 401, 429, 429]
