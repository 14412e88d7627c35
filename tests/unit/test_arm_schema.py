"""The emulator's ARM schema is a mechanical copy of the installed azure-mgmt SDKs', and refuses like Azure."""
from __future__ import annotations

import json

import pytest

from snakemake_executor_saje.emulator.arm.core import ArmError
from snakemake_executor_saje.emulator.schema import arm, arm_generate

SUB = "/subscriptions/00000000-0000-0000-0000-000000005a1e/resourceGroups/rg/providers"
POOL = (f"{SUB}/Microsoft.Batch/batchAccounts/acct/pools/p", "2025-06-01")
VM = (f"{SUB}/Microsoft.Compute/virtualMachines/vm", "2026-04-01")
STORAGE = (f"{SUB}/Microsoft.Storage/storageAccounts/sa", "2026-09-01")
ROLE = (f"{SUB}/Microsoft.Storage/storageAccounts/sa/providers/Microsoft.Authorization/roleAssignments/"
        "0b3c9d4e-1f2a-4b5c-8d7e-9f0a1b2c3d4e", "2022-04-01")


def test_committed_schema_matches_the_installed_sdks():
    """Regenerating from the azure-mgmt packages gives the committed file: no hand edits, no drift."""
    assert arm_generate.build() == json.loads(arm.SCHEMA_FILE.read_text()), (
        "run: python -m snakemake_executor_saje.emulator.schema.arm_generate")


def test_operations_are_found_by_method_path_and_api_version():
    assert arm.operation_for("PUT", *POOL).operation.body == "Pool"
    assert arm.operation_for("PUT", *ROLE).operation.body == "RoleAssignmentCreateParameters"
    assert arm.operation_for("PUT", POOL[0], "2024-07-01") is None  # no installed model describes it
    assert arm.operation_for("PUT", f"{SUB}/Microsoft.Network/virtualNetworks/v", "2024-05-01") is None


def refusal(where: tuple[str, str], body: dict, method: str = "PUT") -> ArmError:
    with pytest.raises(ArmError) as caught:
        arm.check(arm.operation_for(method, *where), body)
    return caught.value


def test_an_unknown_top_level_property_fails_arms_own_reader():
    error = refusal(STORAGE, {"location": "westeurope", "sku": {"name": "Standard_LRS"}, "kind": "StorageV2", "color": 1})
    assert (error.status, error.code) == (400, "InvalidRequestContent")
    assert "Could not find member 'color' on object of type 'ResourceDefinition'" in error.message


def test_a_nested_unknown_property_fails_the_batch_reader():
    error = refusal(POOL, {"properties": {"vmSize": "STANDARD_D2S_V3", "colour": "red"}})
    assert (error.code, error.target) == ("InvalidRequestBody", "BatchAccount")
    assert {"code": "PropertyPath", "message": "properties.colour"} in error.details


def test_a_read_only_property_is_refused_but_the_envelopes_id_name_type_are_read():
    body = {"id": "x", "name": "vm", "type": "Microsoft.Compute/virtualMachines", "location": "westeurope",
            "properties": {"provisioningState": "Succeeded"}}
    error = refusal(VM, body)
    assert (error.code, error.target) == ("BadRequest", "properties.provisioningState")


def test_a_value_of_the_wrong_type_is_refused():
    error = refusal(POOL, {"properties": {"taskSlotsPerNode": "four"}})
    assert error.code == "InvalidRequestBody" and "Error converting value \"four\"" in error.details[0]["message"]


def test_missing_required_properties_get_each_readers_code():
    assert refusal(VM, {"properties": {}}).code == "LocationRequired"
    assert refusal(STORAGE, {"location": "westeurope", "kind": "StorageV2"}).code == "InvalidValuesForRequestParameters"
    error = refusal(ROLE, {"properties": {"roleDefinitionId": "/x"}})
    assert error.code == "InvalidRequestContent" and "principalId" in error.message


def test_extensible_enums_leave_their_values_to_the_service():
    """Every enum of the installed azure-mgmt SDKs is Union[str, Enum]: VM sizes beyond
    VirtualMachineSizeTypes are valid, so no value is refused for not being listed."""
    arm.check(arm.operation_for("PUT", *VM), {"location": "westeurope",
                                               "properties": {"hardwareProfile": {"vmSize": "Standard_HB120rs_v3"}}})
