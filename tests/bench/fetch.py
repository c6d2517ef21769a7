"""`make bench`, incoming side: mailgate fetching from the sandbox's Dovecot over XOAUTH2 against a
raw imaplib `UID FETCH` loop over the same mailbox, in the same run.

BENCH_FETCH_MESSAGES (5,000) messages of BENCH_BODY_BYTES (10 KB) are delivered into the demo
user's INBOX. mailgate (`tests.bench.harness fetch`: one `fetch_server` in a fresh process on a
fresh SQLite database, Fetch Existing Mail on, After Fetch Keep) fetches and commits all of them
(the bytes appended to a pack file and synced, the rows and the cursor committed, batch by batch);
the parse of their header fields, which the hand-off does after the fetch, is timed on its own;
two raw imaplib loops log in with the same token, EXAMINE INBOX and read every message, keeping
nothing: one runs `UID FETCH <uids> (BODY.PEEK[])` over batches of mailgate's size
(MAILGATE_INBOX_BATCH, 200), the other one `UID FETCH <uid>` per message. After one untimed raw
pass (Dovecot builds its cache on the first read), runs alternate BENCH_REPEAT (5) times; ratios
are median against median (BENCH_WRAP, e.g. "py-spy record -t -f raw -o f.txt --", runs mailgate's
fetch under a profiler), and the machine's load average is printed with them. Then one 20 MB message is fetched by a
fresh process, whose peak RSS is reported.
"""

from __future__ import annotations

import imaplib
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.bench.run import ROOT, env_int

TARGET_RATIO = 0.9
FLOOR_RATIO = 0.8
IMAP_SCOPE = "offline_access openid https://outlook.office.com/IMAP.AccessAsUser.All"


def body_message(i: int, body_bytes: int, sender: str) -> bytes:
    line = b"0123456789abcdef" * 4 + b"\r\n"
    head = (
        f"From: {sender}\r\nTo: {sender}\r\nSubject: fetch bench {i}\r\n"
        f"Message-ID: <fetch-bench-{i}@bench.example>\r\nDate: Wed, 02 Dec 2026 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    return head + line * (body_bytes // len(line))


def verdict(ratio: float) -> str:
    if ratio >= TARGET_RATIO:
        return f"target >= {TARGET_RATIO}x met"
    if ratio >= FLOOR_RATIO:
        return f"floor >= {FLOOR_RATIO}x met, target {TARGET_RATIO}x missed"
    return f"MISSED (target {TARGET_RATIO}x, floor {FLOOR_RATIO}x)"


def imap_login(address: tuple[str, int], ca_file: str, user: str, token: str) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(
        address[0], address[1], ssl_context=ssl.create_default_context(cafile=ca_file)
    )
    client.authenticate("XOAUTH2", lambda _: f"user={user}\x01auth=Bearer {token}\x01\x01".encode())
    return client


def raw_loop(
    address: tuple[str, int], ca_file: str, user: str, token: str, batch: int
) -> dict[str, Any]:
    """The baseline: imaplib, AUTHENTICATE XOAUTH2, EXAMINE, UID SEARCH, then `UID FETCH` of
    `batch` messages per command (1: one command per message), keeping nothing."""
    started, cpu = time.perf_counter(), time.process_time()
    client = imap_login(address, ca_file, user, token)
    client.select("INBOX", readonly=True)
    _, data = client.uid("SEARCH", "ALL")
    uids = data[0].split()
    received = 0
    for start in range(0, len(uids), batch):
        chunk = b",".join(uids[start : start + batch]).decode()
        _, parts = client.uid("FETCH", chunk, "(BODY.PEEK[])")
        received += sum(1 for p in parts if isinstance(p, tuple))
    client.logout()
    return {
        "seconds": time.perf_counter() - started,
        "cpu": time.process_time() - cpu,
        "messages": received,
    }


def mailgate_fetch(
    facts: dict[str, Any], tokens: Any, folder: Path, server_fields: dict[str, Any]
) -> dict[str, Any]:
    home = folder / f"home-{uuid.uuid4().hex[:6]}"
    home.mkdir()
    env = {
        **os.environ,
        **{k: v for k, v in facts["env"].items() if not k.startswith("MAILGATE_SANDBOX_")},
        "MAILGATE_DATABASE_URL": f"sqlite:///{home}/bench.sqlite3",
        "MAILGATE_HOME": str(home),
        "SSL_CERT_FILE": facts["ca_file"],
        "PYTHONPATH": str(ROOT),
    }
    setup = {
        "server": server_fields,
        "refresh_token": tokens.refresh_token,
        "access_token": tokens.access_token,
        "expires_in": tokens.expires_in,
    }
    harness = [sys.executable, "-m", "tests.bench.harness"]
    subprocess.run(
        [*harness, "setup", json.dumps(setup)], env=env, cwd=ROOT, check=True, timeout=300
    )
    # The profiler wraps the 5,000 messages' fetches, not the big message's (same output file).
    wrap = (
        os.environ.get("BENCH_WRAP", "").split() if server_fields["name"] == "fetch-bench" else []
    )
    done = subprocess.run(
        [*wrap, *harness, "fetch", json.dumps({"server": server_fields["name"]})],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench: mailgate's fetch failed: {done.stderr[-2000:]}")
    # The last JSON line (a BENCH_WRAP profiler may print after it).
    last = [line for line in done.stdout.splitlines() if line.startswith("{")][-1]
    result: dict[str, Any] = json.loads(last)
    if result["error"]:
        raise SystemExit(f"bench: mailgate's fetch failed: {result['error']}")
    return result


def main() -> None:
    count = env_int("BENCH_FETCH_MESSAGES", 5000)
    body_bytes = env_int("BENCH_BODY_BYTES", 10 * 1024, minimum=65)
    repeat = env_int("BENCH_REPEAT", 5)
    big_bytes = env_int("BENCH_FETCH_BIG_BYTES", 20 * 1024 * 1024)
    batch = env_int("MAILGATE_INBOX_BATCH", 200)
    folder = Path(tempfile.mkdtemp(prefix="mailgate-fetch-bench-"))
    os.environ.setdefault("MAILGATE_HOME", str(folder / "bench-home"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailgate.settings")
    from mailgate.sandbox.server import Sandbox

    with Sandbox(folder / "sandbox", dovecot=True) as sandbox:
        facts = {"env": sandbox.env(), "ca_file": str(sandbox.ca_file)}
        os.environ.update(
            {
                k: v
                for k, v in facts["env"].items()
                if k.startswith("MAILGATE_") and not k.startswith("MAILGATE_SANDBOX_")
            }
        )
        os.environ["SSL_CERT_FILE"] = facts["ca_file"]
        import django

        django.setup()
        from tests.sandbox_fixtures import demo_tokens

        demo = sandbox.demo
        tokens = demo_tokens(
            sandbox.login_url, sandbox.ca_file, demo, state="fetch-bench", scope=IMAP_SCOPE
        )
        user = demo["user"]
        host, _, port = sandbox.address("imap").rpartition(":")
        for i in range(count):
            sandbox.dovecot.deliver(user, body_message(i, body_bytes, user))
        server = {
            "name": "fetch-bench",
            "auth_method": "outlook",
            "username": user,
            "client_id": demo["client_id"],
            "client_secret": demo["client_secret"],
            "incoming_protocol": "imap",
            "incoming_host": host,
            "incoming_port": int(port),
            "incoming_security": "ssl",
            "fetch_existing": True,
            "after_fetch": "keep",
        }
        raws: list[dict[str, Any]] = []
        singles: list[dict[str, Any]] = []
        runs: list[dict[str, Any]] = []
        # Untimed: Dovecot builds its index and cache on the first full read of the folder, which
        # would otherwise be charged to whichever loop runs first.
        raw_loop((host, int(port)), facts["ca_file"], user, tokens.access_token, batch)
        load_before = os.getloadavg()
        for round_ in range(1, repeat + 1):
            raws.append(
                raw_loop((host, int(port)), facts["ca_file"], user, tokens.access_token, batch)
            )
            singles.append(
                raw_loop((host, int(port)), facts["ca_file"], user, tokens.access_token, 1)
            )
            run = mailgate_fetch(facts, tokens, folder, server)
            if run["stored"] != count:
                raise SystemExit(f"bench: mailgate stored {run['stored']} of {count} messages")
            runs.append(run)
            print(
                f"[{round_}/{repeat}] raw imaplib batched {raws[-1]['seconds']:.2f} s, one UID "
                f"FETCH per message {singles[-1]['seconds']:.2f} s, mailgate "
                f"{run['seconds']:.2f} s ({count / run['seconds']:.0f} msg/s, CPU "
                f"{run['cpu'] * 1000 / count:.2f} ms/message, peak RSS "
                f"{run['peak_rss_kb'] / 1024:.0f} MB; then the hand-off's parse of the "
                f"{run['parsed']} messages {run['parse_seconds']:.2f} s)",
                flush=True,
            )
        raws.append(raw_loop((host, int(port)), facts["ca_file"], user, tokens.access_token, batch))
        load_after = os.getloadavg()
        raw_times = [r["seconds"] for r in raws]
        baseline, fastest = statistics.median(raw_times), min(raw_times)
        seconds = statistics.median(r["seconds"] for r in runs)
        single = statistics.median(r["seconds"] for r in singles)

        # One big message, fetched alone by a fresh process (streamed in pieces to a file).
        line = b"x" * 998 + b"\r\n"
        big = body_message(count, 0, user) + line * (big_bytes // len(line))
        server_big = {**server, "name": "fetch-bench-big", "incoming_folders": "Big"}
        big_run = fetch_big(facts, tokens, folder, server_big, user, big)
        report = {
            "messages": count,
            "body_bytes": body_bytes,
            "batch": batch,
            "raw_seconds": baseline,
            "raw_fastest_seconds": fastest,
            "raw_loops": raws,
            "mailgate_seconds": seconds,
            "mailgate_runs": runs,
            "ratio": baseline / seconds,
            "ratio_vs_fastest_raw": fastest / seconds,
            "raw_per_message_seconds": single,
            "raw_per_message_loops": singles,
            "ratio_vs_per_message_loop": single / seconds,
            "peak_rss_mb": max(r["peak_rss_kb"] for r in runs) / 1024,
            "parse_seconds": statistics.median(r["parse_seconds"] for r in runs),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "big_message_bytes": len(big),
            "big_message_seconds": big_run["seconds"],
            "big_message_peak_rss_mb": big_run["peak_rss_kb"] / 1024,
            "big_message_rss_before_mb": big_run["rss_before_kb"] / 1024,
        }
        print(
            f"fetch: {count} x {body_bytes // 1024} KB from Dovecot over XOAUTH2, mailgate "
            f"{seconds:.2f} s (median; fetched and committed: bytes in pack files, rows in "
            f"SQLite), peak RSS {report['peak_rss_mb']:.0f} MB; the hand-off then parses them "
            f"in {report['parse_seconds']:.2f} s (not in the ratio)\n"
            f"  vs raw imaplib, UID FETCH of {batch} messages per command, nothing kept: "
            f"{baseline:.2f} s = {report['ratio']:.2f}x ({report['ratio_vs_fastest_raw']:.2f}x its "
            f"fastest run): {verdict(report['ratio'])}\n"
            f"  vs raw imaplib, one UID FETCH per message, nothing kept: {single:.2f} s = "
            f"{report['ratio_vs_per_message_loop']:.2f}x: "
            f"{verdict(report['ratio_vs_per_message_loop'])}\n"
            f"  a {len(big) / 1e6:.0f} MB message: {big_run['seconds']:.2f} s, peak RSS "
            f"{report['big_message_peak_rss_mb']:.0f} MB "
            f"({report['big_message_rss_before_mb']:.0f} MB before the fetch)\n"
            f"  load average (1, 5, 15 min) {load_before[0]:.1f} {load_before[1]:.1f} "
            f"{load_before[2]:.1f} before the rounds, {load_after[0]:.1f} {load_after[1]:.1f} "
            f"{load_after[2]:.1f} after, on {os.cpu_count()} cores"
        )
        print(json.dumps(report, indent=2))


def fetch_big(
    facts: dict[str, Any], tokens: Any, folder: Path, server: dict[str, Any], user: str, big: bytes
) -> dict[str, Any]:
    """APPEND the big message to a folder of its own and fetch that folder in a fresh process."""
    address = (server["incoming_host"], server["incoming_port"])
    client = imap_login(address, facts["ca_file"], user, tokens.access_token)
    client.create("Big")
    client.append("Big", None, None, big)
    client.logout()
    result = mailgate_fetch(facts, tokens, folder, server)
    if result["stored"] != 1:
        raise SystemExit(f"bench: the big message was not stored ({result})")
    return result


if __name__ == "__main__":
    main()
