"""Core quotas of the emulated Batch account: which quota a new node would pass, and its settings."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from snakemake_executor_saje import catalogue
from snakemake_executor_saje.commands.emulator import quota_settings
from snakemake_executor_saje.emulator.quotas import CoreQuotas, InUse, parse_setting, refusal

HB = "standardHBv3Family"
D = "standardDSv5Family"


def test_defaults_are_a_new_accounts():
    quotas = CoreQuotas()
    assert (quotas.dedicated, quotas.low_priority) == (900, 100)
    assert quotas.family(HB) == 900  # no published per-series default: bounded by the total


def test_a_series_quota_stops_that_series_only():
    quotas = CoreQuotas(per_family={HB.lower(): 240})
    two_hb = [InUse(HB, 120, True)] * 2
    code, message = refusal(quotas, two_hb, InUse(HB, 120, True))
    assert code == "AccountVMSeriesCoreQuotaReached" and HB in message and "240 cores" in message
    assert refusal(quotas, two_hb, InUse(D, 8, True)) is None  # another series still fits


def test_the_total_dedicated_quota_counts_every_series():
    quotas = CoreQuotas(dedicated=130)
    assert refusal(quotas, [InUse(HB, 120, True)], InUse(D, 8, True)) is None
    code, _ = refusal(quotas, [InUse(HB, 120, True), InUse(D, 8, True)], InUse(D, 8, True))
    assert code == "AccountCoreQuotaReached"


def test_spot_has_one_quota_across_series_and_does_not_count_dedicated():
    quotas = CoreQuotas(dedicated=8, low_priority=16)
    in_use = [InUse(D, 8, True), InUse(HB, 8, False)]
    assert refusal(quotas, in_use, InUse(D, 8, False)) is None
    code, _ = refusal(quotas, [*in_use, InUse(D, 8, False)], InUse(D, 2, False))
    assert code == "AccountLowPriorityCoreQuotaReached"


def test_settings_from_the_command_line():
    assert parse_setting("standardHBv3Family=480") == ("standardHBv3Family", 480)
    with pytest.raises(ValueError, match="NAME=CORES"):
        parse_setting("dedicated:5")
    assert quota_settings([("dedicated", 16), ("lowpriority", 0), (HB, 480)]) == {
        "dedicated_core_quota": 16, "low_priority_core_quota": 0, "vm_family_core_quotas": {HB: 480}}


def test_node_agent_end_of_life_from_the_supported_images_list():
    assert catalogue.node_agent_end_of_life("batch.node.ubuntu 20.04") == datetime(2025, 4, 30, tzinfo=timezone.utc)
    assert catalogue.node_agent_end_of_life("batch.node.ubuntu 24.04") is None  # no date announced
    assert catalogue.node_agent_end_of_life("batch.node.nothing") is None
