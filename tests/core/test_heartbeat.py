"""Worker heartbeats: written by the worker step at most every 10 s, pruned after a day."""

from __future__ import annotations

import datetime as dt
import os

import pytest
import time_machine

from mailgate.core import heartbeat
from mailgate.core.heartbeat import Heartbeat, heartbeat_step, latest_heartbeat, live_workers
from mailgate.core.models import WorkerHeartbeat
from mailgate.worker import WORKER_STEPS, Worker

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def test_it_records_host_pid_and_times_on_the_first_beat() -> None:
    beat = Heartbeat()
    assert beat.beat(now=T0) is True
    row = WorkerHeartbeat.objects.get()
    # host:pid:random, so that a restarted process with the same pid is another worker.
    assert row.holder.startswith(f"{row.hostname}:{os.getpid()}:")
    assert len(row.holder.split(":")[-1]) == 8
    assert row.pid == os.getpid()
    assert row.started_at == row.last_seen_at == T0


def test_it_writes_at_most_every_ten_seconds_and_keeps_the_start_time() -> None:
    beat = Heartbeat()
    assert beat.beat(now=T0)
    assert not beat.beat(now=T0 + dt.timedelta(seconds=9))
    assert WorkerHeartbeat.objects.get().last_seen_at == T0
    assert beat.beat(now=T0 + dt.timedelta(seconds=10))
    row = WorkerHeartbeat.objects.get()
    assert row.last_seen_at == T0 + dt.timedelta(seconds=10)
    assert row.started_at == T0


def test_a_clock_set_back_does_not_silence_the_heartbeat() -> None:
    beat = Heartbeat()
    beat.beat(now=T0)
    assert beat.beat(now=T0 - dt.timedelta(minutes=3))
    assert WorkerHeartbeat.objects.get().last_seen_at == T0 - dt.timedelta(minutes=3)


def test_it_prunes_workers_gone_for_more_than_a_day() -> None:
    WorkerHeartbeat.objects.create(
        holder="old:1", hostname="old", pid=1, started_at=T0, last_seen_at=T0
    )
    WorkerHeartbeat.objects.create(
        holder="recent:2",
        hostname="recent",
        pid=2,
        started_at=T0,
        last_seen_at=T0 + dt.timedelta(hours=2),
    )
    Heartbeat(holder="me:3").beat(now=T0 + dt.timedelta(days=1, minutes=1))
    assert set(WorkerHeartbeat.objects.values_list("holder", flat=True)) == {"recent:2", "me:3"}


def test_live_workers_are_those_seen_within_five_minutes() -> None:
    Heartbeat(holder="a").beat(now=T0)
    Heartbeat(holder="b").beat(now=T0 + dt.timedelta(minutes=4))
    now = T0 + dt.timedelta(minutes=6)
    assert [w.holder for w in live_workers(now)] == ["b"]
    latest = latest_heartbeat()
    assert latest is not None and latest.holder == "b"


@pytest.mark.django_db(transaction=True)  # the loop closes connections between steps
def test_the_worker_loop_beats_through_its_step(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WORKER_STEPS[0] == "mailgate.core.heartbeat.heartbeat_step"
    monkeypatch.setattr(heartbeat, "_heartbeat", None)
    monkeypatch.setattr("mailgate.worker.WORKER_STEPS", ["mailgate.core.heartbeat.heartbeat_step"])
    with time_machine.travel(T0, tick=False):
        Worker().run(max_cycles=1)
    row = WorkerHeartbeat.objects.get()
    assert row.last_seen_at == T0
    assert row.pid == os.getpid()


def test_the_heartbeat_step_reports_no_work_so_the_worker_may_sleep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(heartbeat, "_heartbeat", None)
    assert heartbeat_step() is False
    assert WorkerHeartbeat.objects.count() == 1
