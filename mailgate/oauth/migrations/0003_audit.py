from django.db import migrations


class Migration(migrations.Migration):
    """Connect and disconnect write audit events: the audit table comes first wherever oauth goes."""

    dependencies = [
        ("oauth", "0002_grant_refresh_claim"),
        ("audit", "0001_initial"),
    ]

    operations = [migrations.RunPython(migrations.RunPython.noop, migrations.RunPython.noop)]
