"""SAJE: the Simple Azure Job Environment, a Snakemake executor for Azure Batch.

The plugin surface Snakemake looks for: `Executor`, `ExecutorSettings`, `common_settings`.
"""
from .executor import Executor
from .settings import ExecutorSettings, common_settings

__all__ = ["Executor", "ExecutorSettings", "common_settings"]
