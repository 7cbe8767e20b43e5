"""Step 1: the error batch files that are new since the ledger was last written (oldest first)."""
from __future__ import annotations

from prefect import flow, get_run_logger

from flows import s3_tasks
from patcher.engine.records import split_lines
from patcher.pipeline.catalog import Catalog
from patcher.pipeline.store import Layout, State


@flow(name="ingest")
def ingest(root: str, model: str, state: dict) -> dict:
    """-> {"batches": {key: lines (patcher.engine.records.split_lines)}, "etags": {key: etag}, "ignored": [keys not
    shaped like a batch file], "stray": [entries under ROOT/errors/ in no model's folder, when nothing is new]}."""
    layout = Layout(root, model)
    fresh, ignored = s3_tasks.new_batches(layout, State.from_dict(state))
    log = get_run_logger()
    if ignored:
        log.warning("%d objects under %s are not YYYY/MM/DD/HH/NAME.jsonl and were left alone: %s",
                    len(ignored), layout.errors, ", ".join(ignored[:10]))
    stray = [] if fresh else s3_tasks.stray_errors(root, Catalog().names())
    if stray:
        log.warning("nothing new under %s, but %d entries under %s/errors/ are in no model's folder (the "
                    "pipeline reads errors/MODEL/YYYY/MM/DD/HH/*.jsonl): %s", layout.errors, len(stray),
                    root.rstrip("/"), ", ".join(stray[:10]))
    batches = {key: split_lines(s3_tasks.read_bytes(f"{layout.errors}/{key}")) for key, _ in fresh}
    log.info("%d new batch files (%d lines) under %s", len(batches), sum(map(len, batches.values())),
             layout.errors)
    return {"batches": batches, "etags": dict(fresh), "ignored": ignored, "stray": stray}
