"""SAJE: the Simple Azure Job Environment, a Snakemake executor for Azure Batch."""
