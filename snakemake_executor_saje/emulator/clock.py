"""The service's clock: the host's clock, or one that runs `scale` times faster.

Azure Batch takes minutes for what a local run wants in seconds (the 5-minute floor of the
autoscale interval, node boot, resize timeouts). The emulator keeps Azure's values and runs its
clock faster instead: with scale 60 a 5-minute interval passes in 5 real seconds, and every
timestamp the service hands out (creationTime, stateTransitionTime, autoScaleRun, Date, ...)
comes from the same fast clock, so the service's own records stay consistent with each other.

The rule (docs/emulator.md, "Time"): what the service does by itself runs on this clock;
what a task's process does runs in real time (the process is a real program), so
maxWallClockTime bounds the process's real run time, and authentication (the request-date
window, token lifetimes) compares against the client's real clock.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

from .timeutil import iso


class ServiceClock:
    """Service time = `origin` + (real time since creation) x `scale`."""

    def __init__(self, scale: float = 1.0, *, origin: datetime | None = None):
        if not scale > 0:
            raise ValueError(f"the time scale must be > 0, got {scale!r}")
        self.scale = float(scale)
        self._real0 = time.time()
        self._mono0 = time.monotonic()
        self.origin = origin.astimezone(timezone.utc) if origin else datetime.fromtimestamp(self._real0, timezone.utc)
        self._last = self.origin
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        """Service seconds since the clock started: deadlines and intervals of the service."""
        return (time.monotonic() - self._mono0) * self.scale

    def now(self) -> datetime:
        """The service's current time (never earlier than a time it gave before)."""
        current = self.origin + timedelta(seconds=self.monotonic())
        with self._lock:
            self._last = current = max(current, self._last)
        return current

    def not_before(self, moment: datetime) -> None:
        """Move the clock forward so that it reads at least `moment` (never backward)."""
        with self._lock:
            behind = moment - (self.origin + timedelta(seconds=self.monotonic()))
            if behind > timedelta(0):
                self.origin += behind
                self._last = max(self._last, moment)

    def iso_now(self) -> str:
        return iso(self.now())

    def real_seconds(self, service_seconds: float) -> float:
        """How long `service_seconds` of service time last on the host."""
        return service_seconds / self.scale

    def from_real(self, timestamp: float) -> datetime:
        """A host timestamp (a file's mtime) on the service's clock. Moments after the clock
        started are scaled like the clock; earlier ones keep their real distance to the origin."""
        elapsed = timestamp - self._real0
        return self.origin + timedelta(seconds=elapsed * self.scale if elapsed > 0 else elapsed)
