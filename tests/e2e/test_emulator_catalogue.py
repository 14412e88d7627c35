"""`saje emulator start --vm-size FILE`: the account offers the sizes of that catalogue, and only those."""
from __future__ import annotations

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from snakemake_executor_saje import catalogue
from snakemake_executor_saje.emulator import Emulator
from tests.conftest import FAST

CATALOGUE = """
vm_sizes:
  - {name: Lab_Box_8, vcpus: 8, memory_gib: 32}
"""


def _pool(pool_id: str, vm_size: str) -> models.BatchPoolCreateOptions:
    return models.BatchPoolCreateOptions(
        id=pool_id, vm_size=vm_size, target_dedicated_nodes=1, task_slots_per_node=32,
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=models.BatchVmImageReference(publisher="canonical", offer="ubuntu-24_04-lts", sku="server"),
            node_agent_sku_id="batch.node.ubuntu 24.04"),
    )


def test_a_custom_catalogue_replaces_the_bundled_sizes(tmp_path):
    path = tmp_path / "sizes.yaml"
    path.write_text(CATALOGUE)
    with Emulator(tmp_path / "emu", vm_size_catalogue=path, **FAST) as emu:
        client = emu.client()
        client.create_pool(_pool("custom", "Lab_Box_8"))  # 32 slots = 4 x its 8 vCPUs: allowed
        assert client.get_pool("custom").vm_size.lower() == "lab_box_8"
        with pytest.raises(HttpResponseError) as refused:
            client.create_pool(_pool("bundled", "Standard_D2s_v5"))
        assert refused.value.error.code == "InvalidPropertyValue"


def test_a_malformed_catalogue_names_the_file_and_the_fields(tmp_path):
    path = tmp_path / "sizes.yaml"
    path.write_text("vm_sizes:\n  - {name: NoCores}\n")
    with pytest.raises(ValueError, match="sizes.yaml.*name, vcpus, memory_gib"):
        catalogue.load_vm_sizes(path)
