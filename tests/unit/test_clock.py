"""The emulator's service clock: real time, or N times faster, never backwards."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from snakemake_executor_saje.emulator.clock import ServiceClock


def test_scale_one_is_the_hosts_clock():
    clock = ServiceClock()
    assert abs(clock.now() - datetime.now(timezone.utc)) < timedelta(seconds=1)
    assert clock.real_seconds(300) == 300


def test_a_scaled_clock_runs_n_times_faster_for_timestamps_and_intervals():
    clock = ServiceClock(600)
    start, mono = clock.now(), clock.monotonic()
    time.sleep(0.05)
    elapsed_service = (clock.now() - start).total_seconds()
    assert elapsed_service >= 0.05 * 600  # at least 30 service seconds for 50 real milliseconds
    assert clock.monotonic() - mono >= 0.05 * 600
    assert clock.real_seconds(300) == 0.5  # Azure's 5-minute autoscale interval lasts 0.5 s here


def test_origin_sets_the_reading_and_the_clock_never_goes_back():
    behind = datetime(2020, 1, 1, tzinfo=timezone.utc)
    clock = ServiceClock(1, origin=behind)
    assert behind <= clock.now() < behind + timedelta(seconds=5)
    later = datetime(2021, 6, 1, tzinfo=timezone.utc)
    clock.not_before(later)
    assert clock.now() >= later
    clock.not_before(behind)  # an earlier moment never moves it back
    assert clock.now() >= later
    readings = [clock.now() for _ in range(1000)]
    assert readings == sorted(readings)


def test_host_timestamps_map_onto_the_service_clock():
    clock = ServiceClock(60)
    real_start = time.time()
    assert abs(clock.from_real(real_start) - clock.origin) < timedelta(seconds=60)
    gap = clock.from_real(real_start + 10) - clock.from_real(real_start)
    assert abs(gap - timedelta(seconds=600)) < timedelta(milliseconds=1)
    assert timedelta(seconds=99) < clock.origin - clock.from_real(real_start - 100) < timedelta(seconds=101)  # unscaled


def test_the_scale_must_be_positive():
    with pytest.raises(ValueError, match="> 0"):
        ServiceClock(0)
