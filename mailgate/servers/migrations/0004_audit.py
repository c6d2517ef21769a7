from django.db import migrations


class Migration(migrations.Migration):
    """Saving a server writes audit events: the audit table comes first wherever servers go."""

    dependencies = [
        ("servers", "0003_incoming_mail"),
        ("audit", "0001_initial"),
    ]

    operations = [migrations.RunPython(migrations.RunPython.noop, migrations.RunPython.noop)]
