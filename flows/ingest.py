"""Step 1: the error batch files that are new since the ledger was last written (oldest first)."""
from __future__ import annotations

from prefect import flow, get_run_logger

from flows import s3_tasks
from patcher.pipeline.store import Layout, State


@flow(name="ingest")
def ingest(root: str, model: str, state: dict) -> dict:
    """-> {"batches": {key: lines}, "etags": {key: etag}, "ignored": [keys not shaped like a batch file]}."""
    layout = Layout(root, model)
    fresh, ignored = s3_tasks.new_batches(layout, State.from_dict(state))
    log = get_run_logger()
    if ignored:
        log.warning("%d objects under %s are not YYYY/MM/DD/HH/NAME.jsonl and were left alone: %s",
                    len(ignored), layout.errors, ", ".join(ignored[:10]))
    batches = {key: s3_tasks.read_text(f"{layout.errors}/{key}").splitlines() for key, _ in fresh}
    log.info("%d new batch files (%d lines) under %s", len(batches), sum(map(len, batches.values())),
             layout.errors)
    return {"batches": batches, "etags": dict(fresh), "ignored": ignored}
