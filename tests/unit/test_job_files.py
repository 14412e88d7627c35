"""Which files of a job travel, when, and where they land; the node check in the job's command."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import pytest
from azure.storage.blob import BlobServiceClient
from snakemake_interface_common.exceptions import WorkflowError

from snakemake_executor_saje import node_check
from snakemake_executor_saje.executor import NODE_CHECK_PATH, _checked, _node_check_refusal, _output_paths
from snakemake_executor_saje.staging import Staging, node_path

KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
EXPIRY = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)  # the SAS tokens' expiry (signed offline)


@pytest.fixture
def staging():
    """Staging on an account nobody listens on: building upload rules signs SAS offline."""
    service = BlobServiceClient("http://127.0.0.1:9/devstoreaccount1", credential={"account_name": "devstoreaccount1",
                                                                                  "account_key": KEY})
    return Staging(service, "saje-run", KEY)


def _rules(rules):
    return [(r.file_pattern, r.destination.container.path, r.upload_options.upload_condition) for r in rules]


def test_outputs_go_up_on_success_only_and_directories_keep_their_dot_files(staging):
    rules = staging.output_files("map-1-a1", ["bam/A.bam", "clustering/a/"], EXPIRY)
    assert _rules(rules) == [
        ("bam/A.bam", "outputs/map-1-a1/bam/A.bam", "tasksuccess"),
        # Batch's '*' skips names starting with '.' (Snakemake's .snakemake_timestamp, an empty
        # checkpoint directory's only file) unless the pattern spells the dot.
        ("clustering/a/**/*", "outputs/map-1-a1/clustering/a", "tasksuccess"),
        ("clustering/a/**/.*", "outputs/map-1-a1/clustering/a", "tasksuccess"),
    ]
    assert all("sig=" in r.destination.container.container_url for r in rules)


def test_logs_and_benchmarks_can_go_up_whatever_the_exit_code(staging):
    rules = staging.output_files("map-1-a1", ["logs/map/A.log"], EXPIRY, condition="taskcompletion")
    assert _rules(rules) == [("logs/map/A.log", "outputs/map-1-a1/logs/map/A.log", "taskcompletion")]


def test_a_default_storage_copy_moves_from_the_local_prefix_to_the_nodes():
    local = ".snakemake/storage/azure/data/run/clustering/a"
    assert node_path(local, local_prefix=Path(".snakemake/storage"), node_prefix=Path(".snakemake/storage")) == local
    assert node_path(local, local_prefix=Path(".snakemake/storage"), node_prefix=Path("scratch/st")) == \
        "scratch/st/azure/data/run/clustering/a"


def test_group_jobs_bring_every_job_s_files_directories_marked():
    class F(str):
        is_directory = False

    class D(str):
        is_directory = True

    a = SimpleNamespace(output=[F("bam/A.bam")], log=[F("logs/A.log")], benchmark=F("bench/A.tsv"))
    b = SimpleNamespace(output=[D("clusters/A")], log=[F("logs/A.log")], benchmark=None)
    group = SimpleNamespace(jobs=[a, b], is_group=lambda: True)
    assert _output_paths(group) == ["bam/A.bam", "clusters/A/", "logs/A.log", "bench/A.tsv"]


def test_the_node_check_takes_the_place_of_python_m_snakemake():
    command = "python -m snakemake --snakefile Snakefile --target-jobs 'map:s=A' --mode remote"
    assert _checked(command, "python") == f"python {NODE_CHECK_PATH} --snakefile Snakefile --target-jobs 'map:s=A' --mode remote"
    pre = "python -m snakemake --version && "  # a user's --precommand comes first
    assert _checked(pre + command, "python") == pre + _checked(command, "python")
    with pytest.raises(WorkflowError, match="cannot find `python -m snakemake`"):
        _checked("snakemake --target-jobs x", "python")


def test_the_node_check_s_message_is_taken_from_the_end_of_stderr(tmp_path):
    stderr = tmp_path / "stderr.txt"
    stderr.write_text("Building DAG of jobs...\n" + node_check.failure_message(["the node would not run job total at all"]))
    refusal = _node_check_refusal(stderr)
    assert refusal.startswith("refused to run the job") and "- the node would not run job total at all" in refusal
    stderr.write_text("Building DAG of jobs...\nsomething else\n")
    assert _node_check_refusal(stderr) == ""


class _StorageFile(str):
    """A default-storage file as Snakemake's jobs hold it: its local copy's path, and its query."""

    is_storage = True
    is_directory = False
    retrieved = False

    @property
    def storage_object(self):
        return SimpleNamespace(query="az://data/run/" + self.split("/run/", 1)[1])

    async def retrieve_from_storage(self):
        Path(self).mkdir(parents=True)
        (Path(self) / "1.txt").write_text("1\n")


def _executor_with_default_storage(tmp_path, monkeypatch, needed):
    import asyncio

    from snakemake_executor_saje import checkpoints, executor

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(checkpoints, "needed_outputs", lambda job: needed)
    staged = []
    ex = executor.Executor.__new__(executor.Executor)
    ex.uses_default_storage = True
    ex.staging = SimpleNamespace(stage_files=lambda pairs, expiry: staged.extend(pairs) or ["resource files"])
    ex.workflow = SimpleNamespace(async_run=asyncio.run, storage_settings=SimpleNamespace(
        local_storage_prefix=Path(".snakemake/storage"), remote_job_local_storage_prefix=Path("node/storage")))
    return ex, staged


def test_checkpoint_outputs_with_a_local_copy_go_to_the_nodes_storage_prefix(tmp_path, monkeypatch):
    out = _StorageFile(".snakemake/storage/azure/data/run/clustering/a")
    ex, staged = _executor_with_default_storage(tmp_path, monkeypatch, [out])
    Path(out).mkdir(parents=True)
    assert ex._stage_for_node(SimpleNamespace(input=[]), EXPIRY) == (["resource files"], [])
    assert staged == [(out, "node/storage/azure/data/run/clustering/a")]


def test_a_checkpoint_output_evaluated_without_its_local_copy_is_fetched_and_the_job_refused(tmp_path, monkeypatch):
    from snakemake_executor_saje.checkpoints import UnseenOutputs

    out = _StorageFile(".snakemake/storage/azure/data/run/clustering/a")
    ex, staged = _executor_with_default_storage(tmp_path, monkeypatch, [out])
    with pytest.raises(UnseenOutputs, match=r"az://data/run/clustering/a.*run Snakemake again"):
        ex._stage_for_node(SimpleNamespace(input=[]), EXPIRY)
    assert (Path(out) / "1.txt").exists() and staged == []  # fetched: the next run evaluates with it
    # A checkpoint output that is also an input of the job was planned from its name alone.
    Path(out, "1.txt").unlink(), Path(out).rmdir()
    assert ex._stage_for_node(SimpleNamespace(input=[out]), EXPIRY) == (["resource files"], []) and staged == []


def test_expectations_too_large_for_one_variable_go_as_a_file(monkeypatch):
    from snakemake_executor_saje import executor

    uploads = {}
    ex = executor.Executor.__new__(executor.Executor)
    ex.staging = SimpleNamespace(upload_data=uploads.__setitem__,
                                 resource_file=lambda blob, path, expiry: (blob, path))
    job = SimpleNamespace(rule=SimpleNamespace(name="total"), wildcards_dict={}, input=["counts/A.txt"],
                          output=["counts/total.txt"], is_group=lambda: False)
    inline, files = ex._expectation(job, "total-1-a1", EXPIRY)
    assert node_check.decode(inline)["total"]["input"] == ["counts/A.txt"] and files == []
    monkeypatch.setattr(executor, "INLINE_EXPECT_LIMIT", 10)
    value, files = ex._expectation(job, "total-1-a1", EXPIRY)
    assert value == node_check.FILE_PREFIX + executor.NODE_EXPECT_PATH
    assert files == [("tasks/total-1-a1/expected.txt", executor.NODE_EXPECT_PATH)]
    assert node_check.decode(uploads["tasks/total-1-a1/expected.txt"].decode()) == node_check.decode(inline)


def test_ready_jobs_are_mapped_and_submitted_a_chunk_at_a_time():
    """10,000 ready jobs' task requests (about 7 KB of SDK models each) are never all held at once."""
    from snakemake_executor_saje import executor

    chunks = []
    ex = executor.Executor.__new__(executor.Executor)
    ex._run_chunk = lambda jobs: chunks.append(list(jobs))
    jobs = list(range(2 * executor.SUBMIT_CHUNK + 1))
    ex.run_jobs(jobs)
    assert [len(c) for c in chunks] == [executor.SUBMIT_CHUNK, executor.SUBMIT_CHUNK, 1]
    assert [j for c in chunks for j in c] == jobs  # every job once, in Snakemake's order
