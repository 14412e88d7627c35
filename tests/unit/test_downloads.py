"""downloads.py: a poll reports each finished download and waits a bounded time for the others."""
from __future__ import annotations

import threading

from snakemake_executor_saje.downloads import Downloads


def test_a_stuck_download_is_left_in_flight_while_the_others_are_reported():
    downloads = Downloads(4)
    stuck = threading.Event()
    try:
        downloads.start("slow", lambda: stuck.wait(60) and [], "slow job")
        downloads.start("fast", lambda: [], "fast job")
        downloads.start("fast", lambda: ["never started twice"], "fast job")
        downloads.start("broken", lambda: 1 / 0, "broken job")
        done = dict(downloads.finished(0.5))
        assert done == {"fast job": [], "broken job": ["(download failed: division by zero)"]}
        assert "slow" in downloads and len(downloads) == 1
        stuck.set()
        assert dict(downloads.finished(30)) == {"slow job": []}
        assert len(downloads) == 0
    finally:
        stuck.set()
        downloads.close()


def test_many_downloads_share_a_few_threads_and_all_arrive():
    downloads, lock, running = Downloads(3), threading.Lock(), [0, 0]  # now, most at once

    def fetch(i):
        def run():
            with lock:
                running[0] += 1
                running[1] = max(running[1], running[0])
            threading.Event().wait(0.002)
            with lock:
                running[0] -= 1
            return [] if i % 7 else [f"out/{i}.txt"]
        return run

    try:
        for i in range(200):
            downloads.start(f"t{i}", fetch(i), i)
        got = {}
        for _ in range(100):
            got.update(downloads.finished(0.2))
            if len(got) == 200:
                break
        assert got == {i: ([] if i % 7 else [f"out/{i}.txt"]) for i in range(200)}
        assert running[1] <= 3 and len(downloads) == 0
        assert len(downloads._threads) == 3  # made as needed, never more than asked
    finally:
        downloads.close()


def test_close_drops_what_waits_and_what_is_running_never_surfaces():
    downloads, release = Downloads(1), threading.Event()
    started = threading.Event()
    downloads.start("running", lambda: (started.set(), release.wait(30), [])[2], "running job")
    downloads.start("queued", lambda: ["never run"], "queued job")
    assert started.wait(10)
    downloads.close()
    release.set()
    downloads.start("late", lambda: [], "late job")  # refused: closed
    assert list(downloads.finished(0.2)) == [] and len(downloads) == 0
