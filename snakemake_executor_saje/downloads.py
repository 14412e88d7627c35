"""Outputs of succeeded tasks come down in the background, so no download ever holds a poll.

A status poll that sees a task succeed starts the download of its outputs here and goes on; the
job stays active for Snakemake until its outputs are in place, and the poll that finds them so
reports it. A download stuck on a slow link or a connection reset (which the blob client retries
after a short backoff, see `staging.client_options`) delays the report of its own job only.
"""
from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterator


@dataclass
class _Download:
    payload: Any
    future: Future


class Downloads:
    """Downloads in flight, keyed by task id; `fetch` returns the outputs that never arrived."""

    def __init__(self, workers: int):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="saje-download")
        self._items: dict[str, _Download] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def start(self, key: str, fetch: Callable[[], list[str]], payload: Any) -> None:
        """Fetch in the background (once per key); an exception counts as one missing output."""
        if key in self._items:
            return

        def guarded() -> list[str]:
            try:
                return fetch()
            except Exception as exc:  # noqa: BLE001 - the job fails with the reason; the run goes on
                return [f"(download failed: {exc})"]

        self._items[key] = _Download(payload, self._pool.submit(guarded))

    def finished(self, wait_seconds: float) -> Iterator[tuple[Any, list[str]]]:
        """(payload, missing outputs) of each finished download, as each finishes, waiting at most
        `wait_seconds` in all for those still in flight (most arrive within a poll's moment)."""
        deadline = time.monotonic() + wait_seconds
        while self._items:
            done = [key for key, item in self._items.items() if item.future.done()]
            for key in done:
                item = self._items.pop(key)
                yield item.payload, item.future.result()
            left = deadline - time.monotonic()
            if not self._items or left <= 0:
                return
            if not done:
                wait([item.future for item in self._items.values()], timeout=left, return_when=FIRST_COMPLETED)

    def close(self) -> None:
        """Stop: queued downloads are dropped, those running end on their own."""
        self._items.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
