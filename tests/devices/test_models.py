import pytest
from django.core.exceptions import ValidationError

from devices.choices import DeviceType
from devices.models import Device, DeviceGroup, generate_device_id
from tests.factories import DeviceFactory, DeviceGroupFactory

pytestmark = pytest.mark.django_db


def tree():
    """root ─ a ─ a1
    └ b"""
    root = DeviceGroupFactory(name="root")
    a = DeviceGroupFactory(name="a", parent=root)
    a1 = DeviceGroupFactory(name="a1", parent=a)
    b = DeviceGroupFactory(name="b", parent=root)
    return root, a, a1, b


def test_group_paths_follow_the_tree():
    root, a, a1, b = tree()
    assert root.path == f"/{root.pk}/"
    assert a1.path == f"/{root.pk}/{a.pk}/{a1.pk}/"
    assert a1.depth == 3
    assert set(root.descendants()) == {root, a, a1, b}
    assert set(a.descendants(include_self=False)) == {a1}
    assert root.is_ancestor_of(a1) and not b.is_ancestor_of(a1)


def test_moving_a_group_moves_its_subtree():
    root, a, a1, b = tree()
    a.parent = b
    a.save()
    a1.refresh_from_db()
    assert a1.path == f"/{root.pk}/{b.pk}/{a.pk}/{a1.pk}/"
    assert set(b.descendants(include_self=False)) == {a, a1}


def test_moving_a_group_to_the_top_level():
    root, a, a1, b = tree()
    a.parent = None
    a.save()
    a1.refresh_from_db()
    assert a1.path == f"/{a.pk}/{a1.pk}/"


@pytest.mark.parametrize("target", ["self", "child", "grandchild"])
def test_moving_a_group_under_itself_or_a_descendant_is_refused(target):
    root, a, a1, b = tree()
    new_parent = {"self": root, "child": a, "grandchild": a1}[target]
    root.parent = new_parent
    with pytest.raises(ValidationError) as caught:
        root.full_clean()
    assert "parent" in caught.value.message_dict
    # save() refuses it too, for callers that skip clean()
    with pytest.raises(ValidationError):
        root.save()
    root.refresh_from_db()
    assert root.parent is None and root.path == f"/{root.pk}/"


def test_group_names_are_unique_per_parent_including_top_level():
    root = DeviceGroupFactory(name="site")
    DeviceGroupFactory(name="floor", parent=root)
    with pytest.raises(ValidationError):
        DeviceGroup(name="floor", parent=root).full_clean()
    with pytest.raises(ValidationError):
        DeviceGroup(name="site").full_clean()
    DeviceGroup(name="floor", parent=None).full_clean()  # another parent: fine


def test_generated_ids_are_valid_slugs_and_distinct():
    ids = {generate_device_id() for _ in range(1000)}
    assert len(ids) == 1000
    for device_id in list(ids)[:10]:
        Device(id=device_id, name="x").full_clean()


@pytest.mark.parametrize(
    "device_id",
    ["x" * 65, "has space", "slash/in/it", "plus+", "hash#", "-leading-hyphen", "", "ünïcode"],
)
def test_bad_device_ids_are_refused(device_id):
    with pytest.raises(ValidationError) as caught:
        Device(id=device_id, name="x").full_clean()
    assert "id" in caught.value.message_dict


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("metadata", ["not", "an", "object"]),
        ("metadata", "text"),
        ("metadata", []),
        ("tags", {}),
        ("tags", "lab"),
        ("tags", [1, 2]),
        ("tags", ["has space"]),
        ("tags", ["a,b"]),
        ("tags", ["x" * 65]),
        ("tags", [f"t{i}" for i in range(51)]),
        ("device_type", "toaster"),
        ("protocol", "carrier-pigeon"),
        ("cert_fingerprint", "abc"),
    ],
)
def test_bad_fields_are_refused(field, value):
    device = Device(id="d1", name="x")
    setattr(device, field, value)
    with pytest.raises(ValidationError) as caught:
        device.full_clean()
    assert field in caught.value.message_dict


def test_custom_type_needs_a_name_and_only_custom_has_one():
    with pytest.raises(ValidationError) as caught:
        Device(id="d1", name="x", device_type=DeviceType.CUSTOM).full_clean()
    assert "custom_type" in caught.value.message_dict
    with pytest.raises(ValidationError):
        Device(id="d1", name="x", device_type=DeviceType.SENSOR, custom_type="weird").full_clean()
    device = Device(id="d1", name="x", device_type=DeviceType.CUSTOM, custom_type=" beehive ")
    device.full_clean()
    assert device.type_label == "beehive"


def test_clean_normalises_tags_and_fingerprint():
    device = Device(id="d1", name="x", tags=[" lab ", "lab", "roof"], cert_fingerprint="AB:" * 31 + "AB")
    device.full_clean()
    assert device.tags == ["lab", "roof"]
    assert device.cert_fingerprint == "ab" * 32


def test_certificate_fingerprints_are_unique_when_set():
    DeviceFactory(id="d1", cert_fingerprint="ab" * 32)
    DeviceFactory(id="d2")
    with pytest.raises(ValidationError):
        Device(id="d3", name="x", cert_fingerprint="ab" * 32).full_clean()
    Device(id="d4", name="x").full_clean()  # two empty fingerprints are fine


def _tag_queries(using):
    manager = Device.objects.db_manager(using)
    manager.create(id="t1", name="1", tags=["lab", "roof"])
    manager.create(id="t2", name="2", tags=["lab"])
    manager.create(id="t3", name="3", tags=["roof", "basement"])
    manager.create(id="t4", name="4", tags=[])
    qs = Device.objects.using(using)
    return {
        "any lab": set(qs.filter(tags__has_any=["lab"]).values_list("id", flat=True)),
        "any lab/basement": set(qs.filter(tags__has_any=["lab", "basement"]).values_list("id", flat=True)),
        "all lab+roof": set(qs.filter(tags__has_all=["lab", "roof"]).values_list("id", flat=True)),
        "all repeated": set(qs.filter(tags__has_all=["roof", "roof"]).values_list("id", flat=True)),
        "any none": set(qs.filter(tags__has_any=[]).values_list("id", flat=True)),
        "all none": set(qs.filter(tags__has_all=[]).values_list("id", flat=True)),
        "any unknown": set(qs.filter(tags__has_any=["nope"]).values_list("id", flat=True)),
    }


EXPECTED_TAG_RESULTS = {
    "any lab": {"t1", "t2"},
    "any lab/basement": {"t1", "t2", "t3"},
    "all lab+roof": {"t1"},
    "all repeated": {"t1", "t3"},
    "any none": set(),
    "all none": {"t1", "t2", "t3", "t4"},
    "any unknown": set(),
}


def test_tag_lookups_on_postgresql():
    assert _tag_queries("default") == EXPECTED_TAG_RESULTS


@pytest.mark.django_db(databases=["embedded"])
def test_tag_lookups_on_sqlite_embedded_mode():
    assert _tag_queries("embedded") == EXPECTED_TAG_RESULTS
