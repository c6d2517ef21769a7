"""The sandbox in a process of its own for the benchmark: limits lifted, its facts written to a JSON file."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

from mailgate.sandbox.server import Sandbox


def main() -> None:
    state, out = Path(sys.argv[1]), Path(sys.argv[2])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Sandbox(state, dovecot=False) as sandbox:
        demo = sandbox.demo
        sandbox.control.call("set_limits", user=demo["user"], lift=True)
        facts = {
            "env": sandbox.env(),
            "demo": demo,
            "smtp": sandbox.address("smtp"),
            "login_url": sandbox.login_url,
            "control_url": sandbox.http_url,
            "ca_file": str(sandbox.ca_file),
        }
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(facts))
        tmp.rename(out)
        stop.wait(3600)


if __name__ == "__main__":
    main()
