from typing import Any

from django.db import migrations, models


def existing_keys_keep_their_access(apps: Any, schema_editor: Any) -> None:
    """Keys made before scopes could do everything: they become `admin` keys (new ones `send`)."""
    apps.get_model("api", "APIKey").objects.update(scope="admin")


class Migration(migrations.Migration):
    dependencies = [
        ("api", "0001_initial"),
        ("audit", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="scope",
            field=models.CharField(
                choices=[("send", "send"), ("read", "read"), ("admin", "admin")],
                default="send",
                max_length=10,
                verbose_name="Scope",
            ),
        ),
        migrations.RunPython(existing_keys_keep_their_access, migrations.RunPython.noop),
    ]
