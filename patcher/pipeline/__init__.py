"""The pipeline's edges: S3 and its ledger, great-expectations validation, the train and gate steps, approvals
and the DVC patch registry. Called by the Prefect flows (`flows/`) and the DVC stages (`patcher` command line)
alike; nothing here imports Prefect.
"""
