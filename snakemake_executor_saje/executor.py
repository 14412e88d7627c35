"""The Snakemake executor: bulk submission, one status list per poll, logs on failure, cleanup.

A run owns one Batch job per pool class (a Batch job is bound to one pool; most runs have one)
and the pools it created. Whatever way the run ends (success, failure, Ctrl-C, an error during
set-up) `shutdown` deletes those jobs and pools unless --saje-keep-pool, so nothing keeps costing.
Everything it creates carries the run's tag with a heartbeat (runs.py), so that what a killed
Snakemake leaves behind can be found (`saje cleanup`); a rerun of the same workflow directory
terminates such a run's tasks first (leftovers.py), so that no two tasks write the same output.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncGenerator, List

from azure.batch import models
from azure.core.exceptions import AzureError, HttpResponseError
from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake_interface_executor_plugins.utils import format_cli_arg

from . import allocation, armpools, checkpoints, containers, credentials, leftovers, mapping, mpi, node_cache, node_check, pools, runs, sources
from .observer import RunObserver, peak_memory_mb
from .runrecord import ClockMap
from .batch import BatchGateway, BatchSubmitError, TaskOutcome, describe_http_error, outcome_of, quiet_azure_sdk_logging
from .batch import connect as batch_connect
from .downloads import Downloads
from .poolwatch import PoolWatch, StartTaskFailure
from .readable import minutes
from .resilience import Patience, diagnose
from .staging import NO_LIMIT_LIFETIME, SOURCES_NAME, Staging, node_path, sas_lifetime, under

LOG_DIR = Path(".snakemake") / "saje_logs"
# A task that completed just before a listing may show up only in the next one (listings are
# eventually consistent), so each poll reaches back this far before the previous one: real time,
# times the time scale on an emulator's clock (Executor._completion_margin).
COMPLETION_MARGIN = dt.timedelta(seconds=30)
POOL_CHECK_SECONDS = 20.0
DOWNLOAD_CONCURRENCY = 8
# How long a poll waits for the downloads in flight: most outputs arrive within it and are
# reported by the poll that saw their task end; a slower download's job by a later poll.
DOWNLOAD_WAIT_SECONDS = 1.0
# The node check (node_check.py) and, for jobs with very many files, its expectations, on the node.
NODE_CHECK_BLOB = "saje/node_check.py"
NODE_CHECK_PATH = ".saje/node_check.py"
NODE_EXPECT_PATH = ".saje/expected.txt"
# The node's input cache (node_cache.py), shared inputs' way onto a node.
NODE_CACHE_BLOB = "saje/node_cache.py"
NODE_CACHE_PATH = ".saje/node_cache.py"
# Where the job preparation task unpacks the sources, with .saje/, once per node (_preparation_task),
# and how each task puts them in its working directory: hard links (read-only files, so no task
# can change another's), or a copy where cp cannot link (BSD cp). As the archive's unpacking did
# before, a source file replaces a resource file of the same path.
SOURCES_DIR = "sources"
_PREPARED = f'"$AZ_BATCH_JOB_PREP_WORKING_DIR/{SOURCES_DIR}/."'
LINK_SOURCES = f"{{ cp -al --remove-destination {_PREPARED} . 2>/dev/null || cp -Rp {_PREPARED} .; }}"
# Above this the expectations go as a file: one environment string must stay well under Linux's 128 KiB.
INLINE_EXPECT_LIMIT = 64 * 1024
LOG_TAIL_LINES = 20
# Ready jobs mapped and submitted at a time (five create_tasks requests of 100): bounds the memory
# the task requests take, whatever the number of jobs Snakemake hands over at once.
SUBMIT_CHUNK = 500


@dataclass
class PoolUse:
    """A pool class in use by this run: its pool, its Batch job, whether we made the pool."""

    pool_class: pools.PoolClass
    pool_id: str
    job_id: str
    shape: mapping.PoolShape
    created: bool = False
    reported: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)  # Batch errors reported, for the final message
    unusable_since: float | None = None  # monotonic time since the pool has had no usable node
    watch: PoolWatch = field(default_factory=PoolWatch)  # start-task failures (created pools)


class Executor(RemoteExecutor):
    def __post_init__(self) -> None:
        quiet_azure_sdk_logging()
        self.settings = self.workflow.executor_settings
        try:
            endpoint = credentials.resolve_batch_account_url(self.settings)
            credential = credentials.resolve_batch_credential(self.settings)
        except credentials.CredentialsError as exc:
            raise WorkflowError(f"SAJE cannot reach Azure Batch: {exc}") from None
        self.patience = Patience(float(self.settings.service_timeout) * 60, say=self.logger.warning)
        self.batch = BatchGateway(batch_connect(endpoint, credential, self.patience))
        self.trouble_since: float | None = None  # when status queries started failing transiently
        self.said: set[str] = set()  # run-wide error messages already logged (each is said once)
        self.endpoint = endpoint
        self.account_name = credential.named_key.name if hasattr(credential, "named_key") else None
        self.arm_pools: armpools.ArmPools | None = None  # --saje-node-identity: pools are created through ARM
        self.emulated = _is_loopback(endpoint)
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.tag = runs.RunTag.current(self.run_id, dt.timedelta(minutes=float(self.settings.heartbeat_interval)))
        self.heartbeat = runs.Heartbeat(float(self.settings.heartbeat_interval) * 60, self._beat)
        self.checked_dead_runs = False
        self.uses: dict[str, PoolUse] = {}
        self.staging: Staging | None = None
        self.shipped_sources: frozenset[str] = frozenset()  # what the source archive holds
        # Batch job id -> the service's clock at the last successful poll (its Date header): the
        # next poll lists tasks completed since then, less the completion margin (_completion_margin).
        self.polled_at: dict[str, dt.datetime] = {}
        # The emulator's service clock against ours: asked once, again after a failed poll (an
        # emulator restarted from its state directory has a clock of its own).
        self.emulator_clock: ClockMap | None = None
        self.downloads = Downloads(DOWNLOAD_CONCURRENCY)
        self.shared_inputs = InputUse(self.workflow.dag)
        self.preparation = None
        self.last_pool_check = 0.0
        self.uses_default_storage = bool(self.workflow.storage_settings.default_storage_provider)
        self.next_seconds_between_status_checks = float(self.settings.poll_interval)
        self.srun_rules: set[str] = set()  # rules whose srun translation was logged
        self.run_image = containers.run_image(self.settings.snakemake_install,
                                              getattr(self.workflow.remote_execution_settings, "container_image", None))
        self.apptainer = _uses_apptainer(self.workflow)
        self.container_notes: set[str] = set()  # rules whose container choice was logged
        if self.run_image:
            self.logger.info(f"SAJE: jobs run in container image {self.run_image} (--container-image); "
                             "it must hold Snakemake (docs/usage.md#containers).")
        self.slurm_resources: set[str] = set()  # Slurm-only resources already said to be ignored
        _check_preemptible_settings(self.workflow.remote_execution_settings)
        if self.uses_default_storage and node_check.patch_azure_directory_exists():
            self.logger.info("SAJE: snakemake-storage-plugin-azure <= 0.4.4 takes directory() outputs for missing; "
                             "SAJE corrects its exists() for this run, here and on the nodes.")
        self.observer = RunObserver(self.run_id, LOG_DIR / self.run_id, self.logger, endpoint=endpoint,
                                    emulated=_is_loopback(endpoint), progress_interval=self.settings.progress_interval)
        self._check_account(endpoint, credential)

    def _check_account(self, endpoint: str, credential) -> None:
        """Refuse (or warn about) what the Batch account cannot give, before anything is created:
        Spot nodes on a Batch-service-mode account, a subnet with shared-key auth (allocation.py)."""
        from azure.core.credentials import AzureNamedKeyCredential

        rules = getattr(self.workflow.remote_execution_settings, "preemptible_rules", None)
        wants_spot = bool(self.settings.spot or (rules is not None and (rules.all or rules.rules)))
        subnet = bool(self.settings.subnet_id)
        if not (wants_spot or subnet):
            return
        shared_key = isinstance(credential, AzureNamedKeyCredential)
        facts = None
        if wants_spot:
            facts = allocation.account_facts(endpoint, self.settings, credential.named_key.name if shared_key else None)
        for finding in allocation.check(facts, wants_spot=wants_spot, subnet=subnet, shared_key=shared_key):
            if finding.level == "error":
                raise WorkflowError(f"SAJE cannot run this workflow: {finding.message}")
            self.logger.warning(f"SAJE: {finding.message}")

    # ----------------------------------------------------------------- submission
    def run_job(self, job: JobExecutorInterface) -> None:
        self.run_jobs([job])

    def run_jobs(self, jobs: List[JobExecutorInterface]) -> None:
        """Map the ready jobs and create their tasks, SUBMIT_CHUNK jobs at a time: a task request
        is about 7 KB of SDK models, which for a 10,000-job fan-out would be 70 MB held at once."""
        for start in range(0, len(jobs), SUBMIT_CHUNK):
            self._run_chunk(jobs[start:start + SUBMIT_CHUNK])

    def _run_chunk(self, jobs: List[JobExecutorInterface]) -> None:
        """Map every job, then create all their tasks with create_tasks (100 per request)."""
        specs = {id(job): mapping.job_spec_from_job(job, "") for job in jobs}
        self._note_slurm_resources(list(specs.values()))
        by_use: dict[str, list] = {}
        refused: list[tuple[JobExecutorInterface, str]] = []
        try:
            for job in jobs:
                try:
                    use, request, info = self._prepare(job)
                except checkpoints.UnseenOutputs as exc:  # this job only: the others go on
                    refused.append((job, str(exc)))
                    continue
                by_use.setdefault(use.job_id, []).append((request, info))
            self._settle_dead_runs()
            for job_id, items in by_use.items():
                self.batch.submit(job_id, [request for request, _ in items])
        except (mapping.JobMappingError, pools.PoolSpecError, containers.ContainerChoiceError, armpools.NodeIdentityError,
                BatchSubmitError) as exc:
            raise WorkflowError(str(exc)) from None
        except AzureError as exc:
            raise WorkflowError(f"SAJE could not submit the jobs: {diagnose(exc).explain(self._patience_minutes)}") from None
        for job_id, items in by_use.items():
            self.observer.submitted(job_id, items[0][1].aux["pool"],
                                    [(info.external_jobid, specs[id(info.job)]) for _, info in items])
            for _, info in items:
                self.report_job_submission(info)
        for job, message in refused:
            self.report_job_error(SubmittedJobInfo(job), msg=message)

    def _prepare(self, job: JobExecutorInterface):
        spec = mapping.job_spec_from_job(job, self._job_command(job), preemptible=_preemptible(self.workflow, job),
                                         apptainer=self.apptainer)
        packages = mapping.app_packages(spec, self.settings.app_packages)  # refused before any pool exists
        use = self._pool_for(spec)
        image = use.pool_class.container_image
        self._note_container(spec, image)
        task_key = mapping.task_id(spec.rule, spec.jobid, spec.attempt)
        plan = mapping.plan_mpi(spec, use.shape, self.settings.mpi_flavor) if mapping.is_mpi(spec) else None
        environment = dict(self.workflow.spawned_job_args_factory.envvars())
        resource_files, output_files = [], []
        command = spec.command
        aux = {"batch_job": use.job_id, "pool": use.pool_id}
        if self.staging is not None:
            aux["sas_expiry"] = expiry = self._sas_expiry(spec)
            inputs, shared = self._stage_for_node(job, expiry, cache=plan is None)
            staged, fetch = self.staging.with_manifest(task_key, inputs, expiry)
            if fetch and plan is not None:
                raise mapping.JobMappingError(
                    f"SAJE cannot run MPI rule {spec.rule} (job {spec.jobid}): its input files are more than a "
                    "multi-instance task can list; pass a directory or an archive instead.")
            if plan is not None:  # an MPI task's files go to every node (commonResourceFiles, below)
                resource_files.extend([self.staging.sources_file(expiry),
                                       self.staging.resource_file(NODE_CHECK_BLOB, NODE_CHECK_PATH, expiry)])
                command = f"tar -xJf {SOURCES_NAME} && {command}"
            else:  # the job preparation task unpacked the sources once per node (_preparation_task)
                cached = f"{self.get_python_executable()} {NODE_CACHE_PATH} && " if shared else ""
                command = f"{LINK_SOURCES} && {cached}{fetch}{command}"
            if shared:  # their URLs carry SAS tokens: in the environment, never on the command line
                environment[node_cache.INPUTS_ENV] = json.dumps(shared, separators=(",", ":"))
            resource_files.extend(staged)
            environment[node_check.ENV], expect_files = self._expectation(job, task_key, expiry)
            resource_files.extend(expect_files)
            output_files = [*self._output_files(job, task_key, expiry), *self.staging.log_files(task_key, expiry)]
        if image:  # the task runs in the image, where apptainer cannot nest
            command = containers.without_apptainer(command)
        elif self.settings.snakemake_install == "pip":
            command = f". \"{pools.NODE_VENV}/bin/activate\" && {command}"
        coordination, common_files = None, []
        if plan is not None:
            flavor = mpi.MpiFlavor(plan.flavor)
            environment.update(mpi.application_environment(flavor, plan.nodes, plan.tasks_per_node))
            command = mpi.hostfile_script(flavor, plan.tasks_per_node) + self._srun(spec.rule, plan) + command
            # Only the primary gets resourceFiles; every node gets commonResourceFiles (into the
            # task root dir), which the coordination command copies into its working dir.
            common_files = under(mpi.COMMON_FILES_DIR, resource_files)
            archive = SOURCES_NAME if self.staging is not None else None
            coordination = mpi.coordination_command(flavor, common_dir=mpi.COMMON_FILES_DIR if common_files else None,
                                                    archive=archive)
        spec = mapping.JobSpec(**{**spec.__dict__, "command": command})
        options = mapping.TaskOptions(
            max_task_retries=self._retries(spec),
            max_wall_clock_minutes=self.settings.max_wall_clock,
            environment=environment,
            resource_files=resource_files,
            output_files=output_files,
            container_image=image,
            # Root in the container ("Batch runs the task as root in the container context"), so that
            # an image's own directories (a conda or pip prefix) stay writable to its tools.
            elevated=bool(image),
            coordination_command=coordination,
            common_resource_files=common_files,
            default_mpi_flavor=self.settings.mpi_flavor,
            application_packages=packages,
        )
        request = mapping.task_request(spec, use.shape, options, plan)
        info = SubmittedJobInfo(job, external_jobid=request.id, aux=aux)
        return use, request, info

    def _sas_expiry(self, spec: mapping.JobSpec) -> dt.datetime:
        """When the task's SAS tokens expire (staging.sas_lifetime); said once per rule when Azure
        cannot give a SAS that long (a user delegation SAS lives 7 days at most)."""
        wall = mapping.wall_clock(spec, self.settings.max_wall_clock)
        lifetime = sas_lifetime(wall, int(self.settings.task_retries), dt.timedelta(minutes=float(self.settings.sas_allowance)))
        expiry, cut = self.staging.expiry(lifetime)
        if cut and f"sas:{spec.rule}" not in self.said:
            self.said.add(f"sas:{spec.rule}")
            self.logger.warning(
                f"SAJE: tasks of rule {spec.rule} may need their file access for {lifetime} (wall-clock limit per attempt "
                "plus --saje-sas-allowance), longer than the 7 days a user delegation SAS lives: outputs uploaded later "
                "are lost. Lower the rule's runtime or --saje-task-retries, or stage with a storage account key "
                "(AZURE_STORAGE_CONNECTION_STRING).")
        return expiry

    def _note_container(self, spec: mapping.JobSpec, image: str | None) -> None:
        """Say once per rule when its own container: is not the image its task runs in
        (resources saje_container wins), so that no container: is ignored without a word."""
        named = {c for c in spec.containers if c}
        if named and image and spec.resources.get("saje_container") and spec.rule not in self.container_notes:
            self.container_notes.add(spec.rule)
            self.logger.warning(f"SAJE: rule {spec.rule}: resources saje_container={image!r} is the image its task "
                                f"runs in, not its container: {', '.join(sorted(named))}.")

    def _note_slurm_resources(self, specs: list[mapping.JobSpec]) -> None:
        """Say once per resource name (one line for a run whose profile sets them) that Slurm's own
        resources are carried to the node's Snakemake and have no effect on Azure Batch."""
        new = {}
        for spec in specs:
            for name in mapping.slurm_only_resources(spec):
                if name not in self.slurm_resources:
                    new.setdefault(name, spec.rule)
        if new:
            self.slurm_resources.update(new)
            rules = ", ".join(dict.fromkeys(new.values()))
            self.logger.info(f"SAJE: resources {', '.join(new)} (rule {rules}) are Slurm's; Azure Batch has no "
                             "partition, account or QOS, so SAJE carries them unchanged and ignores them (the VM "
                             "size is the partition: saje_vm_size, --saje-vm-size).")

    def _srun(self, rule: str, plan: mapping.MpiPlan) -> str:
        """The application command's `srun` stand-in for a rule written with Slurm's srun, said
        once per rule in the log; '' for other launchers."""
        if plan.srun is None:
            return ""
        if rule not in self.srun_rules:
            self.srun_rules.add(rule)
            self.logger.info(f"SAJE: rule {rule}: resources mpi={plan.launcher!r} runs as "
                             f"'{plan.srun.command}' over the task's {plan.nodes} node(s) (Azure Batch has no Slurm).")
        return mpi.srun_shim_script(plan.srun, rule)

    def _job_command(self, job: JobExecutorInterface) -> str:
        """Snakemake's command for the job, run from the task's working directory.

        With no shared file system Snakemake passes `--directory <local workdir>` (the
        --directory given here) to the job; on a node that path means nothing, and outputs
        written there would never reach the task directory Batch uploads output files from.
        """
        command = self.format_job_exec(job)
        workdir = getattr(self.workflow, "overwrite_workdir", None)
        if workdir:
            command = command.replace(" " + format_cli_arg("--directory", workdir), "")
        return _checked(command, self.get_python_executable())

    # ----------------------------------------------------------------- files to and from the node
    def _stage_for_node(self, job: JobExecutorInterface, expiry: dt.datetime, *, cache: bool = False) -> tuple[list, list]:
        """(resource files, node cache items): the job's local inputs (no default storage), and in
        both routes the outputs of the finished checkpoints its input functions read, where the
        node's Snakemake looks for them (checkpoints.py). With `cache`, inputs that other jobs of
        the run use too go through the node's input cache (node_cache.py) instead: once per node.
        Every URL reads one blob, until `expiry`."""
        assert self.staging is not None
        try:
            needed = checkpoints.needed_outputs(job)
        except Exception as exc:  # noqa: BLE001 - the node evaluates the same functions and says what fails
            self.logger.warning(f"SAJE: could not tell which checkpoint outputs job {job} reads: {exc}")
            needed = []
        if not self.uses_default_storage:
            paths = _local_paths([*job.input, *needed])
            # With a node identity files carry no SAS, and node_cache.py (which fetches with a SAS) is not used.
            cache = cache and self.staging.identity is None
            shared = [p for p in paths if cache and self.shared_inputs.shared(p)]
            items = self.staging.cache_items(((p, p) for p in shared), expiry)
            if len(json.dumps(items)) > INLINE_EXPECT_LIMIT:  # too many for one variable: per task, as before
                shared, items = [], []
            return self.staging.stage_inputs((p for p in paths if p not in shared), expiry), items
        inputs = set(map(str, job.input))
        unseen = [f for f in needed if not os.path.exists(str(f)) and str(f) not in inputs]
        if unseen:
            for f in unseen:
                self.workflow.async_run(f.retrieve_from_storage())
            raise checkpoints.UnseenOutputs(job, unseen)
        return self.staging.stage_files(((str(f), self._node_path(f)) for f in needed if os.path.exists(str(f))), expiry), []

    def _node_path(self, f) -> str:
        """Where a file of the job is on the node, relative to the task's working directory."""
        if not getattr(f, "is_storage", False):
            return str(f)
        settings = self.workflow.storage_settings
        return node_path(str(f), local_prefix=Path(settings.local_storage_prefix),
                         node_prefix=Path(settings.remote_job_local_storage_prefix or settings.local_storage_prefix))

    def _output_files(self, job: JobExecutorInterface, task_key: str, expiry: dt.datetime) -> list:
        """Without default storage: the outputs on task success, logs and benchmarks on task
        completion. With it the node's Snakemake stores them itself; Batch keeps a copy of the logs
        and benchmarks of a failed task, which that Snakemake may not have stored."""
        assert self.staging is not None
        outputs, logs, benchmarks = _products(job)
        records = [_path(f, self._node_path(f)) for f in [*logs, *benchmarks]]
        if self.uses_default_storage:
            return self.staging.output_files(task_key, records, expiry, condition="taskfailure")
        return [*self.staging.output_files(task_key, [_path(f) for f in outputs], expiry),
                *self.staging.output_files(task_key, records, expiry, condition="taskcompletion")]

    def _expectation(self, job: JobExecutorInterface, task_key: str, expiry: dt.datetime) -> tuple[str, list]:
        """What the node check compares (its jobs, inputs and outputs), for the task's environment:
        inline, or a file on the node when one variable would be too large."""
        assert self.staging is not None
        text = node_check.encode(node_check.expected_jobs(job))
        if len(text) <= INLINE_EXPECT_LIMIT:
            return text, []
        blob = f"tasks/{task_key}/expected.txt"
        self.staging.upload_data(blob, text.encode("ascii"))
        return node_check.FILE_PREFIX + NODE_EXPECT_PATH, [self.staging.resource_file(blob, NODE_EXPECT_PATH, expiry)]

    def _retries(self, spec: mapping.JobSpec) -> int:
        """Batch's own retries of a failed task (--saje-task-retries), on the same task id.

        Snakemake's --retries and --preemptible-retries are Snakemake's: a failed job comes back
        with job.attempt + 1, hence a new task id (`<rule>-<jobid>-a<attempt>`). A preempted Spot
        node's task is requeued by Batch itself, which does not count it as a retry.
        """
        return int(self.settings.task_retries)

    # ----------------------------------------------------------------- pools and jobs
    def _pool_for(self, spec: mapping.JobSpec) -> PoolUse:
        pool_class = pools.pool_class_for(spec, self.settings, self.run_image)
        key = pool_class.key
        use = self.uses.get(key)
        if use is not None:
            return use
        pool_id = pools.pool_id_for(pool_class, self.run_id)
        if pool_class.existing_pool_id:
            if not self.batch.pool_exists(pool_id):
                raise pools.PoolSpecError(
                    f"Pool {pool_id!r} (from --saje-pool-id or resources: saje_pool) does not exist in the Batch account; "
                    "create it (saje pool create) or leave the setting out so SAJE creates one for the run."
                )
            existing = self.batch.get_pool(pool_id)
            containers.check_existing_pool(pool_id, _container_config(existing), pool_class.container_image, spec.rule)
            shape = _shape_of_existing(existing, pool_class)
            mapping.check_fits(spec, shape, self.settings.mpi_flavor)
            self._ensure_staging()
            created = False
        else:
            # Everything that can refuse the job runs before anything is created or uploaded.
            shape = pools.pool_shape(pool_class, self.settings, pool_id)
            mapping.check_fits(spec, shape, self.settings.mpi_flavor)
            version = self.settings.snakemake_version or _snakemake_version()
            make_spec = lambda files: pools.pool_spec(  # noqa: E731
                pool_class, self.settings, self.run_id, snakemake_version=version, pip_packages=self._node_packages(),
                instances_per_task=mapping.plan_mpi(spec, shape, self.settings.mpi_flavor).nodes if mapping.is_mpi(spec) else 1,
                start_task_files=files,
                tags=self.tag.metadata(),
            )
            make_spec(())  # refuses a pool SAJE must not create before anything is uploaded
            self._arm_pools()  # and a node identity SAJE cannot give its pools
            self._ensure_staging()
            spec_request = make_spec(self._start_task_files())
            try:
                created = self._create_pool(spec_request)
            except HttpResponseError as exc:
                raise pools.PoolSpecError(f"Azure Batch refused pool {pool_id}: {describe_http_error(exc)}") from None
            self.logger.info(f"SAJE: pool {pool_id} ({pool_class.vm_size}{', MPI' if pool_class.mpi else ''}) created for this run.")
        if warning := pools.rdma_warning(pool_class):
            self.logger.warning(warning)
        job_id = f"{pool_id}-job"[:64] if created or not pool_class.existing_pool_id else f"saje-{self.run_id}-{key}"
        use = PoolUse(pool_class, pool_id, job_id, shape, created)
        if created and not pool_class.mpi and self.settings.nodes is not None:
            use.watch.fixed_target = (0, self.settings.nodes) if pool_class.spot else (self.settings.nodes, 0)
        self.uses[key] = use
        self.observer.pool_added(pool_id, shape.vm_size, spot=pool_class.spot, batch_job=job_id, created=created,
                                 mpi=pool_class.mpi)
        self.batch.ensure_job(job_id, pool_id, self.run_id, display_name=f"snakemake run {self.run_id}",
                              max_wall_clock=self.settings.job_wall_clock,
                              metadata=self.tag.metadata(), preparation=self.preparation)
        self.heartbeat.start()
        return use

    def _create_pool(self, spec: "pools.models.BatchPoolCreateOptions") -> bool:
        """Create a pool SAJE needs; through ARM when it has a managed identity (the data plane cannot
        give it one: armpools.py). True when this run owns it (batch.BatchGateway.create_pool)."""
        arm = self._arm_pools()
        if arm is not None:
            return arm.create(spec, [self.settings.node_identity], self.run_id)
        return self.batch.create_pool(spec, self.run_id)

    def _arm_pools(self) -> armpools.ArmPools | None:
        """The account's pools through ARM, with --saje-node-identity (connected once); else None."""
        if self.settings.node_identity and self.arm_pools is None:
            self.arm_pools = armpools.ArmPools.connect(self.endpoint, self.settings, self.account_name)
        return self.arm_pools

    def _start_task_files(self) -> list:
        """--saje-start-task-script, uploaded once per run into the staging container."""
        script = self.settings.start_task_script
        if not script or self.staging is None:
            return []
        path = Path(script).expanduser()
        blob = f"start-task/{path.name}"
        self.staging.upload_file(path, blob)
        # Every node that joins the pool runs it, for as long as the run's jobs may last.
        expiry, _ = self.staging.expiry(self.settings.job_wall_clock or NO_LIMIT_LIFETIME)
        return [self.staging.resource_file(blob, path.name, expiry, "0755")]

    def _node_packages(self) -> list[str]:
        """What the start task installs beside Snakemake (--saje-snakemake-install pip): the default
        storage provider's plugin, pinned to the version here, which the node's Snakemake needs."""
        provider = self.workflow.storage_settings.default_storage_provider
        if not provider:
            return []
        from importlib.metadata import PackageNotFoundError, version

        from snakemake_interface_storage_plugins.registry import StoragePluginRegistry

        package = StoragePluginRegistry().get_plugin_package_name(provider)
        try:
            return [f"{package}=={version(package)}"]
        except PackageNotFoundError:
            return [package]

    def _ensure_staging(self) -> None:
        if self.staging is not None:
            return
        credential = None
        if self.settings.storage_account_url and not os.environ.get("AZURE_STORAGE_CONNECTION_STRING"):
            credential = credentials.resolve_storage_credential(self.settings)
        self.staging = Staging.connect(self.run_id, account_url=self.settings.storage_account_url,
                                       credential=credential, prefix=self.settings.storage_container,
                                       metadata=self.tag.container_metadata(), identity=self.settings.node_identity)
        self.observer.staging = self.staging
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / SOURCES_NAME
            sources.write_source_archive(self.workflow, archive, self.logger.warning)
            self.shipped_sources = sources.archive_members(archive)
            self.staging.upload_sources(archive)
        self.staging.upload_file(Path(node_check.__file__), NODE_CHECK_BLOB)
        self.staging.upload_file(Path(node_cache.__file__), NODE_CACHE_BLOB)
        self.preparation = self._preparation_task()

    def _preparation_task(self) -> models.BatchJobPreparationTask:
        """The run's Batch jobs' preparation task: on each node, before the job's first task
        there, the sources archive and SAJE's node files arrive once and are unpacked into
        SOURCES_DIR, files made read-only; each task then links them (LINK_SOURCES). It runs as
        the tasks' own user, so that they may link its files. Its SAS tokens last as long as the
        run's jobs may: every node that joins the pool runs it."""
        assert self.staging is not None
        expiry, _ = self.staging.expiry(self.settings.job_wall_clock or NO_LIMIT_LIFETIME)
        node_files = [self.staging.resource_file(NODE_CHECK_BLOB, NODE_CHECK_PATH, expiry),
                      self.staging.resource_file(NODE_CACHE_BLOB, NODE_CACHE_PATH, expiry)]
        files = [*under(SOURCES_DIR, node_files), self.staging.sources_file(expiry)]
        script = f"tar -xJf {SOURCES_NAME} -C {SOURCES_DIR} && find {SOURCES_DIR} -type f -exec chmod a-w {{}} +"
        return models.BatchJobPreparationTask(
            command_line=mapping.command_line(script), resource_files=files, wait_for_success=True,
            rerun_on_node_reboot_after_success=True,
            user_identity=models.UserIdentity(auto_user=models.AutoUserSpecification(scope="pool", elevation_level="nonadmin")),
        )

    # ----------------------------------------------------------------- the run's tag
    def _beat(self) -> None:
        """Heartbeat: write the time into the run's pools, jobs and container metadata."""
        self.tag = self.tag.beat()
        tags = self.tag.metadata()
        try:
            for use in list(self.uses.values()):
                if use.created:
                    self.batch.set_pool_metadata(use.pool_id, pools.pool_metadata(use.pool_class, self.run_id, tags))
                self.batch.set_job_metadata(use.job_id, tags)
            if self.staging is not None:
                self.staging.set_metadata(self.tag.container_metadata())
        except Exception as exc:  # a missed beat only makes the run look older; never stop for it
            if not self.heartbeat.failing:
                self.logger.warning(f"SAJE: could not write the run's heartbeat (said once until it works again): {exc}")
            self.heartbeat.failing = True
            return
        self.heartbeat.failing = False

    def _settle_dead_runs(self) -> None:
        """Once, before the first task goes out: runs of this workflow directory whose Snakemake is
        gone have their tasks terminated and their leftovers deleted (leftovers.take_over)."""
        if not self.checked_dead_runs:
            self.checked_dead_runs = True
            leftovers.take_over(self.tag, self.batch, self.staging.service if self.staging else None,
                                warn=lambda text: self.logger.warning(f"SAJE: {text}"))

    # ----------------------------------------------------------------- status
    async def check_active_jobs(self, active_jobs: List[SubmittedJobInfo]) -> AsyncGenerator[SubmittedJobInfo, None]:
        """One list call per Batch job per poll (one job in the usual run), however many tasks."""
        if not active_jobs:
            # Nothing to ask Batch. Also the first call, which Snakemake's status thread can make
            # before RemoteExecutor.__init__ has set status_rate_limiter (and before __post_init__).
            return
        completed: dict[str, object] = {}
        polled: dict[str, dt.datetime | None] = {}
        lost: dict[str, str] = {}  # Batch job id -> why its tasks can no longer be followed
        async with self.status_rate_limiter:
            for job_id in {j.aux["batch_job"] for j in active_jobs}:
                started = time.monotonic()
                try:
                    since = self.polled_at.get(job_id)
                    answer = self.batch.completed_since(job_id, since - self._completion_margin() if since else None)
                except AzureError as exc:  # a refused connection too: the service may be restarting
                    verdict = self._status_failure(exc, started)
                    if verdict is None:  # transient, and not for long yet: ask again next poll
                        for info in active_jobs:
                            yield info
                        return
                    lost[job_id] = verdict
                    continue
                completed.update((task.id, task) for task in answer.tasks)
                polled[job_id] = answer.service_time
        if not lost:
            self.trouble_since = None
        for job_id, service_time in polled.items():
            if service_time is None:  # no Date header: list every completed task next time
                self.polled_at.pop(job_id, None)
            else:
                self.polled_at[job_id] = service_time
        self._map_service_clock(polled)
        stuck = {**self._check_pools({info.aux["batch_job"] for info in active_jobs}), **lost}
        self.observer.observe(self.batch)
        finished, fetching = [], []
        for info in active_jobs:
            if info.external_jobid in self.downloads:
                fetching.append(info)
                continue
            if info.aux["batch_job"] in stuck and info.external_jobid not in completed:
                self.report_job_error(info, msg=stuck[info.aux["batch_job"]])
                continue
            task = completed.get(info.external_jobid)
            if task is None:
                yield info
            else:
                finished.append((info, outcome_of(task)))
        del completed  # the listing's SDK models: only the outcomes are kept
        for info, outcome in finished:
            if outcome.succeeded and self._outputs_come_back():
                self._start_download(info, outcome)
                fetching.append(info)
                continue
            missing = []
            if outcome.succeeded and self.uses_default_storage and info.job.is_checkpoint:
                missing = await _retrieve_checkpoint_outputs(info.job)
            self._done(info, outcome, missing)
        reported = set()
        for (info, outcome), missing in self.downloads.finished(DOWNLOAD_WAIT_SECONDS if fetching else 0):
            reported.add(info.external_jobid)
            self._done(info, outcome, missing)
        for info in fetching:
            if info.external_jobid not in reported:
                yield info

    def _completion_margin(self) -> dt.timedelta:
        """How far back a poll reaches, on the service's clock. The margin covers delays in real
        time (a completion stamped before it shows in listings), which pass `scale` times faster
        on a time-scaled emulator's clock: 30 s there is 0.1 s of real time at scale 300."""
        clock = self._emulator_clock()
        return COMPLETION_MARGIN * (clock.scale if clock is not None else 1)

    def _emulator_clock(self) -> ClockMap | None:
        if self.emulated and self.emulator_clock is None:
            try:
                self.emulator_clock = self.batch.emulator_clock()
            except (AzureError, KeyError, ValueError):
                pass
        return self.emulator_clock

    def _map_service_clock(self, polled: dict[str, dt.datetime | None]) -> None:
        """Tell the run's record how Batch's clock maps onto ours: the emulator says it, time
        scale included; Azure's is read from the poll's Date header (its skew from ours)."""
        mapping = self._emulator_clock()
        if mapping is None:
            times = [t for t in polled.values() if t is not None]
            if not times:
                return
            mapping = ClockMap(times[-1].timestamp(), time.time())
        self.observer.service_clock(mapping)

    @property
    def _patience_minutes(self) -> float:
        return float(self.settings.service_timeout)

    def _status_failure(self, exc: Exception, started: float) -> str | None:
        """None when a failed status query is worth asking again next poll (a transient error for
        less than --saje-service-timeout); else the message the affected jobs fail with, said once
        in the log. The retry policy has usually spent the whole timeout inside the failed call."""
        found = diagnose(exc)
        if found.transient:
            self.trouble_since = self.trouble_since or started
            self.emulator_clock = None
            if time.monotonic() - self.trouble_since < self.patience.seconds:
                return None
        message = "SAJE: " + found.explain(self._patience_minutes)
        if message not in self.said:
            self.said.add(message)
            self.logger.error(message)
        return f"SAJE: Batch can no longer tell how this job's task went ({found.code}); the cause and what to do are said above."

    def _outputs_come_back(self) -> bool:
        """Route (b): SAJE brings a succeeded job's outputs back from the run's container itself."""
        return self.staging is not None and not self.uses_default_storage

    def _start_download(self, info: SubmittedJobInfo, outcome: TaskOutcome) -> None:
        """The job's outputs, in the background (downloads.py); a later poll reports the job."""
        staging, paths = self.staging, _output_paths(info.job)
        assert staging is not None
        self.downloads.start(info.external_jobid, lambda: staging.download_outputs(info.external_jobid, paths),
                             (info, outcome))

    def _done(self, info: SubmittedJobInfo, outcome: TaskOutcome, missing: list[str]) -> None:
        """Report a job whose task completed (and whose outputs, if any come back, are here)."""
        self._finish(info, outcome, missing)
        self.observer.finished(outcome, log_dir=LOG_DIR / info.aux["batch_job"] / info.external_jobid,
                               peak_memory_mb=peak_memory_mb(_products(info.job)[2]) if outcome.succeeded else None)

    def _finish(self, info: SubmittedJobInfo, outcome, missing: list[str]) -> None:
        if outcome.succeeded:
            if missing:
                self.report_job_error(info, msg=f"SAJE: task {info.external_jobid} succeeded but these outputs never reached "
                                                f"this machine: {', '.join(missing)}")
                return
            self.report_job_success(info)
            return
        logs = self._fetch_logs(info, outcome)
        where = f" on node {outcome.node_id}" if outcome.node_id else ""
        task = f"rule {info.job.name} (task {info.external_jobid}, Batch job {info.aux['batch_job']}){where}"
        stderr = next((p for p in logs if p.name == "stderr.txt"), None)
        refusal = _node_check_refusal(stderr) if outcome.exit_code == node_check.EXIT_CODE and stderr else ""
        if refusal:
            self.report_job_error(info, msg=f"SAJE: {task} did not run: {refusal}\n", aux_logs=[str(p) for p in logs])
            return
        records = self._bring_records_back(info)
        detail = f"Batch failure {outcome.failure_code}: {outcome.failure_message}" if outcome.failure_code else "no Batch failure info"
        detail += self._expired_access(outcome, info.aux.get("sas_expiry"))
        msg = f"SAJE: {task} failed with exit code {outcome.exit_code}; {detail}."
        for log in records:
            msg += f"\nlog {log} (last lines):\n{_tail(log, LOG_TAIL_LINES)}"
        stderr_tail = _tail(logs[1]) if len(logs) > 1 else ""  # an MPI task's digest comes first
        msg += (f"\nstderr (last lines):\n{stderr_tail}" if stderr_tail else "") + "\n"
        if stderr is not None:
            hint = sources.missing_source_hint(_tail(stderr, 200), self.shipped_sources, Path.cwd())
            msg += f"SAJE: {hint}\n" if hint else ""
        self.report_job_error(info, msg=msg, aux_logs=[str(p) for p in [*records, *logs]])

    def _expired_access(self, outcome, expiry: dt.datetime | None) -> str:
        """Why a file transfer was refused, when the task's SAS tokens had expired by then."""
        if outcome.failure_code not in _ACCESS_DENIED or expiry is None or dt.datetime.now(dt.timezone.utc) < expiry:
            return ""
        step = "uploaded its outputs" if outcome.failure_code.startswith("FileUpload") else "downloaded its inputs"
        return (f". Its SAS tokens (its access to the run's staged files) expired at {expiry:%Y-%m-%d %H:%M:%S} UTC, "
                f"before Batch {step}: the task waited for a node or took longer than its wall-clock limit (resources "
                f"runtime, --saje-max-wall-clock) plus --saje-sas-allowance ({minutes(float(self.settings.sas_allowance))}). "
                "Set the rule's runtime to what it really needs, or raise --saje-sas-allowance, and rerun")

    def _bring_records_back(self, info: SubmittedJobInfo) -> list[Path]:
        """A failed job's own log: and benchmark: files, to their local paths (both data routes;
        its outputs stay on the node); returns the log files that came back."""
        if self.staging is None:
            return []
        _, logs, benchmarks = _products(info.job)
        local = {_path(f, self._node_path(f)): _path(f) for f in [*logs, *benchmarks]}
        try:
            missing = set(self.staging.download_outputs(info.external_jobid, list(local), local=local))
        except Exception as exc:  # noqa: BLE001 - the job's error is reported anyway
            self.logger.warning(f"SAJE: could not fetch the logs of failed task {info.external_jobid}: {exc}")
            return []
        names = {_path(f) for f in logs}
        return [Path(path) for at, path in local.items()
                if at not in missing and path in names and not path.endswith("/")]

    def _fetch_logs(self, info: SubmittedJobInfo, outcome) -> list[Path]:
        """stdout.txt/stderr.txt of the task under .snakemake/saje_logs/, and for an MPI task a
        digest put second (so the error message's stderr tail shows it): which nodes ran the
        task, which subtask failed, and what the ranks and the launcher wrote to stderr; then the
        task's stderr.txt and the logs of failed subtasks."""
        target = LOG_DIR / info.aux["batch_job"] / info.external_jobid
        logs = []
        for name in ("stdout.txt", "stderr.txt"):
            if self.batch.download_task_file(info.aux["batch_job"], info.external_jobid, name, target / name) or (
                self.staging is not None and self.staging.download_log(info.external_jobid, name, target / name)
            ):
                logs.append(target / name)
        if not mapping.is_mpi(mapping.job_spec_from_job(info.job, "")):
            return logs
        try:
            subtasks = self.batch.subtasks(info.aux["batch_job"], info.external_jobid)
        except AzureError:
            subtasks = []
        base = f"workitems/{info.aux['batch_job']}/job-1/{info.external_jobid}"
        for sub in subtasks:
            if sub.exit_code not in (0, None) and sub.node_info is not None:
                for name in ("stdout.txt", "stderr.txt"):
                    path = target / f"subtask-{sub.id}-{name}"
                    if self.batch.download_node_file(sub.node_info.pool_id, sub.node_info.node_id, f"{base}/{name}", path):
                        logs.append(path)
        stderr = next((p for p in logs if p.name == "stderr.txt"), None)
        digest = target / "mpi-failure.txt"
        try:  # a digest is a courtesy: never let it stop the status loop
            digest.parent.mkdir(parents=True, exist_ok=True)
            digest.write_text(_mpi_failure_digest(
                info.external_jobid, outcome, subtasks, self.observer.node_addresses(outcome.pool_id or ""),
                stderr.read_text(errors="replace") if stderr else ""))
            logs.insert(1, digest)
        except Exception as exc:  # noqa: BLE001
            self.logger.warning(f"SAJE: no MPI failure digest for task {info.external_jobid}: {exc!r}")
        return logs

    def _check_pools(self, waiting_jobs: set[str]) -> dict[str, str]:
        """Report each pool's resize errors and start-task failures once, with their Batch codes.

        Returns {Batch job id: message} for pools this run created that have had no usable node
        for --saje-pool-ready-timeout while tasks waited on them: those jobs fail instead of
        waiting forever on a pool that cannot grow."""
        timeout = float(self.settings.pool_ready_timeout) * 60
        every = min(POOL_CHECK_SECONDS, timeout / 4)
        if any(use.watch.troubled for use in self.uses.values()):  # nodes being replaced: look at every poll
            every = min(every, float(self.settings.poll_interval))
        if time.monotonic() - self.last_pool_check < every:
            return {}
        self.last_pool_check = time.monotonic()
        try:
            usable = {c.pool_id: _usable(c) for c in self.batch.client.list_pool_node_counts()}
        except AzureError:
            usable = {}
        stuck = {}
        for use in self.uses.values():
            if usable.get(use.pool_id, 0) > 0:
                use.watch.saw_usable = True
            try:
                self._report_pool_problems(use)
            except AzureError:
                continue
            given_up = use.watch.give_up_message(use.pool_id) if use.created else None
            if given_up and use.job_id in waiting_jobs:
                stuck[use.job_id] = given_up
                continue
            if not use.created or use.job_id not in waiting_jobs or usable.get(use.pool_id, 0) > 0:
                use.unusable_since = None
                continue
            use.unusable_since = use.unusable_since or time.monotonic()
            if time.monotonic() - use.unusable_since >= timeout:
                found = "; ".join(use.problems) or "no Batch error reported (the nodes are still starting)"
                stuck[use.job_id] = (
                    f"SAJE: pool {use.pool_id} has had no usable node for {minutes(self.settings.pool_ready_timeout)} "
                    f"(--saje-pool-ready-timeout) while this job waited: {found}. Fix the cause (quota, image, start task) "
                    "or raise the timeout; the run's job and pool are deleted."
                )
        return stuck

    def _report_pool_problems(self, use: PoolUse) -> None:
        """Report resize errors and failed start tasks once each; on a pool the run created, take
        nodes whose start task failed out so that the pool can replace them (poolwatch.py)."""
        pool = self.batch.get_pool(use.pool_id)
        for error in pool.resize_errors or []:
            if error.code not in use.reported:
                use.reported.add(error.code)
                use.problems.append(f"{error.code}: {error.message}")
                self.logger.error(f"SAJE: pool {use.pool_id} cannot grow: {error.code}: {error.message}")
        failed = self.batch.failed_start_tasks(use.pool_id)
        for node in failed:
            key = f"start:{node.id}"
            if key in use.reported:
                continue
            use.reported.add(key)
            info = node.start_task_info
            failure = info.failure_info if info else None
            code = failure.code if failure else "FailureExitCode"
            target = LOG_DIR / use.pool_id / node.id / "startup-stderr.txt"
            saved = self.batch.download_node_file(use.pool_id, node.id, "startup/stderr.txt", target)
            use.problems.append(f"start task failed on node {node.id} ({code})")
            use.watch.record(StartTaskFailure(node.id, code, info.exit_code if info else None, target if saved else None))
            self.logger.error(f"SAJE: the start task failed on node {node.id} of pool {use.pool_id} ({code})"
                              + (f"; its stderr: {target}" if saved else ""))
        for node in self.batch.unusable_nodes(use.pool_id):
            if f"unusable:{node.id}" in use.reported:
                continue
            use.reported.add(f"unusable:{node.id}")
            errors = "; ".join(_node_error(e) for e in node.errors or []) or "no error reported"
            use.problems.append(f"node {node.id} unusable: {errors}")
            self.logger.error(f"SAJE: node {node.id} of pool {use.pool_id} is unusable: {errors}")
        if not use.created:
            return  # a pool the user manages: reported, never changed
        if failed:
            try:
                self.batch.remove_nodes(use.pool_id, [n.id for n in failed])
                self.logger.info(f"SAJE: node(s) {', '.join(n.id for n in failed)} taken out of pool {use.pool_id} "
                                 "(start task failed) so that the pool can get working ones.")
            except HttpResponseError as exc:  # e.g. the pool is resizing: next check
                self.logger.warning(f"SAJE: could not remove failed nodes from pool {use.pool_id} yet: "
                                    f"{describe_http_error(exc)}")
        elif use.watch.restore_pending and use.watch.fixed_target is not None:
            self._restore_size(use, pool)

    def _restore_size(self, use: PoolUse, pool) -> None:
        """A fixed-size pool lost nodes to start-task failures (removing a node lowers the target):
        once it is steady, resize it back to the size the run asked for."""
        dedicated, spot = use.watch.fixed_target
        if str(pool.allocation_state).lower().endswith("resizing"):
            return
        if (pool.target_dedicated_nodes or 0, pool.target_low_priority_nodes or 0) != (dedicated, spot):
            self.batch.resize_pool(use.pool_id, dedicated, spot)
        use.watch.restore_pending = False

    # ----------------------------------------------------------------- cancel and cleanup
    def cancel_jobs(self, active_jobs: List[SubmittedJobInfo]) -> None:
        """Ctrl-C or an error: terminate every Batch job of the run, one call per Batch job, and
        wait (bounded) until their running tasks have ended as terminated by the user, so that
        nothing runs on when `shutdown`, which Snakemake calls next, deletes jobs and pools.
        Requests still retrying an unreachable service give up soon: Snakemake waits for them."""
        self.patience.cut()
        job_ids = [use.job_id for use in self.uses.values()]
        if not job_ids:
            return
        try:
            problems = self.batch.terminate_jobs(job_ids)
        except Exception as exc:  # cancelling must never stop the clean-up that follows
            problems = dict.fromkeys(job_ids, str(exc))
        for job_id in job_ids:
            if job_id in problems:
                self.logger.warning(f"SAJE: could not terminate Batch job {job_id}: {problems[job_id]}; "
                                    "deleting it ends its tasks.")
            else:
                self.logger.info(f"SAJE: Batch job {job_id} terminated; its running tasks were ended.")

    def shutdown(self) -> None:
        self.patience.cut()  # a status query still retrying must not hold up the end of the run
        try:
            super().shutdown()
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        """Delete the run's Batch jobs, the pools it created (unless keep-pool) and staged blobs.

        Each deletion is tried whatever happened to the others: one failure must not leave the
        rest costing money. Deleting a job also terminates its running tasks. An unreachable
        service gets a short while (not --saje-service-timeout), then each leftover is named
        with the command that deletes it.
        """
        self.heartbeat.stop()
        self._try("look at the run's pools a last time", lambda: self.observer.observe(self.batch, say=False))
        for use in list(self.uses.values()):
            self._try(f"delete Batch job {use.job_id}", self.batch.delete_job, use.job_id,
                      later=f"saje job delete {use.job_id}")
            if use.created and not self.settings.keep_pool:
                if self._try(f"delete pool {use.pool_id}", self.batch.delete_pool, use.pool_id,
                             later=f"saje pool delete {use.pool_id}"):
                    self.observer.pools_deleted([use.pool_id])
                    self.logger.info(f"SAJE: pool {use.pool_id} deleted.")
            elif use.created:
                self.logger.info(f"SAJE: pool {use.pool_id} kept (--saje-keep-pool); delete it with: saje pool delete {use.pool_id}")
        self.uses.clear()
        if self.arm_pools is not None:
            self.arm_pools.close()
            self.arm_pools = None
        self.downloads.close()
        self._try("write the run summary", self.observer.finish)
        if self.staging is not None:
            self._try(f"delete staging container {self.staging.container}", self.staging.delete)
            self.staging = None

    def _try(self, what: str, action, *args, later: str | None = None) -> bool:
        try:
            action(*args)
            return True
        except Exception as exc:  # clean-up must not mask the run's own outcome
            cause = diagnose(exc)
            self.logger.warning(f"SAJE: could not {what} ({cause.code}: {cause.detail})"
                                + (f"; delete it later with: {later}" if later else ""))
            return False


# --------------------------------------------------------------------- helpers
# Batch failure codes of a refused blob transfer ("Batch status and error codes", task table).
_ACCESS_DENIED = ("FileUploadAccessDenied", "BlobAccessDenied")


class InputUse:
    """How many jobs of the run read each input file; those read by more than one are shared, and
    reach each node once through its input cache. Counted again when the DAG grows (checkpoints)."""

    def __init__(self, dag):
        self.dag = dag
        self._jobs = -1
        self._readers: Counter[str] = Counter()

    def shared(self, path: str) -> bool:
        if len(self.dag) != self._jobs:
            self._jobs = len(self.dag)
            self._readers = Counter(f for job in self.dag.needrun_jobs(exclude_finished=False)
                                    for f in {str(f) for f in job.input})
        return self._readers[path] > 1


def _node_error(error) -> str:
    """'Code: message (name: value, ...)' of a BatchNodeError."""
    details = ", ".join(f"{d.name}: {d.value}" for d in error.error_details or [])
    return f"{error.code}: {error.message}" + (f" ({details})" if details else "")


def _usable(counts) -> int:
    """Idle or running nodes of a pool, dedicated and Spot (from list_pool_node_counts)."""
    return sum(getattr(c, "idle", 0) + getattr(c, "running", 0) for c in (counts.dedicated, counts.low_priority) if c)


def _is_loopback(endpoint: str) -> bool:
    """A local endpoint: only labels the run's record and hints ("local emulator"); never changes
    a request, which is the one Azure would get."""
    host = re.sub(r"^\w+://", "", endpoint).split("/")[0].rsplit(":", 1)[0]
    return host in ("localhost", "[::1]") or host.startswith("127.")


def _snakemake_version() -> str:
    from snakemake import __version__

    return __version__


def _check_preemptible_settings(remote) -> None:
    rules = getattr(remote, "preemptible_rules", None)
    if rules is not None and (rules.all or rules.rules) and getattr(remote, "preemptible_retries", 0) is None:
        # Snakemake takes a preemptible rule's restart count from --preemptible-retries alone, and
        # fails with a TypeError on that rule's first error when it is unset.
        raise WorkflowError("SAJE: --preemptible-rules needs --preemptible-retries N too (0 for no retries): "
                            "Snakemake takes the retries of those rules from that setting only.")


def _uses_apptainer(workflow) -> bool:
    """--sdm apptainer: the rules' container: directives apply."""
    from snakemake_interface_executor_plugins.settings import DeploymentMethod

    settings = getattr(workflow, "deployment_settings", None)
    return DeploymentMethod.APPTAINER in set(getattr(settings, "deployment_method", None) or ())


def _container_config(pool) -> object | None:
    vm = pool.virtual_machine_configuration
    return vm.container_configuration if vm is not None else None


def _preemptible(workflow, job) -> bool:
    """--preemptible-rules: a job goes to Spot nodes when its rule (every rule of a group) is listed."""
    rules = getattr(getattr(workflow, "remote_execution_settings", None), "preemptible_rules", None)
    if rules is None:
        return False
    names = list(getattr(job, "rules", None) or [job.name])
    return all(rules.is_preemptible(name) for name in names)


def _local_paths(files) -> list[str]:
    return [str(f) for f in files if os.path.exists(str(f))]


def _checked(command: str, python: str) -> str:
    """Snakemake's job command with the node check (node_check.py) in place of `python -m snakemake`."""
    launch = f"{python} -m snakemake "
    if launch not in command:
        raise WorkflowError(f"SAJE cannot find `{launch.strip()}` in Snakemake's job command, where it puts its node "
                            "check; this Snakemake version builds job commands differently.")
    before, _, after = command.rpartition(launch)  # the job's own Snakemake comes after any --precommand
    return f"{before}{python} {NODE_CHECK_PATH} {after}"


def _node_check_refusal(stderr: Path) -> str:
    """The node check's message (node_check.failure_message) from the end of a task's stderr."""
    text = stderr.read_text(errors="replace")
    start = text.rfind(node_check.HEADER)
    return text[start + len(node_check.HEADER):].strip() if start >= 0 else ""


async def _retrieve_checkpoint_outputs(job) -> list[str]:
    """Default storage: the outputs of a finished checkpoint, to their local copies. Snakemake
    evaluates the functions that read them here (`glob_wildcards` over a checkpoint's directory),
    as it does after a checkpoint ran locally; returns those that could not be fetched."""
    failed = []
    jobs = list(job.jobs) if job.is_group() else [job]
    for f in [f for one in jobs if one.is_checkpoint for f in one.output]:
        if getattr(f, "is_storage", False):
            try:
                await f.retrieve_from_storage()
            except Exception as exc:  # noqa: BLE001 - the job fails with the reason; the run goes on
                failed.append(f"{f} (retrieval failed: {exc})")
    return failed


def _products(job: JobExecutorInterface) -> tuple[list, list, list]:
    """(outputs, logs, benchmarks) of a job, of all its jobs for a group job: a group runs as one
    task, and Snakemake checks the outputs of every job in it (intermediate ones included)."""
    jobs = list(getattr(job, "jobs", None) or [job]) if job.is_group() else [job]
    outputs, logs, benchmarks = [], [], []
    for one in jobs:
        outputs.extend(one.output or [])
        logs.extend(one.log or [])
        benchmark = getattr(one, "benchmark", None)
        benchmarks.extend([benchmark] if benchmark else [])
    return outputs, logs, benchmarks


def _path(f, path: str | None = None) -> str:
    """A file's path (here, or `path`), with a trailing '/' for a directory."""
    name = path or str(f)
    return name.rstrip("/") + "/" if getattr(f, "is_directory", False) else name


def _output_paths(job: JobExecutorInterface) -> list[str]:
    """Outputs, logs and benchmarks of a job (all jobs of a group), directories with a trailing '/'."""
    return list(dict.fromkeys(_path(f) for files in _products(job) for f in files))


def _shape_of_existing(pool, pool_class: pools.PoolClass) -> mapping.PoolShape:
    from . import catalogue

    size = catalogue.vm_size(pool.vm_size or "")
    return mapping.PoolShape(
        pool_id=pool.id, vm_size=pool.vm_size or "?", vcpus=size.vcpus if size else int(pool.task_slots_per_node or 1),
        slots_per_node=int(pool.task_slots_per_node or 1),
        max_nodes=100 if pool.enable_inter_node_communication else 1000,
        memory_gib=size.memory_gib if size else None, gpus=size.gpus if size else 0,
        mpi=bool(pool.enable_inter_node_communication),
    )


_RULE_OUTPUT_ENDS = ("RuleException", "Error in rule ", "Traceback (most recent call last)")
# Launcher lines that healthy runs print too, so they never say why a task failed: Open MPI's
# ssh launcher warning when it cannot put its ssh child in a process group of its own, and
# ssh's note on a host key it has just learnt. A long digest leaves them out before any other.
_LAUNCHER_NOISE = re.compile(r"plm:ssh: Warning: setpgid\(|^Warning: Permanently added .* to the list of known hosts")


def _shortened(said: list[str], keep: int) -> list[str]:
    """At most `keep` lines of what the ranks and the launcher said: the launcher's known noise
    goes first, then the middle (the first lines name the cause, the last ones are the
    launcher's summary)."""
    if len(said) <= keep:
        return said
    telling = [ln for ln in said if not _LAUNCHER_NOISE.search(ln)]
    noise = len(said) - len(telling)
    room = keep - 1 if noise else keep
    if len(telling) > room:
        head = room // 3
        telling = [*telling[:head], f"... ({len(telling) - room + 1} lines left out, all in stderr.txt)",
                   *telling[len(telling) - (room - head - 1):]]
    if noise:
        telling.append(f"({noise} launcher warning line(s) left out, all in stderr.txt)")
    return telling


def _mpi_failure_digest(task_id: str, outcome, subtasks, addresses: dict[str, str], stderr: str,
                        keep: int = 12) -> str:
    """What a failed MPI task's error message shows: its nodes (the primary ran the launcher,
    subtasks the coordination command), failed subtasks, and the last `keep` lines the rule's
    command wrote to stderr on the primary (the ranks' and the launcher's messages, without
    Snakemake's own job header and traceback around them; a third of them from the start)."""
    lines = stderr.replace("\x00", "").splitlines()
    start = 0
    for i, line in enumerate(lines):  # Snakemake's job header ends with its "resources:" line
        if line.startswith("    resources: "):
            start = i + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith(_RULE_OUTPUT_ENDS)), len(lines))
    said = _shortened([ln.rstrip() for ln in lines[start:end] if ln.strip() and set(ln.strip()) != {"-"}], keep)
    out = [f"MPI task {task_id}: {1 + len(subtasks)} node(s), exit code {outcome.exit_code} on the primary"]
    primary = outcome.node_id or "?"
    out.append(f"  primary    node {primary} ({addresses.get(primary, '?')}): ran the MPI launcher")
    failed = []
    for sub in sorted(subtasks, key=lambda s: int(s.id or 0)):
        node = sub.node_info.node_id if sub.node_info else "?"
        code = sub.exit_code
        state = f"coordination command exit code {code}" if code is not None else f"state {sub.state}"
        if code not in (0, None) or sub.failure_info is not None:
            failed.append(f"subtask {sub.id} on node {node}")
        out.append(f"  subtask {sub.id:<3} node {node} ({addresses.get(node, '?')}): {state}")
    if failed:
        out.append("failed: " + ", ".join(failed) + " (its logs are among the log files below)")
    if not stderr:
        out.append("the task's stderr.txt could not be downloaded (its node may have left the pool already)")
    else:
        out.append("the ranks' and the launcher's stderr on the primary (last lines):" if said
                   else "nothing on stderr from the ranks or the launcher")
    out.extend(f"  {ln}" for ln in said)
    return "\n".join(out) + "\n"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
