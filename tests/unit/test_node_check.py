"""The node check's pure parts: how files and jobs are compared, what the node is told, what it says."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from snakemake_executor_saje import node_check
from snakemake_executor_saje.node_check import compare, decode, encode, failure_message, file_key, job_key


def job(rule, wildcards=None, input=(), output=()):
    return SimpleNamespace(rule=SimpleNamespace(name=rule), wildcards_dict=dict(wildcards or {}),
                           input=list(input), output=list(output), is_group=lambda: False)


def test_storage_files_compare_by_query_not_by_their_local_copy():
    f = SimpleNamespace(is_storage=True, storage_object=SimpleNamespace(query="az://c/p/data/A.fq"))
    assert file_key(f) == "az://c/p/data/A.fq"


def test_paths_under_the_working_directory_compare_relative():
    assert file_key("/home/me/wf/data/A.fq", "/home/me/wf") == "data/A.fq"
    assert file_key("./data//A.fq", "/x") == "data/A.fq"
    assert file_key("/ref/genome.fa", "/home/me/wf") == "/ref/genome.fa"
    assert file_key("/home/me/wf2/x", "/home/me/wf") == "/home/me/wf2/x"  # a sibling is not under it


def test_job_key_names_rule_and_sorted_wildcards():
    assert job_key("total", {}) == "total"
    assert job_key("count", {"s": "A", "lane": 1}) == "count (lane=1, s=A)"


def test_expected_jobs_of_a_group_job_lists_every_job_of_the_group():
    a = job("map", {"s": "A"}, ["data/A.fq"], ["bam/A.bam"])
    b = job("sort", {"s": "A"}, ["bam/A.bam"], ["sorted/A.bam"])
    group = SimpleNamespace(jobs=[a, b], is_group=lambda: True)
    assert node_check.expected_jobs(group) == {
        "map (s=A)": {"input": ["data/A.fq"], "output": ["bam/A.bam"]},
        "sort (s=A)": {"input": ["bam/A.bam"], "output": ["sorted/A.bam"]},
    }


def test_encode_decode_round_trip_inline_and_from_a_file(tmp_path):
    expected = {"total": {"input": [f"counts/{i}.txt" for i in range(2000)], "output": ["counts/total.txt"]}}
    text = encode(expected)
    assert decode(text) == expected
    assert len(text) < 10_000  # paths compress well: 2,000 inputs fit one environment variable easily
    (tmp_path / "expected.txt").write_text(text)
    assert decode(node_check.FILE_PREFIX + str(tmp_path / "expected.txt")) == expected


SAME = {"total": {"input": ["counts/A.txt", "counts/B.txt"], "output": ["counts/total.txt"]}}


def test_the_same_job_passes():
    assert compare(SAME, {"total": {**SAME["total"], "reason": "Forced execution"}}) == []


def test_an_empty_glob_on_the_node_is_named_with_its_missing_inputs():
    problems = compare(SAME, {"total": {"input": [], "output": ["counts/total.txt"]}})
    assert problems == ["job total: 2 input file(s) planned by the submitting Snakemake but not by the node's: "
                        "counts/A.txt, counts/B.txt"]
    message = failure_message(problems)
    assert message.startswith(node_check.HEADER)
    assert "glob_wildcards" in message and "sample sheet under version control" in message


def test_files_the_node_adds_and_long_lists_are_cut():
    node = {"total": {"input": [f"c/{i:02}.txt" for i in range(15)], "output": ["counts/total.txt", "x.txt"]}}
    problems = compare(SAME, node)
    assert "15 input file(s) the node's Snakemake adds: c/00.txt, c/01.txt" in problems[1]
    assert problems[1].endswith("c/09.txt (and 5 more)")
    assert problems[2] == "job total: 1 output file(s) the node's Snakemake adds: x.txt"


def test_an_upstream_job_the_node_would_run_is_refused_with_its_reason():
    node = {**SAME, "clustering (sample=a)": {"input": [], "output": ["clustering/a"],
                                              "reason": "Missing output files: clustering/a"}}
    problems = compare(SAME, node)
    assert problems == ["the node would also run job clustering (sample=a), which is not this task's job "
                        "(Missing output files: clustering/a)"]
    assert "never runs a job's upstream jobs on its node" in failure_message(problems)


def test_a_target_job_the_node_does_not_plan_is_a_difference():
    assert compare(SAME, {}) == ["the node would not run job total at all"]


def test_without_its_expectations_the_check_refuses_to_run(monkeypatch, capsys):
    monkeypatch.delenv(node_check.ENV, raising=False)
    with pytest.raises(SystemExit) as exit_:
        node_check.main(["--version"])
    assert exit_.value.code == node_check.EXIT_CODE
    assert node_check.ENV in capsys.readouterr().err


def test_azure_plugin_directories_exist_when_blobs_lie_under_them():
    from snakemake_storage_plugin_azure import StorageObject

    assert node_check.patch_azure_directory_exists()  # 0.4.4 is what the test extra installs
    obj = StorageObject.__new__(StorageObject)
    obj._is_dir = None  # what the plugin's __post_init__ sets; only an upload used to change it
    obj.container_client = lambda: SimpleNamespace(exists=lambda: True)
    obj.blob_client = lambda: SimpleNamespace(exists=lambda: False)
    obj.get_prefix_blobs = lambda: iter([SimpleNamespace(name="run/clustering/a/1.txt")])
    assert obj.exists() and obj.is_dir()
    obj.get_prefix_blobs = lambda: iter([])
    assert not obj.exists()


def test_the_node_check_needs_only_the_standard_library_and_snakemake():
    """It runs on nodes where SAJE is not installed: nothing of SAJE, nothing but what Snakemake brings."""
    import ast
    import sys
    from pathlib import Path

    tree = ast.parse(Path(node_check.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    allowed = {"snakemake", "snakemake_interface_storage_plugins", "snakemake_storage_plugin_azure", "__future__"}
    assert imported - set(sys.stdlib_module_names) - allowed == set()
