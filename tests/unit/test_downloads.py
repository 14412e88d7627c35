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
