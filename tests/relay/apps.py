"""The applications of the end-to-end tests: an smtplib script and a Django project's SMTP backend,
each in a process of its own, speaking to the relay as Odoo or ERPNext would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

DJANGO_APP = textwrap.dedent(
    """
    import json, sys
    import django
    from django.conf import settings

    job = json.loads(sys.argv[1])
    settings.configure(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="localhost",
        EMAIL_PORT=job["port"],
        EMAIL_USE_TLS=True,
        EMAIL_HOST_USER=job["username"],
        EMAIL_HOST_PASSWORD=job["password"],
        EMAIL_TIMEOUT=120,
    )
    django.setup()
    from django.core.mail import EmailMessage, get_connection

    connection = get_connection()
    messages = []
    for item in job["messages"]:
        message = EmailMessage(
            item["subject"], item["body"], item["from"], item["to"], connection=connection
        )
        for name, size in item.get("attachments", []):
            message.attach(name, b"%PDF-1.4 " + b"x" * size, "application/pdf")
        messages.append(message)
    print(connection.send_messages(messages))
    """
)


def django_app(
    port: int, username: str, password: str, ca_file: Path, messages: list[dict[str, object]]
) -> subprocess.CompletedProcess[str]:
    """Send with Django's own SMTP backend (STARTTLS, AUTH) from a separate Django process that
    trusts the relay's certificate through SSL_CERT_FILE, as an application's host would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILGATE_", "DJANGO_"))}
    env["SSL_CERT_FILE"] = str(ca_file)
    job = {"port": port, "username": username, "password": password, "messages": messages}
    return subprocess.run(
        [sys.executable, "-c", DJANGO_APP, json.dumps(job)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
