"""Run tags (runs.py), grouping a run's leftovers, and the start-task verdict (poolwatch.py)."""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from snakemake_executor_saje import leftovers, runs
from snakemake_executor_saje.poolwatch import GIVE_UP_AFTER, PoolWatch, StartTaskFailure

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
EVERY = dt.timedelta(minutes=5)


def tag(**changes) -> runs.RunTag:
    base = runs.RunTag("20260102-030405-abc123", "hpc-login1", "ana", 4242, "/home/ana/wf, ü", T0, T0, EVERY)
    return runs.RunTag(**{**base.__dict__, **changes})


def test_a_tag_survives_batch_and_container_metadata():
    original = tag(heartbeat=T0 + dt.timedelta(minutes=7))
    assert runs.RunTag.from_metadata(original.metadata()) == original
    container = original.container_metadata()
    assert all(name.isidentifier() for name in container)  # blob metadata names are C# identifiers
    assert all(value.isascii() and " " not in value for value in container.values())  # header-safe
    assert runs.RunTag.from_metadata(container) == original


@pytest.mark.parametrize("items", [None, {}, {"saje-run": "x"}, {"owner": "tests"},
                                   {"saje-run": "x", "saje-started": "yesterday"}])
def test_untagged_metadata_is_no_run(items):
    assert runs.RunTag.from_metadata(items) is None


def test_a_run_of_this_machine_is_gone_when_its_process_is():
    here = tag(host="me")
    gone = runs.judge(here, this_host="me", process_started=lambda pid: None, now=T0)
    assert gone.gone and "pid 4242 on this machine" in gone.reason
    alive = runs.judge(here, this_host="me", process_started=lambda pid: T0 - dt.timedelta(seconds=3), now=T0)
    assert not alive.gone
    reused = runs.judge(here, this_host="me", process_started=lambda pid: T0 + dt.timedelta(hours=1), now=T0)
    assert reused.gone and "another process" in reused.reason


def test_a_run_of_another_machine_is_gone_after_three_beats_and_the_limit():
    other = tag(heartbeat=T0)
    judge = lambda after, limit=runs.DEFAULT_OLDER_THAN: runs.judge(  # noqa: E731
        other, this_host="me", now=T0 + after, older_than=limit, process_started=lambda pid: pytest.fail("not here"))
    assert not judge(dt.timedelta(minutes=14)).gone
    assert judge(dt.timedelta(minutes=16)).gone
    assert "no heartbeat from hpc-login1 for 16 min" in judge(dt.timedelta(minutes=16)).reason
    # a short --older-than never calls a run gone before three of its own heartbeat intervals
    assert not judge(dt.timedelta(minutes=14), dt.timedelta(minutes=1)).gone
    slow = tag(heartbeat_every=dt.timedelta(minutes=30))
    assert not runs.judge(slow, this_host="me", now=T0 + dt.timedelta(hours=1)).gone


def test_this_process_is_alive_by_its_start_time():
    started = runs.process_start_time(os.getpid())
    assert started is not None and started <= runs.utcnow()
    assert runs.process_start_time(2 ** 22 + 12345) is None


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("10", 600)])
def test_durations(text, seconds):
    assert runs.parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        runs.parse_duration(text)


def test_leftovers_are_grouped_by_run_with_the_latest_heartbeat():
    a_old, a_new = tag(run_id="a"), tag(run_id="a", heartbeat=T0 + dt.timedelta(minutes=9))
    b = tag(run_id="b", started=T0 - dt.timedelta(days=1))
    found = leftovers.group([
        (a_old, leftovers.Resource(leftovers.POOL, "saje-a-htc-1")),
        (None, leftovers.Resource(leftovers.POOL, "hand-made")),
        (a_new, leftovers.Resource(leftovers.JOB, "saje-a-htc-1-job", "active")),
        (b, leftovers.Resource(leftovers.CONTAINER, "saje-b")),
    ])
    assert [r.tag.run_id for r in found] == ["b", "a"]  # oldest first; the untagged pool is no run's
    run_a = found[1]
    assert run_a.tag.heartbeat == a_new.heartbeat
    assert [(r.kind, r.id) for r in run_a.resources] == [("job", "saje-a-htc-1-job"), ("pool", "saje-a-htc-1")]
    summary = run_a.summary(runs.Verdict(True, "why"))
    assert summary["pools"] == ["saje-a-htc-1"] and summary["gone"] and summary["reason"] == "why"


def failure(node: str, code: str = "FailureExitCode", exit_code: int | None = 1, stderr: Path | None = None):
    return StartTaskFailure(node, code, exit_code, stderr)


def test_a_start_task_failing_alike_on_fresh_nodes_is_given_up(tmp_path):
    stderr = tmp_path / "startup-stderr.txt"
    stderr.write_text("".join(f"line {i}\n" for i in range(40)) + "apt-get: cannot reach the mirror\n")
    watch = PoolWatch()
    for n in range(GIVE_UP_AFTER - 1):
        watch.record(failure(f"n{n}"))
    assert watch.give_up() is None and watch.troubled
    watch.record(failure("n9", stderr=stderr))
    message = watch.give_up_message("pool-1")
    assert message and "pool-1" in message and f"failed on {GIVE_UP_AFTER} nodes" in message
    assert "exit code 1" in message and "apt-get: cannot reach the mirror" in message and "line 0\n" not in message


def test_different_failures_or_one_good_node_keep_waiting():
    mixed = PoolWatch()
    for n, code in enumerate([1, 2, 1]):
        mixed.record(failure(f"n{n}", exit_code=code))
    assert mixed.give_up() is None
    lucky = PoolWatch(saw_usable=True)
    for n in range(5):
        lucky.record(failure(f"n{n}"))
    assert lucky.give_up() is None and not lucky.troubled


def test_a_fixed_pool_that_lost_a_node_is_to_be_resized_back():
    watch = PoolWatch(fixed_target=(2, 0))
    watch.record(failure("n0"))
    assert watch.restore_pending and watch.troubled
