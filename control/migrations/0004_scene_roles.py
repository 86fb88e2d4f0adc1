"""The scene permissions join the roles (Operator: execute scenes by hand; Viewer: read)."""

from django.db import migrations

from fluxiot.roles import sync_roles


class Migration(migrations.Migration):
    dependencies = [
        ("control", "0003_scenes"),
    ]
    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]
