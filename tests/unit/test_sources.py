"""sources: what the source archive holds, and the hint when a node lacked a file it left out."""
from __future__ import annotations

import subprocess
import tarfile
from types import SimpleNamespace

import pytest
from snakemake_interface_common.exceptions import WorkflowError

from snakemake_executor_saje.sources import archive_members, missing_source_hint, write_source_archive

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


class _Workflow:
    """What write_source_archive asks of Snakemake's workflow: its DAG's sources."""

    def __init__(self, names):
        self.dag = SimpleNamespace(get_sources=lambda: set(names))


def test_the_archive_holds_what_snakemake_would_ship_and_says_what_it_left_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "workflow" / "scripts").mkdir(parents=True)
    (tmp_path / "workflow" / "Snakefile").write_text("rule all:\n")
    (tmp_path / "workflow" / "scripts" / "count.py").write_text("print(1)\n")
    (tmp_path / "données.csv").write_text("x\n")
    with open(tmp_path / "huge.tsv", "wb") as big:
        big.truncate(10_000_001)
    said = []

    write_source_archive(_Workflow(["workflow/Snakefile", "workflow/scripts", "données.csv", "huge.tsv",
                                    "../elsewhere.yaml"]), tmp_path / "sources.tar.xz", said.append)

    assert archive_members(tmp_path / "sources.tar.xz") == {"workflow/Snakefile", "workflow/scripts/count.py",
                                                             "données.csv"}
    assert len(said) == 2
    assert any("../elsewhere.yaml is outside the working directory" in s for s in said)
    assert any("huge.tsv (10,000,001 bytes)" in s and "make it an input" in s for s in said)


def test_the_archive_is_packed_with_a_small_xz_dictionary(tmp_path, monkeypatch):
    """xz's default level (Snakemake's) takes 23 MiB while it packs; a 1 MiB dictionary (level 1) takes 7."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Snakefile").write_text("rule all:\n")
    write_source_archive(_Workflow(["Snakefile"]), tmp_path / "sources.tar.xz", [].append)

    data = (tmp_path / "sources.tar.xz").read_bytes()
    # stream header (12 bytes), then the first block header: size, flags (no sizes, one filter),
    # LZMA2's filter id 0x21, its one property byte: the dictionary size code
    assert data[13] & 0xC3 == 0 and data[14:16] == b"\x21\x01"
    code = data[16]
    assert (2 | (code & 1)) << (code // 2 + 11) == 1 << 20


def test_names_git_quotes_are_refused_with_their_names_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    (tmp_path / 'say "hi".txt').write_text("hi\n")
    subprocess.run(["git", "add", "."], check=True)
    quoted = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True).stdout.strip()

    with pytest.raises(WorkflowError) as refused:
        write_source_archive(_Workflow([quoted]), tmp_path / "sources.tar.xz", [].append)

    assert "'say \"hi\".txt'" in str(refused.value) and "git mv" in str(refused.value)
