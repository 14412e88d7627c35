"""The core quotas of a Batch account (Batch service allocation mode) and the resize errors that
stop a pool when they are reached.

Azure counts vCPUs of the nodes a pool holds: dedicated ones against the account's total dedicated
quota and against the quota of their VM series (family), Spot/low-priority ones against a single
value across all series ("Low-priority quota is a single value across all VM series", Batch
service quotas and limits, learn.microsoft.com/azure/batch/batch-quota-limit). A resize that would
pass a quota allocates what fits and stops with a resize error naming the quota.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

# Resize error codes: PoolResizeErrorCodes in azure-sdk-for-net (Microsoft.Azure.Batch/src/Common/
# BatchErrorCodeStrings.cs) for the account-wide ones; the per-series code as Microsoft's own
# Batch client code meets it (microsoft/ga4gh-tes, src/GenerateBatchVmSkus/AzureBatchSkuValidator.cs).
DEDICATED = "AccountCoreQuotaReached"
VM_SERIES = "AccountVMSeriesCoreQuotaReached"
LOW_PRIORITY = "AccountLowPriorityCoreQuotaReached"

# A new Batch account's defaults: the top of the documented ranges (dedicated cores 0-900,
# low-priority cores 0-100 per Batch account; Azure lowers them in some regions and subscription
# types, down to 0). Azure publishes no per-series default: a series not set is bounded by the total.
DEFAULT_DEDICATED = 900
DEFAULT_LOW_PRIORITY = 100


@dataclass(frozen=True)
class CoreQuotas:
    dedicated: int = DEFAULT_DEDICATED
    low_priority: int = DEFAULT_LOW_PRIORITY
    per_family: Mapping[str, int] = field(default_factory=dict)  # e.g. {"standardHBv3Family": 480}

    def family(self, name: str) -> int:
        """The dedicated quota of one VM series (case-insensitive, as Azure names them)."""
        for key, value in self.per_family.items():
            if key.lower() == name.lower():
                return value
        return self.dedicated


@dataclass(frozen=True)
class InUse:
    """A node that counts against the quotas: its VM series, vCPUs and whether it is dedicated."""

    family: str
    vcpus: int
    dedicated: bool


def refusal(quotas: CoreQuotas, in_use: Iterable[InUse], new: InUse) -> tuple[str, str] | None:
    """(resize error code, message) when adding `new` would pass a quota, else None."""
    nodes = list(in_use)
    if not new.dedicated:
        used = sum(n.vcpus for n in nodes if not n.dedicated)
        if used + new.vcpus > quotas.low_priority:
            return LOW_PRIORITY, _message("Spot/low-priority", quotas.low_priority, used, new.vcpus)
        return None
    used = sum(n.vcpus for n in nodes if n.dedicated)
    if used + new.vcpus > quotas.dedicated:
        return DEDICATED, _message("total dedicated", quotas.dedicated, used, new.vcpus)
    family_used = sum(n.vcpus for n in nodes if n.dedicated and n.family.lower() == new.family.lower())
    family_quota = quotas.family(new.family)
    if family_used + new.vcpus > family_quota:
        return VM_SERIES, _message(f"dedicated {new.family}", family_quota, family_used, new.vcpus)
    return None


def _message(which: str, quota: int, used: int, wanted: int) -> str:
    return (f"The Batch account's {which} core quota is {quota} cores, {used} are in use and a node needs "
            f"{wanted}: the pool cannot grow further. Request a quota increase (Batch account > Quotas) "
            f"or lower the pool's target.")


def parse_setting(text: str) -> tuple[str, int]:
    """'dedicated=900', 'lowpriority=100', 'standardHBv3Family=480' -> (name, cores)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip().isdigit():
        raise ValueError(f"a core quota is NAME=CORES (dedicated, lowpriority or a VM series such as "
                         f"standardHBv3Family), got {text!r}")
    return name.strip(), int(value)
