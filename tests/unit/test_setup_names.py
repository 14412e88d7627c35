"""Azure's naming rules, checked before the setup workflows make any call."""
from __future__ import annotations

import pytest

from snakemake_executor_saje.setup import names
from snakemake_executor_saje.setup.names import NameRuleError


@pytest.mark.parametrize("good", ["abc", "sajestore1234", "a" * 24, "0123456789"])
def test_storage_and_batch_names_accept_3_to_24_lower_alnum(good):
    assert names.check_storage_account(good) == good
    assert names.check_batch_account(good) == good


@pytest.mark.parametrize("bad, words", [
    ("ab", "2 characters, not 3-24"), ("a" * 25, "25 characters"), ("Upper123", "upper-case"),
    ("with-dash", "characters other than letters and digits ('-')"), ("", "non-empty"), (None, "non-empty"),
])
def test_storage_names_azure_refuses_say_why(bad, words):
    with pytest.raises(NameRuleError) as err:
        names.check_storage_account(bad)
    assert words in str(err.value) and "Example" in str(err.value)
    assert "unique across all of Azure" in str(err.value) or bad in ("", None)


def test_batch_name_message_mentions_the_region():
    with pytest.raises(NameRuleError, match="unique within the region"):
        names.check_batch_account("Bad_Batch")


@pytest.mark.parametrize("good", ["saje-rg", "a", "My_Group.(1)", "x" * 90])
def test_resource_group_names(good):
    assert names.check_resource_group(good) == good


@pytest.mark.parametrize("bad", ["ends.", "has/slash", "x" * 91, "spa ce"])
def test_resource_group_names_refused(bad):
    with pytest.raises(NameRuleError, match="Resource group name"):
        names.check_resource_group(bad)


@pytest.mark.parametrize("check, good, bad", [
    (names.check_container, "snakemake-data", "Bad--name"),
    (names.check_vm_name, "saje-build", "_build"),
    (names.check_gallery, "saje_gallery", "saje-gallery"),
    (names.check_image_definition, "ubuntu-hpc-2404-mpi", "-bad"),
    (names.check_image_version, "1.0.0", "1.0"),
    (names.check_deployment_name, "my_proj-1", "my proj"),
])
def test_other_names(check, good, bad):
    assert check(good) == good
    with pytest.raises(NameRuleError):
        check(bad)


def test_image_version_parts_are_32_bit():
    with pytest.raises(NameRuleError):
        names.check_image_version("1.0.4294967296")


def test_locations_and_guids():
    assert names.normalize_location("West Europe") == "westeurope"
    with pytest.raises(NameRuleError):
        names.normalize_location("west-europe!")
    assert names.check_guid("x", "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE") == "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    with pytest.raises(NameRuleError, match="not a GUID"):
        names.check_guid("principal", "not-a-guid")


def test_default_names_are_valid_stable_and_differ_per_subscription():
    first = names.default_names("My_Project-2", "sub-a")
    assert first == names.default_names("My_Project-2", "sub-a")
    assert first != names.default_names("My_Project-2", "sub-b")
    names.check_storage_account(first["storage_account"])
    names.check_batch_account(first["batch_account"])
    names.check_resource_group(first["resource_group"])
