"""Operator logs: MAILGATE_LOG_FORMAT / MAILGATE_LOG_LEVEL, one JSON object per line, no secret."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from mailgate.conf import SettingsError, load_operations
from mailgate.logs import JSONFormatter, redact
from tests.outbox.own_database import ROOT
from tests.smtpsink import SMTPSink

pytestmark = pytest.mark.nodb


def test_the_settings_are_parsed_strictly() -> None:
    ops = load_operations({})
    assert (
        ops.log_format,
        ops.log_level,
        ops.web_threads,
        ops.web_connection_limit,
        ops.worker_nice,
    ) == ("plain", "INFO", 8, 100, 0)
    assert load_operations({"MAILGATE_WORKER_NICE": "19"}).worker_nice == 19
    ops = load_operations({"MAILGATE_LOG_FORMAT": "JSON", "MAILGATE_LOG_LEVEL": "debug"})
    assert (ops.log_format, ops.log_level) == ("json", "DEBUG")
    for variable, value in [
        ("MAILGATE_LOG_FORMAT", "xml"),
        ("MAILGATE_LOG_LEVEL", "loud"),
        ("MAILGATE_WEB_THREADS", "0"),
        ("MAILGATE_WEB_THREADS", "many"),
        ("MAILGATE_WEB_CONNECTION_LIMIT", "-5"),
        ("MAILGATE_WORKER_NICE", "20"),
        ("MAILGATE_WORKER_NICE", "low"),
    ]:
        with pytest.raises(SettingsError, match=variable):
            load_operations({variable: value})


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("mailgate.outbox", logging.INFO, __file__, 1, message, (), None)
    for name, value in extra.items():
        setattr(record, name, value)
    return record


def test_a_json_line_has_the_fields_and_the_context() -> None:
    line = json.loads(JSONFormatter().format(_record("sent", server="Office", message_id="<a@b>")))
    assert set(line) == {"time", "level", "logger", "message", "server", "message_id"}
    assert line["level"] == "INFO" and line["logger"] == "mailgate.outbox"
    assert line["time"].endswith("+00:00") and line["server"] == "Office"


def test_credentials_that_slip_into_a_message_are_masked() -> None:
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.payload.signature"
    text = redact(
        f"Authorization: Bearer {token} user=a\x01auth=Bearer {token}\x01 password=hunter22&x=1"
    )
    assert token not in text and "hunter22" not in text
    assert "Bearer ***" in text and "password=***" in text


def test_a_worker_with_json_logs_writes_parsable_lines_naming_the_server_without_the_password(
    tmp_path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    env.update(
        MAILGATE_HOME=str(tmp_path),
        MAILGATE_LOG_FORMAT="json",
        MAILGATE_LOG_LEVEL="DEBUG",
        PYTHONPATH=str(ROOT),
    )
    password = "s3cret-relay-password"

    def mailgate(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mailgate.cli", *args],
            env=env, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    # The server refuses the password: the worker holds the server and says so in the log.
    with SMTPSink(users={"app@example.com": "the-password-the-server-wants"}) as sink:
        assert mailgate("migrate", "--verbosity", "0").returncode == 0
        added = mailgate(
            "servers", "add", "--name", "Relay", "--auth", "password", "--username",
            "app@example.com", "--password-stdin", "--smtp-host", "127.0.0.1", "--smtp-port",
            str(sink.port), "--security", "none", stdin=password + "\n",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        queued = mailgate("send", "--from", "app@example.com", "--to", "b@example.org",
                          "--subject", "Logged", "--body", "x")  # fmt: skip
        assert queued.returncode == 0, queued.stderr
        worker = mailgate("worker", "--once")
        assert worker.returncode == 0, worker.stderr
        assert sink.received == []
    lines = [json.loads(line) for line in worker.stderr.splitlines() if line.strip()]
    for parsed in lines:  # every line is one JSON object
        assert {"time", "level", "logger", "message"} <= set(parsed)
    held = [line for line in lines if "held" in line["message"]]
    assert held and held[0]["level"] == "WARNING" and held[0]["server"] == "Relay"
    output = worker.stdout + worker.stderr + queued.stdout + queued.stderr + added.stderr
    assert password not in output
