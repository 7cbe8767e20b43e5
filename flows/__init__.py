"""Prefect flows of the edit-management loop: one flow per step (ingest, validate, train, gate, approve,
register) composed by `pipeline`. Each step is a thin call into the `patcher` library."""
