"""The emulator's knobs. Durations are the service's own, in service seconds (see clock.py):
defaults are Azure-like, and `time_scale` makes them pass faster instead of shortening them."""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from . import quotas


def new_account_key() -> str:
    """A random 64-byte key, base64 like a real Batch account key."""
    return base64.b64encode(os.urandom(64)).decode()


@dataclass
class EmulatorConfig:
    data_dir: Path
    account_name: str = "sajelocal"
    # None: the data dir's key (made once, kept in account.json, so restarts keep it).
    account_key: str | None = field(default=None, repr=False)
    region: str = "local"
    host: str = "127.0.0.1"
    port: int = 0  # 0: the port the data dir served on before, else a free one the OS picks
    tls: bool = False  # HTTPS with a generated self-signed certificate (bearer tokens need it)
    persist: bool = True  # SQLite under data_dir; False keeps state in memory only
    # How many times faster than the host's clock the service's clock runs (clock.py): 60 makes
    # Azure's 5-minute autoscale interval pass in 5 s. Task processes always run in real time.
    time_scale: float = 1.0
    # The service clock's reading at start (default: the host's clock). Another time emulates a
    # service whose clock is skewed against its clients' (clients must never rely on agreement).
    clock_start: datetime | None = None
    # Service seconds a node spends in 'creating' and in 'starting' before it can run its start
    # task (an Azure node takes a few minutes from allocation to idle).
    node_boot_seconds: float = 60.0
    # Service seconds a deleted pool stays visible in state 'deleting' (Azure: minutes).
    pool_delete_seconds: float = 60.0
    # How often the pool metrics ($PendingTasks, ...) are sampled for autoscale formulas.
    autoscale_sample_interval: timedelta = timedelta(seconds=30)
    # Core quotas of the account (quotas.py): total dedicated, Spot/low-priority, and dedicated per
    # VM series (family name -> cores; a series not named is bounded by the total). Defaults: a new
    # account's, at the top of the ranges Azure documents.
    dedicated_core_quota: int = quotas.DEFAULT_DEDICATED
    low_priority_core_quota: int = quotas.DEFAULT_LOW_PRIORITY
    vm_family_core_quotas: dict[str, int] = field(default_factory=dict)
    scheduler_tick_seconds: float = 0.05
    # Blob service linked as the account's auto-storage (autoStorageContainerName resource files).
    auto_storage_connection_string: str | None = field(default=None, repr=False)
    # A catalogue file overriding the bundled VM sizes (``saje emulator start --vm-size FILE``).
    vm_size_catalogue: Path | None = None
    # Addresses are handed out from 127.<subnet>.x.y so concurrent emulators do not collide.
    address_subnet: int | None = None
    # With tls: the machine's CA certificates and the emulator's own, which the node agent and the
    # nodes' tasks trust (as Azure nodes trust the certificates of Azure's endpoints).
    ca_bundle: Path | None = None

    @property
    def core_quotas(self) -> quotas.CoreQuotas:
        return quotas.CoreQuotas(self.dedicated_core_quota, self.low_priority_core_quota, dict(self.vm_family_core_quotas))

    @property
    def db_path(self) -> Path | None:
        return self.data_dir / "batch.sqlite" if self.persist else None
