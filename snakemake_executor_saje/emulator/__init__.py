"""A local Azure Batch service: the REST data plane on loopback, tasks as local processes."""
