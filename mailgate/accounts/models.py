"""Counters shared by every process through the database: sign-in failures and request rates."""

from __future__ import annotations

from django.db import models


class Counter(models.Model):
    """A named count in a fixed time window, raised with one atomic UPDATE (accounts.throttle)."""

    name = models.CharField(max_length=120, unique=True)
    window_start = models.DateTimeField()
    count = models.PositiveIntegerField(default=0)
    blocked_until = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name}: {self.count} since {self.window_start:%Y-%m-%d %H:%M:%S}"
