"""The rule and plugin permissions join the roles (Viewer: read)."""

from django.db import migrations

from fluxiot.roles import sync_roles


class Migration(migrations.Migration):
    dependencies = [
        ("rules", "0001_initial"),
        ("devices", "0003_roles"),
    ]
    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]
