"""The bad day, client side (issue 10): `snakemake --executor saje` against an emulator that loses
replies, goes away, throttles, forgets the run's job, or no longer accepts the key.

Every case ends with the outputs a clean run gives, or fails within a bounded time with one message
naming the cause and what to do. Afterwards (the `chaos` fixture) no pool, job or staging
container of the run remains, no task process is left, and no key, SAS signature or connection
string appears in the run's output, its .snakemake/ files, or any task's command line or
environment (sampled while the run is on).
"""
from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobClient, BlobServiceClient

from snakemake_executor_saje.staging import SOURCES_BLOB, Staging, output_blob
from tests.conftest import wait_for
from tests.e2e.conftest import SNAKEMAKE, VENV_BIN, assert_nothing_left, run_snakemake, start_snakemake, write_workflow

pytestmark = pytest.mark.e2e

SIG = re.compile(r"sig=[A-Za-z0-9%+/=]{16,}")

THREE = """
rule all:
    input: "summary.txt"

rule work:
    output: "out/{{i}}.txt"
    shell: "sleep {seconds}; echo {{wildcards.i}} > {{output}}"

rule summary:
    input: expand("out/{{i}}.txt", i=range(3))
    output: "summary.txt"
    shell: "cat {{input}} > {{output}}"
"""


def assert_clean_outputs(workdir: Path) -> None:
    """What a clean run of THREE leaves (its rules are deterministic)."""
    assert (workdir / "summary.txt").read_text() == "0\n1\n2\n"
    assert sorted(p.name for p in (workdir / "out").iterdir()) == ["0.txt", "1.txt", "2.txt"]


class TaskWatcher(threading.Thread):
    """Samples every task's command line and environment through the SDK while a run is on."""

    def __init__(self, emulator):
        super().__init__(daemon=True)
        self.client = emulator.client()
        self.seen: dict[str, str] = {}
        self.declared: set[str] = set()  # variables the user passes with --envvars (route a's storage key)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for job in self.client.list_jobs(select=["id"]):
                    for task in self.client.list_tasks(job.id, select=["id", "commandLine", "environmentSettings"]):
                        self.seen[task.id] = "\n".join(
                            [task.command_line or ""] + [f"{e.name}={e.value}" for e in task.environment_settings or []
                                                         if e.name not in self.declared])
            except Exception:  # noqa: BLE001 - the run deletes jobs under our feet, outages happen
                pass
            self.stop.wait(0.3)

    def finish(self) -> str:
        self.stop.set()
        self.join(10)
        self.client.close()
        return "\n".join(self.seen.values())


class Chaos:
    """One chaos case: runs Snakemake, watches tasks, and checks what is left and what leaked."""

    def __init__(self, emulator, env: dict[str, str], tmp_path: Path):
        self.emu = emulator
        self.env = env
        self.tmp_path = tmp_path
        self.blob = BlobServiceClient.from_connection_string(emulator.azurite.connection_string)
        self.containers_before = {c.name for c in self.blob.list_containers()}
        self.watcher = TaskWatcher(emulator)
        self.watcher.start()
        self.outputs: list[str] = []
        self.workdirs: list[Path] = []
        self.readers: list[Reader] = []

    def workflow(self, snakefile: str, files: dict[str, str] | None = None, name: str = "wf") -> Path:
        workdir = write_workflow(self.tmp_path / name, snakefile, files)
        self.workdirs.append(workdir)
        return workdir

    def run(self, workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 240):
        run = run_snakemake(workdir, env or self.env, *args, timeout=timeout)
        self.outputs.append(run.stdout)
        return run

    def start(self, workdir: Path, *args: str) -> "Reader":
        self.readers.append(Reader(start_snakemake(workdir, self.env, *args), self.outputs))
        return self.readers[-1]

    def disturb(self, workdir: Path, action, *args: str) -> tuple[int, str]:
        """Start Snakemake; once the run's tasks run, `action(client, batch_job_id)`; wait for the end."""
        client = self.emu.client()
        try:
            reader = self.start(workdir, *args)
            job_id = _batch_job(client)
            wait_for(lambda: any(t.state == "running" for t in client.list_tasks(job_id)), 120, what="running tasks")
            action(client, job_id)
            code = reader.wait(240)
        finally:
            client.close()
        return code, reader.text

    def saje(self, *args: str) -> subprocess.CompletedProcess:
        run = subprocess.run([str(VENV_BIN / "saje"), *args], env=self.env, text=True, capture_output=True, timeout=120)
        self.outputs.append(run.stdout + run.stderr)
        return run

    def secrets(self) -> list[str]:
        keys = [self.emu.account_key, self.emu.azurite.connection_string]
        keys += re.findall(r"AccountKey=([^;]+)", self.emu.azurite.connection_string)
        return [k for k in keys if k]

    def check(self) -> None:
        tasks = self.watcher.finish()
        assert_nothing_left(self.emu, timeout=30)
        left = {c.name for c in self.blob.list_containers()} - self.containers_before
        assert not left, f"staging containers left: {left}"
        nodes = self.emu.config.data_dir / "nodes"
        wait_for(lambda: not _processes_under(nodes), 20, what=f"task processes under {nodes} to end")
        texts = {"the run's output": "\n".join(self.outputs), "task command lines and environments": tasks}
        for workdir in self.workdirs:
            for path in (workdir / ".snakemake").rglob("*"):
                if path.is_file():
                    texts[str(path)] = path.read_text(errors="replace")
        for where, text in texts.items():
            for secret in self.secrets():
                assert secret not in text, f"a key or connection string in {where}"
            assert not SIG.search(text), f"a SAS signature in {where}"


class Reader:
    """A started Snakemake whose output is read as it comes (so a test can wait for a line)."""

    def __init__(self, proc: subprocess.Popen, outputs: list[str]):
        self.proc = proc
        self.lines: list[str] = []
        outputs_index = len(outputs)
        outputs.append("")
        self._outputs, self._index = outputs, outputs_index
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            self._outputs[self._index] += line

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        self._thread.join(10)
        return code


def _processes_under(directory: Path) -> list[int]:
    """Processes whose working directory is inside `directory` (a node's task directories)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")).is_relative_to(directory):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def chaos(executor_emulator, saje_env, tmp_path):
    case = Chaos(executor_emulator, saje_env, tmp_path)
    try:
        yield case
    finally:
        executor_emulator.faults.reset()
    case.check()


def _batch_job(client) -> str:
    return wait_for(lambda: next((j.id for j in client.list_jobs()), None), 120, what="the run's Batch job")


# ----------------------------------------------------------------------------- 1. lost replies
@pytest.mark.parametrize("kind", ["POST /pools", "POST /jobs"])
def test_a_lost_reply_to_a_create_still_counts_as_the_runs_and_is_deleted(chaos, kind):
    """Batch makes the pool (job), the reply is lost, the SDK retries and gets PoolExists
    (JobExists): the run owns it all the same, so it ends deleted (checked by `chaos`)."""
    workdir = chaos.workflow(THREE.format(seconds=0))
    chaos.emu.faults.update(lose_reply_count=1, lose_reply_to=kind)
    before = chaos.emu.request_counts.get(kind, 0)

    run = chaos.run(workdir)

    assert run.returncode == 0, run.stdout[-3000:]
    assert chaos.emu.faults.lose_reply_count == 0  # the reply was lost ...
    assert chaos.emu.request_counts[kind] - before == 2  # ... and the create retried once
    assert_clean_outputs(workdir)
    assert re.search(r"SAJE: pool \S+ deleted", run.stdout)


# ----------------------------------------------------------------------------- 2. glob characters
GLOBS = """
rule all:
    input: "report.txt"

rule make:
    output: "br[1].txt", "qm?x.txt", "st*r.txt", "cost$x.txt", directory("d[2]")
    shell:
        "echo one > {output[0]:q}; echo two > {output[1]:q}; echo three > {output[2]:q}; "
        "echo four > {output[3]:q}; mkdir -p {output[4]:q}; echo five > {output[4]:q}/'in[side].txt'"

rule report:
    input: "br[1].txt", "qm?x.txt", "st*r.txt", "cost$x.txt", "d[2]"
    output: "report.txt"
    shell: "cat {input[0]:q} {input[1]:q} {input[2]:q} {input[3]:q} {input[4]:q}/'in[side].txt' > {output:q}"
"""
GLOB_OUTPUTS = {"br[1].txt": "one\n", "qm?x.txt": "two\n", "st*r.txt": "three\n", "cost$x.txt": "four\n",
                "d[2]/in[side].txt": "five\n", "report.txt": "one\ntwo\nthree\nfour\nfive\n"}
# Route (a) without the directory: snakemake-storage-plugin-azure 0.4.4 never finds a directory
# output (its exists() reads the unset _is_dir attribute instead of calling is_dir()).
GLOB_FILES = (GLOBS.replace(', directory("d[2]")', "").replace(', "d[2]"', "")
              .replace("; mkdir -p {output[4]:q}; echo five > {output[4]:q}/'in[side].txt'", "")
              .replace(" {input[4]:q}/'in[side].txt'", ""))


def test_outputs_named_with_glob_characters_come_back_saje_staging(chaos):
    """Route (b): SAJE stages; each output's upload pattern is escaped (`br[[]1].txt`)."""
    workdir = chaos.workflow(GLOBS)
    run = chaos.run(workdir)
    assert run.returncode == 0, run.stdout[-3000:]
    for name, text in GLOB_OUTPUTS.items():
        assert (workdir / name).read_text() == text, name


def test_outputs_named_with_glob_characters_come_back_default_storage(chaos):
    """Route (a): Snakemake's azure storage plugin moves the files; SAJE stages only the sources."""
    container = f"chaos-{int(time.time() * 1000) % 10**8}"
    chaos.blob.create_container(container)
    env = {**chaos.env, "AZURITE_CONNECTION_STRING": chaos.emu.azurite.connection_string}
    chaos.watcher.declared.add("AZURITE_CONNECTION_STRING")  # the user's own choice, in the environment only
    workdir = chaos.workflow(GLOB_FILES)
    store = chaos.blob.get_container_client(container)
    try:
        run = chaos.run(workdir, "--default-storage-provider", "azure", "--default-storage-prefix", f"az://{container}/r",
                        "--storage-azure-account-name", chaos.emu.azurite.account_name,
                        "--envvars", "AZURITE_CONNECTION_STRING", env=env)
        assert run.returncode == 0, run.stdout[-3000:]
        stored = {b.name: store.download_blob(b.name).readall().decode() for b in store.list_blobs(name_starts_with="r/")}
    finally:
        chaos.blob.delete_container(container)
    expected = {f"r/{name}": text for name, text in GLOB_OUTPUTS.items() if "[2]" not in name and "?" not in name}
    expected["r/report.txt"] = "one\ntwo\nthree\nfour\n"
    assert {name: text for name, text in stored.items() if name != "r/qm"} == expected
    # snakemake-storage-plugin-azure 0.4.4 cuts a name at '?' (read as a URL query): qm?x.txt is
    # stored as r/qm. Outside SAJE; asserted so that a fixed plugin shows up here.
    assert stored.get("r/qm") == "two\n"


# ----------------------------------------------------------------------------- 3. SAS lifetime, least privilege
def test_a_task_that_outlives_its_sas_fails_naming_the_expiry_and_what_to_do(chaos):
    """Its SAS lives its wall-clock limit (30 s) plus --saje-sas-allowance (1.2 s); the upload of
    its outputs comes later (slow storage, an emulator fault), and Azure Storage refuses it."""
    workdir = chaos.workflow(THREE.format(seconds=0))
    chaos.emu.faults.update(upload_delay_seconds=33)

    run = chaos.run(workdir, "--saje-max-wall-clock", "0.5", "--saje-sas-allowance", "0.02", "--until", "work")

    assert run.returncode != 0
    assert "FileUploadAccessDenied" in run.stdout, run.stdout[-3000:]
    assert "SAS tokens" in run.stdout and "expired at" in run.stdout and "before Batch uploaded its outputs" in run.stdout
    assert "--saje-sas-allowance" in run.stdout and "runtime" in run.stdout


def test_a_task_that_waits_for_a_node_longer_than_its_sas_lives_fails_naming_the_expiry(chaos):
    """No node for 12 s (the pool may not grow, until the test resizes it by hand); the task's SAS
    lived 6 s + 1.2 s, so Batch cannot download its inputs (BlobAccessDenied). Each job reads an
    input of its own, a task's resource file (the sources come with the job preparation task,
    whose SAS lasts as long as the run's jobs may)."""
    own_input = THREE.replace("rule work:\n", 'rule work:\n    input: "in/{{i}}.txt"\n')
    workdir = chaos.workflow(own_input.format(seconds=0), {f"in/{i}.txt": f"{i}\n" for i in range(3)})
    client = chaos.emu.client()
    try:
        reader = chaos.start(workdir, "--saje-max-wall-clock", "0.1", "--saje-sas-allowance", "0.02",
                             "--saje-max-nodes", "0", "--until", "work")
        job_id = _batch_job(client)
        wait_for(lambda: len(list(client.list_tasks(job_id))) == 3, 120, what="the run's tasks")
        time.sleep(12)
        pool_id = client.get_job(job_id).pool_info.pool_id
        client.disable_pool_auto_scale(pool_id)
        client.begin_resize_pool(pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=1))
        code = reader.wait(180)
    finally:
        client.close()
    out = reader.text
    assert code != 0
    assert "BlobAccessDenied" in out and "before Batch downloaded its inputs" in out, out[-3000:]


def test_a_tasks_sas_reaches_its_own_blobs_only(chaos, monkeypatch):
    """Least privilege, checked against Azure Storage's own rules (Azurite): the write SAS of one
    task's output cannot overwrite another task's output, the staged inputs or the sources, and
    the read SAS of its inputs cannot read another blob."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", chaos.emu.azurite.connection_string)
    monkeypatch.chdir(chaos.tmp_path)
    Path("sources.tar.xz").write_bytes(b"sources")
    Path("in.txt").write_text("input")
    expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10)
    staging = Staging.connect(f"least-privilege-{time.time_ns()}", account_url=None)
    try:
        staging.upload_sources(Path("sources.tar.xz"))
        outputs = staging.output_files("a-1-a1", ["res/a.txt"], expiry)
        inputs = [*staging.stage_files([("in.txt", "in.txt")], expiry), staging.sources_file(expiry)]
        staging.output_files("b-2-a1", ["res/b.txt"], expiry)
        theirs = output_blob("b-2-a1", "res/b.txt")
        staging.service.get_blob_client(staging.container, theirs).upload_blob(b"b's output")
        mine = next(f for f in outputs if f.file_pattern == "res/a.txt").destination.container
        assert mine.path == output_blob("a-1-a1", "res/a.txt")
        base, token = mine.container_url.split("?")

        def write(blob: str) -> None:
            BlobClient.from_blob_url(f"{base}/{blob}?{token}").upload_blob(b"tampered", overwrite=True)

        write(mine.path)  # its own output: allowed (a Batch retry writes it again)
        for victim in (theirs, SOURCES_BLOB, "inputs/in.txt", "anything-new.txt"):
            with pytest.raises(HttpResponseError) as refused:
                write(victim)
            assert refused.value.status_code == 403, victim
        reads = {f.file_path: f.http_url for f in inputs}
        assert BlobClient.from_blob_url(reads["in.txt"]).download_blob().readall() == b"input"
        assert BlobClient.from_blob_url(reads[Path(SOURCES_BLOB).name]).download_blob().readall() == b"sources"
        read_token = reads["in.txt"].split("?")[1]
        with pytest.raises(HttpResponseError) as refused:
            BlobClient.from_blob_url(f"{base}/{theirs}?{read_token}").download_blob().readall()
        assert refused.value.status_code == 403
        assert staging.service.get_blob_client(staging.container, theirs).download_blob().readall() == b"b's output"
    finally:
        staging.delete()


# ----------------------------------------------------------------------------- 4. permanent errors
SLOW = THREE.format(seconds=60)


def test_the_runs_job_deleted_behind_its_back_ends_the_run_with_one_message(chaos):
    code, out = chaos.disturb(chaos.workflow(SLOW), lambda client, job_id: client.begin_delete_job(job_id))
    assert code != 0
    assert "JobNotFound" in out or "JobBeingDeleted" in out, out[-3000:]
    assert "rerun the workflow" in out
    assert out.count("SAJE: Azure Batch refused the request") == 1, out[-3000:]  # said once, not every poll


def test_a_changed_key_ends_the_run_and_sigterm_does_not_wait(chaos):
    """The account key was regenerated mid-run: every request gets 403 AuthenticationFailed. The
    run's jobs fail (so Snakemake's graceful SIGTERM has nothing left to wait for), the message
    names the key, and the clean-up that cannot happen names the commands that do it later."""
    accounts = chaos.emu.frontend.accounts
    ids: list[str] = []

    def regenerate_key_then_sigterm(client, job_id: str) -> None:
        ids.extend([job_id, client.get_job(job_id).pool_info.pool_id])
        accounts[chaos.emu.account_name] = "cmVnZW5lcmF0ZWQta2V5LW5vdC10aGUtb2xkLW9uZQ=="
        chaos.readers[-1].proc.send_signal(signal.SIGTERM)

    try:
        code, out = chaos.disturb(chaos.workflow(SLOW), regenerate_key_then_sigterm)
    finally:
        accounts[chaos.emu.account_name] = chaos.emu.account_key
    assert code != 0
    assert "AuthenticationFailed" in out and "SNAKEMAKE_SAJE_ACCOUNT_KEY" in out, out[-3000:]
    job_id, pool_id = ids
    for command in (f"saje job delete {job_id}", f"saje pool delete {pool_id}"):
        assert command in out, out[-3000:]
        assert chaos.saje(*command.split()[1:], "--yes").returncode == 0  # what the message says works


# ----------------------------------------------------------------------------- 5. transient errors
def test_a_brief_outage_is_ridden_out_and_said_once(chaos):
    workdir = chaos.workflow(THREE.format(seconds=8))
    code, out = chaos.disturb(workdir, lambda client, job_id: chaos.emu.outage(6))
    assert code == 0, out[-3000:]
    assert_clean_outputs(workdir)
    assert out.count("Azure Batch is unreachable") == 1, out[-3000:]
    assert out.count("Azure Batch answers again") == 1
    assert "Traceback" not in out


def test_an_outage_longer_than_the_service_timeout_fails_the_jobs_naming_the_cause(chaos):
    """--saje-service-timeout 0.1 (6 s); the outage lasts 20 s; the clean-up after the failure
    still gets its own short while, long enough here to delete the job and pool."""
    code, out = chaos.disturb(chaos.workflow(THREE.format(seconds=30)), lambda client, job_id: chaos.emu.outage(20),
                              "--saje-service-timeout", "0.1")
    assert code != 0
    assert "stayed unreachable or overloaded for 6 seconds (--saje-service-timeout)" in out, out[-3000:]
    assert "Connection refused" in out or "Connection reset" in out or "Connection aborted" in out
    assert "Traceback" not in out


def test_a_throttling_storm_at_submission_is_waited_out(chaos):
    """30 throttled replies in a row (Retry-After 1 s): the SDK's default policy gave up after 10."""
    workdir = chaos.workflow(THREE.format(seconds=0))
    chaos.emu.faults.update(throttle_count=30, throttle_status=429, retry_after_seconds=1)
    run = chaos.run(workdir)
    assert run.returncode == 0, run.stdout[-3000:]
    assert chaos.emu.faults.throttle_count == 0
    assert_clean_outputs(workdir)
    assert run.stdout.count("Azure Batch is throttling requests") == 1, run.stdout[-3000:]


# ----------------------------------------------------------------------------- 9. unclear errors
def test_a_job_with_hundreds_of_inputs_runs_through_a_manifest(chaos):
    """Each input's resource file carries a SAS URL of ~300 bytes: 4,000 inputs made a task over
    Batch's 1 MB (RequestBodyTooLarge). Past ~100 they travel in a manifest the task fetches
    first; 400 here keep the case short (docs/performance.md has the 4,000-input figures)."""
    count = 400
    files = {f"data/f{i:04d}.txt": f"{i}\n" for i in range(count)}
    workdir = chaos.workflow("""
        rule all:
            input: "total.txt"

        rule total:
            input: [f"data/f{i:04d}.txt" for i in range(%d)]
            output: "total.txt"
            shell: "cat data/*.txt | wc -l > {output}"
        """ % count, files)
    run = chaos.run(workdir)
    assert run.returncode == 0, run.stdout[-3000:]
    assert (workdir / "total.txt").read_text().strip() == str(count)
    assert any("saje-fetch-inputs.py saje-inputs.tsv" in seen for seen in chaos.watcher.seen.values())


@pytest.mark.parametrize("setup, complaint", [
    ({"SNAKEMAKE_SAJE_ACCOUNT_URL": "127.0.0.1:9/acct"}, "has no scheme: write https://127.0.0.1:9/acct"),
    ({"SNAKEMAKE_SAJE_ACCOUNT_KEY": "c2hvcnQta2V5"[:-1]}, "is not valid base64"),
], ids=["url-without-scheme", "cut-key"])
def test_bad_endpoint_or_key_is_one_clear_line(chaos, setup, complaint):
    workdir = chaos.workflow(THREE.format(seconds=0))
    env = {**chaos.env, **setup}
    run = chaos.run(workdir, env=env)
    assert run.returncode != 0
    assert complaint in run.stdout and "Traceback" not in run.stdout, run.stdout[-3000:]
    cli = subprocess.run([str(VENV_BIN / "saje"), "pool", "list"], env=env, text=True, capture_output=True, timeout=60)
    assert cli.returncode == 4, cli.stderr  # a configuration problem, as docs/cli.md says
    assert complaint in cli.stderr + cli.stdout and "Traceback" not in cli.stderr


def test_a_git_tracked_file_with_a_quote_in_its_name_is_named_in_the_error(chaos):
    workdir = chaos.workflow(THREE.format(seconds=0), {'notes/say "hi".txt': "hi\n", "données.csv": "x\n"})
    subprocess.run(["git", "init", "-q"], cwd=workdir, check=True)
    subprocess.run(["git", "add", "-A"], cwd=workdir, check=True)
    run = chaos.run(workdir)
    assert run.returncode != 0
    assert 'say "hi".txt' in run.stdout and "git mv" in run.stdout, run.stdout[-3000:]
    assert "données.csv" not in run.stdout  # a non-ASCII name is fine
    assert "Traceback" not in run.stdout
    (workdir / 'notes/say "hi".txt').rename(workdir / "notes/say-hi.txt")
    subprocess.run(["git", "add", "-A"], cwd=workdir, check=True)
    run = chaos.run(workdir)
    assert run.returncode == 0, run.stdout[-3000:]
    assert_clean_outputs(workdir)
