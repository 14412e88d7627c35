"""Outputs of succeeded tasks come down in the background, so no download ever holds a poll.

A status poll that sees a task succeed starts the download of its outputs here and goes on; the
job stays active for Snakemake until its outputs are in place, and the poll that finds them so
reports it. A download stuck on a slow link or a connection reset (which the blob client retries
after a short backoff, see `staging.client_options`) delays the report of its own job only.

Thousands of downloads can wait at once (the last minutes of a 10,000-job run, while the
Snakemake process is busy finishing jobs): each waits as one tuple in a queue, not as a Future
with its own condition, lock and work item (1.5 KB each), and a few worker threads take them in
turn.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Iterator


def _guarded(fetch: Callable[[], list[str]]) -> list[str]:
    """An exception counts as one missing output: the job fails with the reason; the run goes on."""
    try:
        return fetch()
    except Exception as exc:  # noqa: BLE001
        return [f"(download failed: {exc})"]


class Downloads:
    """Downloads in flight, keyed by task id; `fetch` returns the outputs that never arrived."""

    def __init__(self, workers: int):
        self._workers = workers
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)  # work for the threads
        self._arrived = threading.Condition(self._lock)  # results for `finished`
        self._waiting: deque[tuple[str, Callable[[], list[str]]]] = deque()
        self._payloads: dict[str, Any] = {}  # every download not yet handed back by `finished`
        self._results: deque[tuple[str, list[str]]] = deque()
        self._closed = False

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._payloads

    def __len__(self) -> int:
        with self._lock:
            return len(self._payloads)

    def start(self, key: str, fetch: Callable[[], list[str]], payload: Any) -> None:
        """Fetch in the background (once per key)."""
        with self._lock:
            if key in self._payloads or self._closed:
                return
            self._payloads[key] = payload
            self._waiting.append((key, fetch))
            if len(self._threads) < self._workers:
                thread = threading.Thread(target=self._work, name=f"saje-download-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._queued.notify()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._queued.wait()
                if self._closed:
                    return
                key, fetch = self._waiting.popleft()
            missing = _guarded(fetch)
            with self._lock:
                if self._closed:
                    return
                self._results.append((key, missing))
                self._arrived.notify_all()

    def finished(self, wait_seconds: float) -> Iterator[tuple[Any, list[str]]]:
        """(payload, missing outputs) of each finished download, as each finishes, waiting at most
        `wait_seconds` in all for those still in flight (most arrive within a poll's moment)."""
        deadline = time.monotonic() + wait_seconds
        while True:
            with self._lock:
                done = [(self._payloads.pop(key), missing) for key, missing in self._results]
                self._results.clear()
                pending = bool(self._payloads)
            yield from done
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                return
            if not done:
                with self._lock:
                    if not self._results:
                        self._arrived.wait(left)

    def close(self) -> None:
        """Stop: queued downloads are dropped, those running end on their own."""
        with self._lock:
            self._closed = True
            self._waiting.clear()
            self._payloads.clear()
            self._results.clear()
            self._queued.notify_all()
