"""The three built-in roles, kept as Django groups.

Viewer reads everything of the platform. Operator reads too, and gains the rights to act on devices
(send commands, run scenes, acknowledge alarms) as those apps arrive. Administrator may do
everything. Each app's data migration calls ``sync_roles`` so new permissions join the roles as apps
arrive.
"""

from __future__ import annotations

from typing import Any

VIEWER = "Viewer"
OPERATOR = "Operator"
ADMINISTRATOR = "Administrator"

# The apps whose models the roles cover.
PLATFORM_APPS = ["devices", "telemetry", "transport", "control", "rules", "alarms", "streams", "live"]

# Beyond reading: what an Operator may do (codenames as "app_label.codename").
OPERATOR_EXTRA = [
    "control.add_devicecommand",
    "control.send_command",
    "control.execute_scene",
    "alarms.acknowledge_alarm",
    "alarms.change_alarm",
]


def sync_roles(apps: Any, schema_editor: Any = None, using: str | None = None) -> None:
    """Create or refresh the role groups from the permissions that exist now (migration-safe)."""
    from django.apps import apps as global_apps
    from django.contrib.auth.management import create_permissions

    if using is None:
        using = schema_editor.connection.alias if schema_editor is not None else "default"
    # Permissions are normally created after migrate; make sure they exist for the apps migrated so far.
    for app_config in global_apps.get_app_configs():
        create_permissions(app_config, verbosity=0, apps=apps, using=using)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")

    platform = (
        Permission.objects.using(using).filter(content_type__app_label__in=PLATFORM_APPS).select_related("content_type")
    )
    viewer_perms = list(platform.filter(codename__startswith="view_"))
    operator_perms = viewer_perms + [
        p for p in platform if f"{p.content_type.app_label}.{p.codename}" in OPERATOR_EXTRA
    ]
    groups = Group.objects.using(using)
    groups.get_or_create(name=VIEWER)[0].permissions.set(viewer_perms)
    groups.get_or_create(name=OPERATOR)[0].permissions.set(operator_perms)
    groups.get_or_create(name=ADMINISTRATOR)[0].permissions.set(Permission.objects.using(using).all())
