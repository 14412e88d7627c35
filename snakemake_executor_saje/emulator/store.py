"""SQLite persistence for the emulator's state: each resource is one JSON row.

The service keeps its working state in memory for speed and writes every change
through here, so a restarted emulator finds its pools, jobs and tasks again. The file holds
SAS URLs and is made 0600 before SQLite opens it (its -wal and -shm files take its mode).
"""
from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

from .datadir import touch_private


class Store:
    def __init__(self, path: Path | None):
        self._lock = threading.Lock()
        if path is not None:
            touch_private(path)
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS resources (kind TEXT, key TEXT, seq INTEGER, body TEXT, PRIMARY KEY (kind, key))"
        )
        self._seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM resources").fetchone()[0]

    def put(self, kind: str, key: str, body: dict[str, Any]) -> None:
        self.put_many(kind, [(key, body)])

    def put_many(self, kind: str, rows: Iterable[tuple[str, dict[str, Any]]]) -> None:
        with self._lock:
            params = []
            for key, body in rows:
                self._seq += 1
                params.append((kind, key, self._seq, json.dumps(body)))
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO resources VALUES (?,?,?,?) ON CONFLICT(kind, key) DO UPDATE SET body=excluded.body",
                params,
            )
            self._db.execute("COMMIT")

    def delete(self, kind: str, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM resources WHERE kind=? AND key=?", (kind, key))

    def delete_prefix(self, kind: str, prefix: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM resources WHERE kind=? AND substr(key, 1, ?)=?", (kind, len(prefix), prefix))

    def load(self, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute("SELECT key, body FROM resources WHERE kind=? ORDER BY seq", (kind,)).fetchall()
        for key, body in rows:
            yield key, json.loads(body)

    def close(self) -> None:
        with self._lock:
            self._db.close()
