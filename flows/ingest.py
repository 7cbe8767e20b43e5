"""Step 1: the error batch files that are new since the ledger was last written (oldest first)."""
from __future__ import annotations

from prefect import flow, get_run_logger

from flows import s3_tasks
from patcher.pipeline.catalog import Catalog
from patcher.pipeline.store import Layout


@flow(name="ingest")
def ingest(root: str, model: str) -> dict:
    """-> {"keys": [new batch files, oldest first], "etags": {key: etag}, "ignored": [keys not shaped like a batch
    file], "stray": [entries under ROOT/errors/ in no model's folder, when nothing is new]}. Names, not contents:
    a flow run's parameters are bounded (the next step reads the files), so neither a large batch nor a long
    ledger can stop the pipeline."""
    layout = Layout(root, model)
    state, _ = s3_tasks.load_state(layout)                # the run holds the model's lock: nobody writes it now
    fresh, ignored = s3_tasks.new_batches(layout, state)
    log = get_run_logger()
    if ignored:
        log.warning("%d objects under %s are not YYYY/MM/DD/HH/NAME.jsonl and were left alone: %s",
                    len(ignored), layout.errors, ", ".join(ignored[:10]))
    stray = [] if fresh else s3_tasks.stray_errors(root, Catalog().names())
    if stray:
        log.warning("nothing new under %s, but %d entries under %s/errors/ are in no model's folder (the "
                    "pipeline reads errors/MODEL/YYYY/MM/DD/HH/*.jsonl): %s", layout.errors, len(stray),
                    root.rstrip("/"), ", ".join(stray[:10]))
    log.info("%d new batch files under %s", len(fresh), layout.errors)
    return {"keys": [key for key, _ in fresh], "etags": dict(fresh), "ignored": ignored, "stray": stray}
