"""Snakemake's own executor test harness (`snakemake.common.tests.TestWorkflowsBase`) on the emulator.

Both data routes: (a) Snakemake's default storage (snakemake-storage-plugin-azure on Azurite,
reached on the node through AZURITE_CONNECTION_STRING declared with --envvars, which SAJE passes
as the task's environment settings), and (b) no default storage at all (SAJE stages sources,
inputs and outputs through its own blob container). Real snakemake API, real SDKs, real HTTP.
"""
from __future__ import annotations

import uuid
from typing import List, Mapping, Optional

import pytest
import snakemake.common.tests
from snakemake_interface_common.plugin_registry.plugin import TaggedSettings

from snakemake_executor_saje.settings import ExecutorSettings
from tests.e2e.conftest import assert_nothing_left

pytestmark = pytest.mark.e2e


class _OnTheEmulator:
    """What both routes share: the executor, its settings, and the environment of the run."""

    emulator = None

    @pytest.fixture(autouse=True)
    def _emulator(self, executor_emulator, monkeypatch):
        type(self).emulator = executor_emulator
        connection = executor_emulator.azurite.connection_string
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)  # SAJE's staging
        monkeypatch.setenv("AZURITE_CONNECTION_STRING", connection)  # the azure storage plugin
        yield
        assert_nothing_left(executor_emulator)

    def get_executor(self) -> str:
        return "saje"

    def get_executor_settings(self) -> ExecutorSettings:
        emu = self.emulator
        return ExecutorSettings(
            account_url=emu.endpoint, account_name=emu.account_name, account_key=emu.account_key,
            vm_size="Standard_D2s_v5", task_slots_per_node=2, max_nodes=2, autoscale_interval=5,
            snakemake_install="none", poll_interval=0.5,
        )

    def get_assume_shared_fs(self) -> bool:
        return False


class TestWorkflowsSajeStaging(_OnTheEmulator, snakemake.common.tests.TestWorkflowsLocalStorageBase):
    """Route (b): no default storage provider; SAJE moves the files."""

    __test__ = True


class TestWorkflowsAzureStorage(_OnTheEmulator, snakemake.common.tests.TestWorkflowsBase):
    """Route (a): --default-storage-provider azure on Azurite."""

    __test__ = True
    container = f"saje-harness-{uuid.uuid4().hex[:8]}"

    def get_default_storage_provider(self) -> Optional[str]:
        return "azure"

    def get_default_storage_prefix(self) -> Optional[str]:
        return f"az://{self.container}/{uuid.uuid4().hex[:8]}"

    def get_default_storage_provider_settings(self) -> Optional[Mapping[str, TaggedSettings]]:
        from snakemake_storage_plugin_azure import StorageProviderSettings

        tagged = TaggedSettings()
        tagged.register_settings(StorageProviderSettings(account_name=self.emulator.azurite.account_name))
        return {"azure": tagged}

    def get_envvars(self) -> List[str]:
        return ["AZURITE_CONNECTION_STRING"]

    def cleanup_test(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient.from_connection_string(self.emulator.azurite.connection_string)
        try:
            service.delete_container(self.container)
        except ResourceNotFoundError:
            pass
