"""sources: what the source archive holds, and the hint when a node lacked a file it left out."""
from __future__ import annotations

import tarfile

from snakemake_executor_saje.sources import archive_members, missing_source_hint

PARSE_FAILURE = """FileNotFoundError in file "/node/wd/workflow/Snakefile", line 14:
[Errno 2] No such file or directory: 'config/samples.tsv'
  File "/node/wd/workflow/Snakefile", line 18, in <module>
"""


def test_archive_members_are_the_files_with_their_relative_paths(tmp_path):
    (tmp_path / "workflow").mkdir()
    (tmp_path / "workflow" / "Snakefile").write_text("rule all:\n")
    archive = tmp_path / "sources.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(tmp_path / "workflow" / "Snakefile", arcname="./workflow/Snakefile")
        tar.add(tmp_path / "workflow", arcname="workflow", recursive=False)

    assert archive_members(archive) == {"workflow/Snakefile"}


def test_a_file_here_that_the_archive_left_out_is_named_with_the_fix(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "samples.tsv").write_text("sample\nS1\n")

    hint = missing_source_hint(PARSE_FAILURE, {"workflow/Snakefile", "config/config.yaml"}, tmp_path)

    assert hint.startswith("config/samples.tsv exists here but not on the node")
    assert "the files git tracks" in hint and "git add config/samples.tsv" in hint


def test_a_file_over_snakemakes_10_mb_source_limit_is_said_so(tmp_path):
    (tmp_path / "config").mkdir()
    with open(tmp_path / "config" / "samples.tsv", "wb") as big:
        big.truncate(10_000_001)

    hint = missing_source_hint(PARSE_FAILURE, set(), tmp_path)

    assert "larger than the 10 MB" in hint and "make it an input" in hint


def test_no_hint_when_the_file_was_shipped_is_missing_here_too_or_is_absolute(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "samples.tsv").write_text("sample\n")

    assert missing_source_hint(PARSE_FAILURE, {"config/samples.tsv"}, tmp_path) == ""
    assert missing_source_hint(PARSE_FAILURE, set(), tmp_path / "elsewhere") == ""
    absolute = f"[Errno 2] No such file or directory: '{tmp_path / 'config' / 'samples.tsv'}'"
    assert missing_source_hint(absolute, set(), tmp_path) == ""
    assert missing_source_hint("exit status 1", set(), tmp_path) == ""
