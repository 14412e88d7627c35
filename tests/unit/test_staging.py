"""Staging's pure parts: output-file patterns for any file name, and the SAS lifetime rule."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from snakemake_executor_saje.emulator import blobio
from snakemake_executor_saje.staging import (
    NO_LIMIT_LIFETIME,
    escape_glob,
    output_blob,
    output_rule,
    sas_lifetime,
)

TASK = "work-3-a1"


@pytest.mark.parametrize("path, pattern, destination", [
    ("results/a.txt", "results/a.txt", "outputs/work-3-a1/results/a.txt"),
    ("results/br[1].txt", "results/br[[]1].txt", "outputs/work-3-a1/results"),
    ("qm?x.txt", "qm[?]x.txt", "outputs/work-3-a1"),
    ("st*r/x.txt", "st[*]r/x.txt", "outputs/work-3-a1"),
    ("price$1.txt", "price[$]1.txt", "outputs/work-3-a1"),
    ("results/dir/", "results/dir/**/*", "outputs/work-3-a1/results/dir"),
    ("out[1]/", "out[[]1]/**/*", "outputs/work-3-a1"),
])
def test_output_rules_escape_glob_characters(path, pattern, destination):
    assert output_rule(TASK, path) == (pattern, destination)


@pytest.mark.parametrize("name", ["br[1].txt", "qm?x.txt", "a*b", "[!x]", "x]y", "cost$HOME", "plain.txt",
                                  "sub/odd[*]/f?.txt", "sub/dir[2]/"])
def test_each_output_reaches_its_own_blob_through_the_emulators_matcher(tmp_path: Path, name: str):
    """What Batch's agent does with the rule (as the emulator reads Azure's documented semantics:
    a pattern with a wildcard uploads each match under the destination, by its path below the
    pattern's plain leading directories) lands on output_blob(task, path): where SAJE fetches it."""
    wd = tmp_path / "wd"
    clean = name.rstrip("/")
    target = wd / clean / "inner.txt" if name.endswith("/") else wd / clean
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("x")
    (wd / "decoy[1]x.txt").write_text("no")  # what an unescaped '[...]' or '?' might match instead
    pattern, destination = output_rule(TASK, name)
    found = blobio.match_files(pattern, wd, tmp_path)
    assert [p for p, _ in found] == [target]
    relative = found[0][1]
    has_wildcard = pattern != clean
    blob = f"{destination}/{relative}" if has_wildcard else destination
    expected = f"{output_blob(TASK, clean)}/inner.txt" if name.endswith("/") else output_blob(TASK, clean)
    assert blob == expected


def test_escape_leaves_plain_names_alone():
    assert escape_glob("results/sample_1.bam") == "results/sample_1.bam"
    assert escape_glob("a]b") == "a]b"  # ']' alone is no wildcard


HOUR = dt.timedelta(hours=1)


@pytest.mark.parametrize("wall, retries, allowance, lifetime", [
    (2 * HOUR, 0, 24 * HOUR, 26 * HOUR),  # queue/upload allowance plus one run
    (2 * HOUR, 2, 24 * HOUR, 30 * HOUR),  # Batch may run it three times
    (None, 0, 24 * HOUR, NO_LIMIT_LIFETIME),  # no wall-clock limit: may run for any time
    (2 * HOUR, -1, 24 * HOUR, NO_LIMIT_LIFETIME),  # unlimited retries, likewise
    (dt.timedelta(seconds=20), 0, dt.timedelta(seconds=3), dt.timedelta(seconds=23)),
])
def test_sas_lifetime_covers_queue_every_attempt_and_upload(wall, retries, allowance, lifetime):
    assert sas_lifetime(wall, retries, allowance) == lifetime
