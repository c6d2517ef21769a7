"""`python -m tests.bench.api_cpu`: what one `POST /api/v1/messages` costs the web process.

A throw-away home with one mail server and one `send` API key (the per-key rate on, at a limit the
run stays under), on SQLite (BENCH_API_BACKEND=postgresql: a throw-away PostgreSQL database), then
messages of 10 KB (BENCH_BODY_BYTES) posted three ways:

- in process, through `mailgate.wsgi.application` (every middleware): CPU ms per POST (process
  time, median of 3 rounds of BENCH_API_POSTS) and the queries of one POST and of one batch;
- with BENCH_CALLGRIND=1, the same loop under valgrind's callgrind, counting instructions only
  around the measured POSTs: instructions per POST, which do not depend on what else the machine
  does (CPU time does: on a loaded machine caches and the shared cores slow every instruction);
- over HTTP to `mailgate web` (waitress) in its own process, keep-alive, one POST at a time and in
  batches of 100: that process's CPU ms per message (/proc), as `make bench` reports it.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.harness import body_text
from tests.bench.run import ROOT, Database, cpu_seconds, env_int, free_port, port_open, wait_for

RATE_LIMIT = "1000000"  # counted on every call, as in production, but never reached here
BATCH = 100


def message(i: int, body: str) -> dict[str, Any]:
    return {
        "from": "app@example.com",
        "to": [f"bench{i}@example.org"],
        "subject": f"bench {i}",
        "text": body,
    }


# --- in the measured process (Django set up) -------------------------------------------------


def setup() -> None:
    from django.core.management import call_command

    from mailgate.api.models import APIKey
    from mailgate.servers.models import MailServer

    call_command("migrate", interactive=False, verbosity=0)
    call_command("createcachetable", verbosity=0)
    MailServer.objects.create(
        name="bench",
        auth_method="password",
        smtp_host="127.0.0.1",
        smtp_port=2525,
        smtp_security="none",
        limit_per_minute=1_000_000_000,
        limit_recipients_per_day=1_000_000_000,
    )
    print(json.dumps({"key": APIKey.issue("bench")[1]}))


def in_process(key: str, posts: int, body_bytes: int, callgrind: bool) -> None:
    """POST through the WSGI application in this process; print CPU ms per POST and queries."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from mailgate.wsgi import application

    body = body_text(body_bytes)

    def post(path: str, payload: object) -> None:
        data = json.dumps(payload).encode()
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": path,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "HTTP_HOST": "127.0.0.1:8000",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(data)),
            "HTTP_AUTHORIZATION": f"Bearer {key}",
            "wsgi.input": io.BytesIO(data),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
        }
        status: list[str] = []
        answer = b"".join(application(environ, lambda s, h: status.append(s)))
        if not status[0].startswith(("200", "201")):
            raise SystemExit(f"api_cpu: POST {path} answered {status[0]}: {answer[:300]!r}")

    payloads = [message(i, body) for i in range(posts)]
    for payload in payloads[:20]:  # warm: imports, the server list, the key lookup's SQL
        post("/api/v1/messages", payload)
    if callgrind:
        # Count instructions only from here: `callgrind_control -i on` asks valgrind to start.
        pid = str(os.getpid())
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        for payload in payloads:
            post("/api/v1/messages", payload)
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
        return
    rounds = []
    for _ in range(3):
        started = time.process_time()
        for payload in payloads:
            post("/api/v1/messages", payload)
        rounds.append((time.process_time() - started) / posts * 1000)
    with CaptureQueriesContext(connection) as one:
        post("/api/v1/messages", payloads[0])
    with CaptureQueriesContext(connection) as batch:
        post("/api/v1/messages/batch", {"messages": payloads[:BATCH]})
    print(
        json.dumps(
            {
                "cpu_ms_per_post": statistics.median(rounds),
                "rounds": rounds,
                "queries_per_post": len(one.captured_queries),
                "queries_per_batch": len(batch.captured_queries),
            }
        )
    )


# --- the driver -------------------------------------------------------------------------------


def child(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench.api_cpu", *args],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def instructions(env: dict[str, str], key: str, posts: int, body_bytes: int, folder: Path) -> float:
    """Instructions per POST counted by callgrind (only around the measured loop)."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("api_cpu: BENCH_CALLGRIND=1 needs valgrind (Debian package valgrind)")
    out = folder / "callgrind.out"
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "tests.bench.api_cpu",
            "in-process",
            key,
            str(posts),
            str(body_bytes),
            "callgrind",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
        check=True,
    )
    for line in result.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1].strip()) / posts
    raise SystemExit(f"api_cpu: callgrind reported no count: {result.stderr[-500:]}")


def over_http(env: dict[str, str], key: str, posts: int, body_bytes: int) -> dict[str, float]:
    """`mailgate web` in its own process: its CPU ms per message, one by one and in batches."""
    address = f"127.0.0.1:{free_port()}"
    host, _, port = address.rpartition(":")
    web = subprocess.Popen(
        [sys.executable, "-m", "mailgate.cli", "web", "--host", host, "--port", port],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open(address), 60, "the web process")
        body = body_text(body_bytes)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        connection = http.client.HTTPConnection(host, int(port), timeout=60)

        def send(path: str, payload: object) -> None:
            connection.request("POST", path, json.dumps(payload), headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status not in (200, 201):
                raise SystemExit(
                    f"api_cpu: POST {path} answered {response.status}: {answer[:300]!r}"
                )

        payloads = [message(i, body) for i in range(posts)]
        for payload in payloads[:20]:
            send("/api/v1/messages", payload)
        before = cpu_seconds(web.pid)
        for payload in payloads:
            send("/api/v1/messages", payload)
        one = (cpu_seconds(web.pid) - before) / posts * 1000
        before = cpu_seconds(web.pid)
        for start in range(0, posts, BATCH):
            send("/api/v1/messages/batch", {"messages": payloads[start : start + BATCH]})
        batched = (cpu_seconds(web.pid) - before) / posts * 1000
        connection.close()
        return {"web_cpu_ms_per_post": one, "web_cpu_ms_per_batched_message": batched}
    finally:
        web.send_signal(signal.SIGTERM)
        try:
            web.wait(timeout=30)
        except subprocess.TimeoutExpired:
            web.kill()


def main() -> None:
    posts = env_int("BENCH_API_POSTS", 500)
    body_bytes = env_int("BENCH_BODY_BYTES", 10 * 1024, minimum=65)
    backend = os.environ.get("BENCH_API_BACKEND", "sqlite")
    if backend not in ("sqlite", "postgresql"):
        raise SystemExit(f"BENCH_API_BACKEND: {backend!r} is not sqlite or postgresql")
    folder = Path(tempfile.mkdtemp(prefix="mailgate-api-cpu-"))
    database = Database(backend, folder)
    try:
        env = {
            **os.environ,
            "MAILGATE_HOME": str(folder / "home"),
            "MAILGATE_DATABASE_URL": database.url,
            "MAILGATE_API_RATE_LIMIT": RATE_LIMIT,
            "DJANGO_SETTINGS_MODULE": "mailgate.settings",
            "PYTHONPATH": str(ROOT),
        }
        key = json.loads(child(env, "setup"))["key"]
        found: dict[str, Any] = json.loads(
            child(env, "in-process", key, str(posts), str(body_bytes))
        )
        if os.environ.get("BENCH_CALLGRIND") == "1":
            found["instructions_per_post"] = instructions(env, key, posts, body_bytes, folder)
        found.update(over_http(env, key, posts, body_bytes))
        load = os.getloadavg()
        print(
            f"POST /api/v1/messages, {body_bytes} bytes, {backend}, {posts} POSTs "
            f"(load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}):\n"
            f"  in process (WSGI, all middleware): {found['cpu_ms_per_post']:.2f} ms CPU per POST "
            f"(rounds {', '.join(f'{r:.2f}' for r in found['rounds'])}); "
            f"{found['queries_per_post']} queries per POST, "
            f"{found['queries_per_batch']} per batch of {BATCH}"
        )
        if "instructions_per_post" in found:
            print(
                f"  callgrind: {found['instructions_per_post'] / 1e6:.2f} M instructions per POST"
            )
        print(
            f"  mailgate web (waitress), keep-alive: {found['web_cpu_ms_per_post']:.2f} ms CPU per "
            f"POST, {found['web_cpu_ms_per_batched_message']:.2f} ms per message in batches of "
            f"{BATCH}"
        )
        print(json.dumps({"backend": backend, "posts": posts, "load": load, **found}))
    finally:
        database.drop()
        shutil.rmtree(folder, ignore_errors=True)


def run_child(args: list[str]) -> None:
    import django

    django.setup()
    if args[0] == "setup":
        setup()
    else:
        key, posts, body_bytes = args[1], int(args[2]), int(args[3])
        in_process(key, posts, body_bytes, callgrind=args[4:] == ["callgrind"])


if __name__ == "__main__":
    if len(sys.argv) > 1:
        run_child(sys.argv[1:])
    else:
        main()
