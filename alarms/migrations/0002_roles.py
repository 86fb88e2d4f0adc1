"""The alarm permissions join the roles (Viewer: read; Operator: acknowledge and clear alarms)."""

from django.db import migrations

from fluxiot.roles import sync_roles


class Migration(migrations.Migration):
    dependencies = [
        ("alarms", "0001_initial"),
        ("control", "0002_roles"),
    ]
    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]
