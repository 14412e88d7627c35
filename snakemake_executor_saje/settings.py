"""The plugin's settings: ``--saje-*`` flags and ``SNAKEMAKE_SAJE_*`` variables.

Snakemake builds the argument parser from these dataclass fields, so every
field has a default and help text. Do not add ``from __future__ import
annotations`` here: Snakemake reads ``field.type`` as a real type.

Secrets (``account_key``, ``container_registry_password``) are fields only so
that they can come from the environment; their help says so, they have no
default, and they are left out of ``repr`` so that a logged settings object
never shows them.
"""

import datetime
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Optional

from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.settings import (
    CommonSettings,
    ExecutorSettingsBase,
)

__all__ = [
    "ExecutorSettings",
    "common_settings",
    "DEFAULT_CREDENTIALS_FILE",
    "MPI_FLAVORS",
    "SNAKEMAKE_INSTALL_MODES",
    "CONTAINER_TYPES",
    "AZURE_AUTOSCALE_INTERVAL_MINUTES",
    "autoscale_interval_problem",
]

DEFAULT_CREDENTIALS_FILE = Path("~/.azure/saje.json")
MPI_FLAVORS = ("auto", "openmpi", "mpich", "intelmpi")
SNAKEMAKE_INSTALL_MODES = ("pip", "container", "none")
CONTAINER_TYPES = ("dockerCompatible", "criCompatible")
# Azure Batch refuses an autoscale evaluation interval outside 5 minutes to 168
# hours (REST reference, autoScaleEvaluationInterval), and so does the emulator:
# local runs are quick because the emulator's clock runs faster, not because
# SAJE sends it values Azure would refuse.
AZURE_AUTOSCALE_INTERVAL_MINUTES = (5.0, 168 * 60.0)


def autoscale_interval_problem(minutes: float, flag: str) -> Optional[str]:
    """Why `minutes` cannot be an autoscale evaluation interval on Azure Batch, or None."""
    low, high = AZURE_AUTOSCALE_INTERVAL_MINUTES
    if low <= minutes <= high:
        return None
    return (
        f"{flag} must be between {low:g} minutes and {high / 60:g} hours (Azure Batch's"
        f" range), got {minutes:g} minutes"
    )
# The run-wide safety net: generous enough for any real run, finite so nothing runs for ever.
JOB_MAX_WALL_CLOCK_MINUTES = 7 * 24 * 60


ENV_PREFIX = "SNAKEMAKE_SAJE_"


def _help(text: str, *, secret: bool = False, default_text: str | None = None, **extra):
    """A field's metadata: its help (ending added by `_documented`) and env_var, so that
    every setting can also come from SNAKEMAKE_SAJE_<NAME>. ``default_text`` says what an
    unset (None) default means, e.g. "the VM size's vCPUs"."""
    meta = {"help": text, "env_var": True, **extra}
    if default_text:
        meta["default_text"] = default_text
    if secret:
        meta["secret"] = True
        meta["help"] += (
            " Secret: set it only through the environment variable, never on the"
            " command line or in a profile; it is never printed."
        )
    return meta


def _shown_default(f) -> str:
    if f.metadata.get("default_text"):
        return f.metadata["default_text"]
    value = f.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def env_var(name: str) -> str:
    """The variable a setting comes from: what Snakemake's plugin interface derives from the
    field (PluginBase.get_envvar), SNAKEMAKE_SAJE_<NAME>."""
    return ENV_PREFIX + name.upper()


def _documented(cls):
    """Every field's help ends with its default and its variable, generated from the field so
    that no help can state a stale default. The variable is written as configargparse
    writes it ("   [env var: X]"), so `snakemake --help` does not repeat it."""
    for f in fields(cls):
        meta = dict(f.metadata)
        meta["help"] = f"{meta['help'].rstrip()} (default: {_shown_default(f)})   [env var: {env_var(f.name)}]"
        f.metadata = MappingProxyType(meta)
    return cls


@_documented
@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    # --- where and who -------------------------------------------------------
    account_url: Optional[str] = field(
        default=None,
        metadata=_help(
            "Batch account endpoint, e.g. https://myaccount.eastus.batch.azure.com"
            " (or http://127.0.0.1:PORT/ACCOUNT for the emulator). Falls back to the"
            " profile's batch_account_url.",
        ),
    )
    credential_profile: Optional[str] = field(
        default=None,
        metadata=_help(
            "Name of a profile in the credentials file. Unset: DefaultAzureCredential"
            " (az login, managed identity, AZURE_* environment) or shared key when"
            " account name and key are set.",
        ),
    )
    credentials_file: Path = field(
        default=DEFAULT_CREDENTIALS_FILE,
        metadata=_help(
            "JSON file with named credential profiles; must be private (chmod 600).",
        ),
    )
    account_name: Optional[str] = field(
        default=None,
        metadata=_help(
            "Batch account name for shared-key authentication (the emulator).",
        ),
    )
    account_key: Optional[str] = field(
        default=None,
        repr=False,
        metadata=_help(
            "Batch account key for shared-key authentication.", secret=True
        ),
    )
    # --- pools ----------------------------------------------------------------
    pool_id: Optional[str] = field(
        default=None,
        metadata=_help(
            "Run every non-MPI job on this existing pool instead of creating pools."
            " It is never resized or deleted."
        ),
    )
    vm_size: str = field(
        default="Standard_D2s_v5",
        metadata=_help("VM size of the pools SAJE creates for ordinary jobs."),
    )
    image: str = field(
        default="canonical:ubuntu-24_04-lts:server",
        metadata=_help(
            "Node image: publisher:offer:sku[:version] from the Marketplace, or an"
            " Azure Compute Gallery image (version) resource id."
        ),
    )
    node_agent_sku: Optional[str] = field(
        default=None,
        metadata=_help(
            "Batch node agent SKU id, e.g. 'batch.node.ubuntu 24.04'. Derived from"
            " the image when unset; required for gallery images."
        ),
    )
    task_slots_per_node: Optional[int] = field(
        default=None,
        metadata=_help(
            "Task slots per node of ordinary pools (a job takes as many slots as it"
            " has threads).",
            default_text="the VM size's vCPUs",
        ),
    )
    nodes: Optional[int] = field(
        default=None,
        metadata=_help(
            "Fixed node count for created pools. Unset: autoscale between"
            " --saje-min-nodes and --saje-max-nodes."
        ),
    )
    min_nodes: int = field(
        default=0,
        metadata=_help("Autoscale lower bound (0 lets an idle pool cost nothing)."),
    )
    max_nodes: int = field(
        default=10, metadata=_help("Autoscale upper bound for ordinary pools.")
    )
    autoscale_formula: Optional[str] = field(
        default=None,
        metadata=_help(
            "Replace SAJE's autoscale formula (docs/usage.md#pools-and-autoscale). {min_nodes},"
            " {max_nodes} and {slots_per_node} are substituted."
        ),
    )
    autoscale_interval: float = field(
        default=5.0,
        metadata=_help(
            "Autoscale evaluation interval in minutes, 5 to 10080 (168 hours) as on"
            " Azure Batch; the emulator enforces the same range and runs its clock"
            " faster instead (saje emulator start --time-scale)."
        ),
    )
    spot: bool = field(
        default=False,
        metadata=_help(
            "Put every ordinary job on spot (low-priority) nodes. Use"
            " --preemptible-rules to choose rules instead."
        ),
    )
    keep_pool: bool = field(
        default=False,
        metadata=_help(
            "Keep the pools SAJE created after the run (they keep costing money"
            " while they have nodes)."
        ),
    )
    node_identity: Optional[str] = field(
        default=None,
        metadata=_help(
            "A user-assigned managed identity (its ARM resource id, /subscriptions/.../providers/"
            "Microsoft.ManagedIdentity/userAssignedIdentities/NAME) given to the pools SAJE creates, which"
            " then reach storage with it: the run's files travel with no SAS, and tasks get its tokens"
            " (docs/usage.md#managed-identity-on-the-nodes). Pools are then created through Azure Resource"
            " Manager, which needs a subscription id and an Entra ID credential.",
        ),
    )
    subnet_id: Optional[str] = field(
        default=None,
        metadata=_help("Virtual network subnet resource id for created pools."),
    )
    pool_ready_timeout: float = field(
        default=30,
        metadata=_help(
            "Minutes a pool created for the run may go without a usable node while the run's"
            " tasks wait on it (quota reached, image or start task failing). Then those jobs"
            " fail with the pool's Batch errors, and the job and pool are deleted."
        ),
    )
    heartbeat_interval: float = field(
        default=5,
        metadata=_help(
            "Minutes between the run's heartbeats: the time written into the metadata of its pools,"
            " jobs and staging container, by which `saje cleanup` and a rerun tell a run whose"
            " Snakemake died (no heartbeat for 3 intervals) from a live one."
        ),
    )
    # --- software on the node ----------------------------------------------------
    snakemake_install: str = field(
        default="pip",
        metadata=_help(
            "How nodes get Snakemake: 'pip' installs the version running here in the"
            " pool's start task, 'container' runs every job in Snakemake's --container-image"
            " (its default too, snakemake/snakemake:v<version>), 'none' trusts the node image to"
            " have it. A --container-image other than Snakemake's default always runs jobs in"
            " that image (docs/usage.md#containers).",
            choices=list(SNAKEMAKE_INSTALL_MODES),
        ),
    )
    snakemake_version: Optional[str] = field(
        default=None,
        metadata=_help(
            "Snakemake version installed on nodes with --saje-snakemake-install pip.",
            default_text="the version running here",
        ),
    )
    start_task: Optional[str] = field(
        default=None,
        metadata=_help(
            "Shell command run as root on every node of the pools SAJE creates, after SAJE's own"
            " set-up and before the node takes tasks (installing tools). A failure is reported"
            " like any start-task failure, with the node's stderr.",
        ),
    )
    start_task_script: Optional[Path] = field(
        default=None,
        metadata=_help(
            "Local script uploaded with the run and run with bash, as root, on every node of the"
            " pools SAJE creates, after --saje-start-task.",
        ),
    )
    app_packages: Optional[str] = field(
        default=None,
        metadata=_help(
            "Application packages every job's task needs (uploaded with `saje app upload`):"
            " NAME:VERSION or NAME (its default version), separated by spaces or commas. Batch"
            " unpacks each on the node; the task finds it in $AZ_BATCH_APP_PACKAGE_<NAME>_<VERSION>"
            " (per rule: resources saje_app_packages).",
        ),
    )
    container_type: str = field(
        default="dockerCompatible",
        metadata=_help(
            "Container technology of the pools that run jobs in containers (Batch's"
            " containerConfiguration.type): dockerCompatible or criCompatible. The image is"
            " Snakemake's --container-image (per rule: resources saje_container).",
            choices=list(CONTAINER_TYPES),
        ),
    )
    container_registry: Optional[str] = field(
        default=None,
        metadata=_help("Registry server of a private container image, e.g. x.azurecr.io."),
    )
    container_registry_username: Optional[str] = field(
        default=None,
        metadata=_help("User name for the container registry."),
    )
    container_registry_password: Optional[str] = field(
        default=None,
        repr=False,
        metadata=_help("Password for the container registry.", secret=True),
    )
    mounts: Optional[str] = field(
        default=None,
        metadata=_help(
            "File systems every node of the pools SAJE creates mounts under $AZ_BATCH_NODE_MOUNTS_DIR/PATH:"
            " 'PATH=URL' entries separated by spaces, URL nfs://HOST/EXPORT, smb://USER@SERVER/SHARE,"
            " https://ACCOUNT.file.core.windows.net/SHARE (Azure Files) or"
            " https://ACCOUNT.blob.core.windows.net/CONTAINER (blobfuse); ?options=... are mount options,"
            " ?secret_env=VAR names the variable holding the key, password or SAS"
            " (docs/usage.md#file-shares-and-mounts).",
        ),
    )
    # --- data ---------------------------------------------------------------------
    storage_account_url: Optional[str] = field(
        default=None,
        metadata=_help(
            "Blob endpoint SAJE stages through, e.g. https://acct.blob.core.windows.net:"
            " the workflow sources in every run, and input and output files too when"
            " no default storage provider is set. AZURE_STORAGE_CONNECTION_STRING, when"
            " set, is used instead.",
        ),
    )
    storage_container: str = field(
        default="saje",
        metadata=_help(
            "Name prefix of the blob container each run stages through"
            " (<prefix>-<run id>); the run deletes it at the end."
        ),
    )
    # --- tasks --------------------------------------------------------------------
    task_retries: int = field(
        default=0,
        metadata=_help(
            "Times Batch itself retries a failed task, on the same node-side task id"
            " (-1: no limit). Snakemake's --retries and --preemptible-retries are"
            " separate: each Snakemake retry is a new task."
        ),
    )
    max_wall_clock: Optional[float] = field(
        default=None,
        metadata=_help(
            "Wall-clock limit in minutes (fractions allowed) for tasks whose rule sets no runtime.",
            default_text="no limit",
        ),
    )
    job_max_wall_clock: float = field(
        default=JOB_MAX_WALL_CLOCK_MINUTES,
        metadata=_help(
            "Wall-clock limit in minutes of every Batch job SAJE creates (one per pool per run),"
            " counted from its creation: Batch then terminates the job and its running tasks, so"
            " a run whose Snakemake died cannot keep nodes busy for ever. 0: no limit.",
            default_text=f"{JOB_MAX_WALL_CLOCK_MINUTES} (7 days)",
        ),
    )
    sas_allowance: float = field(
        default=24 * 60.0,
        metadata=_help(
            "Minutes a task's SAS tokens (its access to staged files) live beyond its"
            " wall-clock limit: time to wait for a node and to upload its outputs. A task"
            " with no wall-clock limit (resources runtime, --saje-max-wall-clock) gets 7 days."
        ),
    )
    poll_interval: float = field(
        default=10.0,
        metadata=_help("Seconds between status polls (one list call for the whole run)."),
    )
    progress_interval: float = field(
        default=5.0,
        metadata=_help(
            "At most one progress line (nodes by state, tasks queued/running/done, the reason"
            " tasks wait, the cost so far) every this many seconds, and only when something"
            " changed. 0: no progress lines (the end-of-run summary is still written)."
        ),
    )
    service_timeout: float = field(
        default=30.0,
        metadata=_help(
            "Minutes SAJE keeps retrying Azure Batch while it is unreachable or throttling"
            " (connection refused or reset, timeouts, 429, 503); then the waiting jobs fail"
            " with the cause. Errors no retry can fix (a refused key, the run's job deleted)"
            " fail them at once."
        ),
    )
    # --- MPI ----------------------------------------------------------------------
    mpi_vm_size: str = field(
        default="Standard_HB120rs_v3",
        metadata=_help("VM size of MPI pools (an RDMA/InfiniBand size)."),
    )
    mpi_image: str = field(
        default="microsoft-dsvm:ubuntu-hpc:2404",
        metadata=_help(
            "Image of MPI pools: publisher:offer:sku[:version] or a gallery image id."
        ),
    )
    mpi_node_agent_sku: Optional[str] = field(
        default=None,
        metadata=_help(
            "Node agent SKU id for --saje-mpi-image when it cannot be derived."
        ),
    )
    mpi_max_nodes: int = field(
        default=4,
        metadata=_help(
            "Largest node count of an MPI pool, and so of one MPI job (Batch allows"
            " at most 100 with inter-node communication)."
        ),
    )
    mpi_flavor: str = field(
        default="auto",
        metadata=_help(
            "MPI implementation whose launcher environment SAJE prepares when it"
            " cannot be detected (per rule: resources saje_mpi_flavor).",
            choices=list(MPI_FLAVORS),
        ),
    )
    mpi_allow_spot: bool = field(
        default=False,
        metadata=_help(
            "Allow spot nodes for MPI pools. A preempted node kills the whole MPI job,"
            " which is then retried."
        ),
    )

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise WorkflowError("Invalid SAJE settings: " + "; ".join(problems))

    def _problems(self):
        if self.nodes is not None and self.nodes < 0:
            yield f"--saje-nodes must be >= 0, got {self.nodes}"
        if self.min_nodes < 0:
            yield f"--saje-min-nodes must be >= 0, got {self.min_nodes}"
        if self.max_nodes < self.min_nodes:
            yield (
                f"--saje-max-nodes ({self.max_nodes}) is below --saje-min-nodes"
                f" ({self.min_nodes})"
            )
        interval = autoscale_interval_problem(self.autoscale_interval, "--saje-autoscale-interval")
        if interval:
            yield interval
        if self.task_slots_per_node is not None and self.task_slots_per_node < 1:
            yield f"--saje-task-slots-per-node must be >= 1, got {self.task_slots_per_node}"
        if self.task_retries < -1:
            yield f"--saje-task-retries must be >= -1 (-1: unlimited), got {self.task_retries}"
        if self.max_wall_clock is not None and self.max_wall_clock <= 0:
            yield f"--saje-max-wall-clock must be > 0 minutes, got {self.max_wall_clock}"
        if self.sas_allowance <= 0:
            yield f"--saje-sas-allowance must be > 0 minutes, got {self.sas_allowance}"
        if not 1 <= self.mpi_max_nodes <= 100:
            yield (
                f"--saje-mpi-max-nodes must be between 1 and 100 (Batch's limit for"
                f" inter-node communication), got {self.mpi_max_nodes}"
            )
        if self.snakemake_install not in SNAKEMAKE_INSTALL_MODES:
            yield (
                f"--saje-snakemake-install must be one of {', '.join(SNAKEMAKE_INSTALL_MODES)},"
                f" got {self.snakemake_install!r}"
            )
        if self.container_type not in CONTAINER_TYPES:
            yield f"--saje-container-type must be one of {', '.join(CONTAINER_TYPES)}, got {self.container_type!r}"
        if self.mpi_flavor not in MPI_FLAVORS:
            yield f"--saje-mpi-flavor must be one of {', '.join(MPI_FLAVORS)}, got {self.mpi_flavor!r}"
        if self.start_task_script is not None and not Path(self.start_task_script).expanduser().is_file():
            yield f"--saje-start-task-script {self.start_task_script} is not a file"
        if self.app_packages:
            from .mapping import JobMappingError, parse_app_packages

            try:
                parse_app_packages(self.app_packages, "--saje-app-packages")
            except JobMappingError as exc:
                yield str(exc)
        if self.node_identity:
            from .armpools import is_user_assigned_identity

            if not is_user_assigned_identity(self.node_identity):
                yield (f"--saje-node-identity {self.node_identity!r} is not the resource id of a user-assigned identity:"
                       " /subscriptions/SUB/resourceGroups/GROUP/providers/Microsoft.ManagedIdentity/"
                       "userAssignedIdentities/NAME (az identity show --query id)")
        if self.mounts:
            from .mounts import MountSettingError, parse_mounts

            try:
                parse_mounts(self.mounts, node_identity=getattr(self, "node_identity", None))
            except MountSettingError as exc:
                yield str(exc)
        if self.job_max_wall_clock < 0:
            yield f"--saje-job-max-wall-clock must be >= 0 minutes (0: no limit), got {self.job_max_wall_clock}"
        if self.poll_interval <= 0:
            yield f"--saje-poll-interval must be > 0 seconds, got {self.poll_interval}"
        if self.service_timeout <= 0:
            yield f"--saje-service-timeout must be > 0 minutes, got {self.service_timeout}"
        if self.pool_ready_timeout <= 0:
            yield f"--saje-pool-ready-timeout must be > 0 minutes, got {self.pool_ready_timeout}"
        if self.progress_interval < 0:
            yield f"--saje-progress-interval must be >= 0 seconds (0: no progress lines), got {self.progress_interval}"
        if self.heartbeat_interval <= 0:
            yield f"--saje-heartbeat-interval must be > 0 minutes, got {self.heartbeat_interval}"

    @property
    def job_wall_clock(self) -> "datetime.timedelta | None":
        """The Batch jobs' maxWallClockTime, None for no limit."""
        minutes = float(self.job_max_wall_clock)
        return datetime.timedelta(minutes=minutes) if minutes > 0 else None

    @property
    def autoscale(self) -> bool:
        """True when created pools autoscale (no fixed --saje-nodes)."""
        return self.nodes is None


# How Snakemake must treat this executor. The choices that are not defaults:
# - can_transfer_local_files=True: SAJE stages the workflow sources and local
#   files itself (staging.py), so a run works with no default storage provider
#   at all. Snakemake then neither uploads a source archive nor adds
#   --deploy-sources to the job command, in both data routes.
# - pass_envvar_declarations_to_cmd=False: declared environment variables
#   (often secrets, e.g. storage keys) must not be written into the command
#   line as `export X=...`; the executor passes them as the task's
#   environmentSettings instead.
# - auto_deploy_default_storage_provider=False: otherwise every job would
#   `pip install` every registered storage plugin before it runs. The pool's
#   start task installs Snakemake and the storage plugins once per node.
# - pass_group_args=True: a group job runs as one task, and the Snakemake
#   inside it needs the group arguments to run the whole group locally.
common_settings = CommonSettings(
    non_local_exec=True,
    implies_no_shared_fs=True,
    job_deploy_sources=True,
    pass_default_storage_provider_args=True,
    pass_default_resources_args=True,
    pass_envvar_declarations_to_cmd=False,
    auto_deploy_default_storage_provider=False,
    init_seconds_before_status_checks=0,
    pass_group_args=True,
    can_transfer_local_files=True,
)
