"""Injected faults, off by default: throttling, slow replies, dropped connections, lost replies,
start-task failures.

Clients' resilience (retry policies, idempotent bulk submission) is tested by turning these on,
from Python (`emulator.faults.update(...)`) or over HTTP (`POST /_saje/faults` with the same fields).
Node preemption is an action, not a rate: `POST /_saje/pools/{pool}/nodes/{node}/preempt`.
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class FaultPlan:
    throttle_count: int = 0  # the next N Batch requests get throttle_status
    throttle_rate: float = 0.0  # or this share of requests, at random
    throttle_status: int = 429  # 429 TooManyRequests or 503 ServerBusy
    retry_after_seconds: int = 1
    slow_seconds: float = 0.0  # added latency per request
    drop_count: int = 0  # the next N requests: connection closed without a reply, not applied
    drop_rate: float = 0.0
    lose_reply_count: int = 0  # the next N requests of kind `lose_reply_to`: applied, then no reply
    lose_reply_to: str = ""  # a request kind as in GET /_saje/requests, e.g. "POST /pools"; "" = any
    start_task_failures: int = 0  # the next N start tasks fail (exit 1)
    upload_delay_seconds: float = 0.0  # slow storage: output files of a task go up this much later
    seed: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _random: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def update(self, **changes: Any) -> None:
        names = {f.name for f in fields(self) if not f.name.startswith("_")}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown fault settings {sorted(unknown)}; known: {sorted(names)}")
        with self._lock:
            for key, value in changes.items():
                setattr(self, key, value)
            if "seed" in changes:
                self._random.seed(changes["seed"])

    def reset(self) -> None:
        self.update(**{f.name: f.default for f in fields(self) if not f.name.startswith("_")})

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every field, the lock too, which cannot be copied.
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def _take(self, count_name: str, rate: float) -> bool:
        with self._lock:
            if getattr(self, count_name) > 0:
                setattr(self, count_name, getattr(self, count_name) - 1)
                return True
            return rate > 0 and self._random.random() < rate

    def take_throttle(self) -> bool:
        return self._take("throttle_count", self.throttle_rate)

    def take_drop(self) -> bool:
        return self._take("drop_count", self.drop_rate)

    def take_lost_reply(self, kind: str) -> bool:
        """True when the reply to this request (already applied) is to be lost: the client sees a
        dropped connection after the service did the work, as when a reply is lost on the way."""
        if self.lose_reply_to and self.lose_reply_to != kind:
            return False
        return self._take("lose_reply_count", 0.0)

    def take_start_task_failure(self) -> bool:
        return self._take("start_task_failures", 0.0)

