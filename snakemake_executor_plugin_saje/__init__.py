"""Discovery module: Snakemake finds executors by the `snakemake_executor_plugin_` prefix.

The product lives in `snakemake_executor_saje`; this module only re-exports its plugin surface.
"""
from snakemake_executor_saje import Executor, ExecutorSettings, common_settings

__all__ = ["Executor", "ExecutorSettings", "common_settings"]
