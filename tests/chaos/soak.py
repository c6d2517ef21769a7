"""The soak: many messages through one `mailgate worker`, a fault every few thousand, its RSS sampled.

The faults (the SMTP server away for 2 s, a 421, a connection dropped after the data) hit the same
worker process, so its memory is one series: after warm-up (the first tenth of the messages) it
must stay within 10 % of the warm-up level.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.lab import in_flight, lab, message_ids, sink_server, tally, wait_for
from tests.smtpsink import SMTPSink

FAULT_EVERY = 3000
ENQUEUE_CHUNK = 2000


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class SoakReport:
    messages: int
    lost: int
    duplicated: int
    faults: int
    seconds: float
    warm_rss_kib: int
    max_rss_kib: int
    samples: list[tuple[int, int]] = field(default_factory=list)  # (delivered, RSS KiB)
    # Duplicates allowed: one per fault and connection it cut with a message in flight (an outage
    # cuts every connection the worker sends over, a 421 or a drop one).
    allowed: int = 0

    @property
    def growth(self) -> float:
        return (
            (self.max_rss_kib - self.warm_rss_kib) / self.warm_rss_kib if self.warm_rss_kib else 0
        )

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated <= self.allowed and self.growth <= 0.10

    def table(self) -> str:
        rate = self.messages / self.seconds if self.seconds else 0
        return "\n".join(
            [
                "| soak | messages | faults | lost | duplicated | msg/s | RSS after warm-up | "
                "RSS max | growth | ok |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
                f"| one worker, SQLite | {self.messages} | {self.faults} | {self.lost} | "
                f"{self.duplicated} | {rate:.0f} | {self.warm_rss_kib / 1024:.1f} MiB | "
                f"{self.max_rss_kib / 1024:.1f} MiB | {self.growth:+.1%} | "
                f"{'yes' if self.ok else 'NO'} |",
            ]
        )


def soak(total: int, home: Path, kind: str = "sqlite") -> SoakReport:
    counter = itertools.count(1)
    faults: list[str] = []

    def reply(envelope: object) -> str | None:
        n = next(counter)
        if n % FAULT_EVERY == FAULT_EVERY // 3:
            faults.append("421")
            return "421 mx.example Service not available, closing transmission channel"
        return None

    def drop() -> bool:
        if len(sink.received) % FAULT_EVERY == (2 * FAULT_EVERY) // 3:
            faults.append("drop")
            return True
        return False

    with lab(kind, home) as deployed, SMTPSink(data_reply=reply, drop_after_data=drop) as sink:
        deployed.harness("setup", {"server": sink_server(sink), "messages": 0})
        started = time.monotonic()
        worker = deployed.worker()
        samples: list[tuple[int, int]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(1.0):
                if worker.poll() is None:
                    samples.append((len(sink.received), rss_kib(worker.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        queued = 0
        outages = 0
        while queued < total:  # the application keeps queueing while the worker drains
            chunk = min(ENQUEUE_CHUNK, total - queued)
            deployed.python(
                "from mailgate.outbox import enqueue\n"
                "from mailgate.servers.models import MailServer\n"
                "s = MailServer.objects.get(name='sink')\n"
                f"for i in range({queued}, {queued + chunk}):\n"
                "    enqueue(from_address='app@example.com', to=[f'u{i}@example.org'],"
                " subject=f'soak {i}', text='x' * 2000, server=s)\n",
                timeout=1800,
            )
            queued += chunk
            if queued // FAULT_EVERY > outages:  # the SMTP server away for 2 s
                outages += 1
                sink.stop()
                time.sleep(2)
                sink.start()
                faults.append("outage")
        wait_for(lambda: deployed.all_sent(total), 3600, f"all {total} sent")
        seconds = time.monotonic() - started
        done.set()
        sampler.join(5)
        lost, duplicated = tally(deployed.queued_ids(), message_ids(sink))
    warm = [rss for delivered, rss in samples if delivered >= total // 10]
    return SoakReport(
        total,
        lost,
        duplicated,
        len(faults),
        seconds,
        warm[0] if warm else 0,
        max(warm) if warm else 0,
        samples,
        allowed=sum(in_flight(kind) if fault == "outage" else 1 for fault in faults),
    )
