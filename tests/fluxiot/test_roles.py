import pytest
from django.contrib.auth.models import Group

from fluxiot import roles

pytestmark = pytest.mark.django_db


def _codenames(name):
    return {f"{p.content_type.app_label}.{p.codename}" for p in Group.objects.get(name=name).permissions.all()}


def test_the_three_roles_exist_with_their_permissions():
    viewer, operator, administrator = (_codenames(n) for n in (roles.VIEWER, roles.OPERATOR, roles.ADMINISTRATOR))
    assert {"devices.view_device", "devices.view_devicegroup", "devices.view_devicestatuschange"} <= viewer
    assert not any(".view_" not in perm for perm in viewer)
    assert viewer <= operator
    assert "devices.change_device" not in operator
    assert {"devices.add_device", "devices.delete_device", "devices.activate_device", "auth.add_user"} <= administrator


def test_sync_roles_is_idempotent():
    from django.apps import apps

    before = {name: _codenames(name) for name in (roles.VIEWER, roles.OPERATOR, roles.ADMINISTRATOR)}
    roles.sync_roles(apps)
    roles.sync_roles(apps)
    assert Group.objects.filter(name__in=before).count() == 3
    assert {name: _codenames(name) for name in before} == before
