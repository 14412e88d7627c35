"""The emulator's Batch schema is a mechanical copy of the installed SDK's, and reads like the service."""
from __future__ import annotations

import json

import pytest

from snakemake_executor_saje.emulator import schema
from snakemake_executor_saje.emulator.errors import BatchError
from snakemake_executor_saje.emulator.schema import generate, request


def test_committed_schema_matches_the_installed_sdk():
    """Regenerating from azure-batch gives the committed file: no hand edits, no drift."""
    import azure.batch._operations._operations  # noqa: F401

    assert generate.build() == json.loads(schema.SCHEMA_FILE.read_text()), (
        "run: python -m snakemake_executor_saje.emulator.schema.generate")


def test_schema_knows_the_operations_the_emulator_serves():
    s = schema.load()
    assert s.api_version == "2025-06-01"
    create = s.operation("POST", "/pools")
    assert (create.body, create.statuses) == ("BatchPoolCreateOptions", (201,))
    assert "DataServiceId" in create.headers
    assert s.operation("POST", "/jobs/{job}/addtaskcollection").body == "BatchTaskGroup"
    assert s.operation_named("get_node").response == "BatchNode"


def test_read_only_properties_are_not_part_of_a_request_but_are_of_a_response():
    s = schema.load()
    job = {"poolInfo": {"poolId": "p"}, "state": "active"}
    assert [p.kind for p in s.problems("BatchJob", job, request=True)] == [schema.UNKNOWN]
    assert list(s.problems("BatchJob", job, request=False)) == []


def test_response_enums_must_be_spelled_as_the_service_spells_them():
    s = schema.load()
    policy = {"nodeFillType": "Pack"}
    assert list(s.problems("BatchTaskSchedulingPolicy", policy, request=True)) == []
    assert [p.kind for p in s.problems("BatchTaskSchedulingPolicy", policy, request=False)] == [schema.ENUM]


def test_int64_travels_as_a_string_in_responses():
    s = schema.load()
    props = {"lastModified": "2024-01-01T00:00:00Z", "contentLength": 17}
    assert [p.kind for p in s.problems("FileProperties", props, request=False)] == [schema.TYPE]
    assert list(s.problems("FileProperties", {**props, "contentLength": "17"}, request=False)) == []


@pytest.mark.parametrize("body,code,reason", [
    ({"id": "t", "commandLine": "x", "bogus": 1}, "InvalidRequestBody",
     "The property 'bogus' does not exist on type 'Microsoft.Azure.Batch.Protocol.Entities.BatchTaskCreateOptions'. "
     "Make sure to only use property values that are defined by the type."),
    ({"id": "t", "commandLine": 7}, "InvalidRequestBody",
     "Cannot convert a primitive value to the expected type 'Edm.String'. See the inner exception for more details."),
    ({"id": "t", "commandLine": "x", "constraints": 3}, "InvalidRequestBody",
     "An unexpected 'PrimitiveValue' node was found when reading from the JSON reader. A 'StartObject' node was expected."),
])
def test_reader_faults_carry_the_odata_reason(body, code, reason):
    with pytest.raises(BatchError) as info:
        request.validated("BatchTaskCreateOptions", body)
    assert (info.value.status, info.value.code, info.value.values) == (400, code, [("Reason", reason)])


def test_canonical_body_uses_the_services_enum_spelling_and_drops_nulls():
    body = request.validated("BatchTaskCreateOptions", {
        "id": "t", "commandLine": "x", "displayName": None,
        "userIdentity": {"autoUser": {"scope": "POOL", "elevationLevel": "Admin"}}})
    assert body == {"id": "t", "commandLine": "x", "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "admin"}}}


def test_api_versions_pick_the_schema_of_their_sdk():
    assert schema.for_api_version("2025-06-01") is schema.load()
    assert schema.for_api_version("2024-07-01.20.0") is schema.load()
    v14 = schema.for_api_version("2024-02-01.19.0")
    assert v14.api_version == "2024-02-01.19.0" and schema.for_api_version("2023-11-01.18.0") is v14
    assert v14.operation("POST", "/pools").body == "PoolAddParameter"
    assert "certificateReferences" in v14.models["PoolAddParameter"]["properties"]
    assert v14.models["TaskAddParameter"]["required"] == ["id", "commandLine"]
