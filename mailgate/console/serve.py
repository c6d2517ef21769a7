"""Serving the console with a production WSGI server (waitress), optionally beside a worker thread."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from types import FrameType

from django.conf import settings
from django.core.management import call_command
from waitress.server import create_server

from mailgate.wsgi import application

log = logging.getLogger("mailgate.web")


def migrate() -> None:
    call_command("migrate", interactive=False, verbosity=0)
    call_command("createcachetable", verbosity=0)


def serve(host: str, port: int, *, with_worker: bool) -> None:
    """Serve until SIGTERM/SIGINT; with_worker runs the worker loop in a thread of this process."""
    operations = settings.OPERATIONS
    server = create_server(
        application,
        host=host,
        port=port,
        threads=operations.web_threads,
        connection_limit=operations.web_connection_limit,
        ident="mailgate",
    )
    worker = None
    thread = None
    if with_worker:
        from mailgate.worker import Worker

        worker = Worker()
        thread = threading.Thread(target=worker.run, name="mailgate-worker", daemon=True)
        thread.start()

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("stopping")
        if worker is not None:
            worker.stop()
        server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"mailgate: serving on http://{host}:{port}/", flush=True)
    with contextlib.suppress(OSError, ValueError):  # the listening socket was closed by stop()
        server.run()
    if thread is not None:
        thread.join(timeout=30)
