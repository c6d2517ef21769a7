"""Process-level state shared through the database: which workers are alive."""

from __future__ import annotations

from django.db import models


class WorkerHeartbeat(models.Model):
    """One running worker process (`mailgate worker` or the worker thread of `mailgate run`)."""

    holder = models.CharField(max_length=200, unique=True)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-last_seen_at"]

    def __str__(self) -> str:
        return f"worker {self.holder} last seen {self.last_seen_at:%Y-%m-%d %H:%M:%S}"
