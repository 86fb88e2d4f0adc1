"""The Viewer, Operator and Administrator roles (auth groups)."""

from django.db import migrations

from fluxiot.roles import sync_roles


class Migration(migrations.Migration):
    dependencies = [
        ("devices", "0002_tags_gin_index"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]
