"""Fewer indexes on the outbox's hot tables: each one costs every message's writes.

Dropped: the server_id indexes of both tables (outbox_server_due_idx and attempt_server_time_idx
start with server_id) and, on PostgreSQL, the varchar_pattern_ops `_like` twins of the message_id
and idempotency_key indexes (nothing queries them with LIKE). The message_id index is kept under a
new name; idempotency keys stay unique, now in a partial index holding only the rows that have one.

The state changes are what `makemigrations` writes; the database side is done by hand so that it
is cheap on a large outbox: on PostgreSQL no foreign key is dropped and revalidated and the
message_id index is renamed rather than rebuilt; on SQLite the table is remade once (to drop the
inline UNIQUE of idempotency_key), not once per altered field.
"""

import django.db.models.deletion
from django.db import migrations, models

SERVER_ID_INDEXES = {
    "outbox_outgoingmessage": "outbox_outgoingmessage_server_id_f474074e",
    "outbox_deliveryattempt": "outbox_deliveryattempt_server_id_4cff4e95",
}
OLD_MESSAGE_ID_INDEX = "outbox_outgoingmessage_message_id_cd4b9ac3"

MESSAGE_ID_INDEX = models.Index(fields=["message_id"], name="outbox_message_id_idx")
IDEMPOTENCY_KEY_UNIQUE = models.UniqueConstraint(
    condition=models.Q(("idempotency_key__isnull", False)),
    fields=("idempotency_key",),
    name="outbox_idempotency_key_uniq",
)


def _field(model, name, field):
    field.set_attributes_from_name(name)
    field.model = model
    return field


def _idempotency_key(model, unique):
    field = models.CharField(blank=True, max_length=400, null=True, unique=unique)
    return _field(model, "idempotency_key", field)


def _message_id(model, db_index):
    return _field(model, "message_id", models.CharField(db_index=db_index, max_length=998))


def forwards(apps, schema_editor):
    # `apps` is the state before this migration (the database operations change no state).
    message = apps.get_model("outbox", "OutgoingMessage")
    # PostgreSQL: drops the UNIQUE constraint and its _like index. SQLite: remakes the table.
    schema_editor.alter_field(
        message, _idempotency_key(message, True), _idempotency_key(message, False)
    )
    quote = schema_editor.quote_name
    for name in [*SERVER_ID_INDEXES.values(), OLD_MESSAGE_ID_INDEX + "_like"]:
        schema_editor.execute(f"DROP INDEX IF EXISTS {quote(name)}")
    old_index = models.Index(fields=["message_id"], name=OLD_MESSAGE_ID_INDEX)
    schema_editor.rename_index(message, old_index, MESSAGE_ID_INDEX)
    schema_editor.add_constraint(message, IDEMPOTENCY_KEY_UNIQUE)


def backwards(apps, schema_editor):
    message = apps.get_model("outbox", "OutgoingMessage")
    schema_editor.remove_constraint(message, IDEMPOTENCY_KEY_UNIQUE)
    schema_editor.remove_index(message, MESSAGE_ID_INDEX)
    # As 0001 made them: with the _like indexes on PostgreSQL (SQLite remakes the table, and with
    # it the server_id index, hence IF NOT EXISTS below).
    schema_editor.alter_field(message, _message_id(message, False), _message_id(message, True))
    schema_editor.alter_field(
        message, _idempotency_key(message, False), _idempotency_key(message, True)
    )
    quote = schema_editor.quote_name
    for table, name in SERVER_ID_INDEXES.items():
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {quote(table)} ({quote('server_id')})"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("outbox", "0003_pending_recipients"),
        ("servers", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forwards, backwards)],
            state_operations=[
                migrations.AlterField(
                    model_name="deliveryattempt",
                    name="server",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="servers.mailserver",
                    ),
                ),
                migrations.AlterField(
                    model_name="outgoingmessage",
                    name="idempotency_key",
                    field=models.CharField(blank=True, max_length=400, null=True),
                ),
                migrations.AlterField(
                    model_name="outgoingmessage",
                    name="message_id",
                    field=models.CharField(max_length=998),
                ),
                migrations.AlterField(
                    model_name="outgoingmessage",
                    name="server",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="outgoing_messages",
                        to="servers.mailserver",
                    ),
                ),
                migrations.AddIndex(
                    model_name="outgoingmessage",
                    index=models.Index(fields=["message_id"], name="outbox_message_id_idx"),
                ),
                migrations.AddConstraint(
                    model_name="outgoingmessage",
                    constraint=models.UniqueConstraint(
                        condition=models.Q(("idempotency_key__isnull", False)),
                        fields=("idempotency_key",),
                        name="outbox_idempotency_key_uniq",
                    ),
                ),
            ],
        ),
    ]
