"""Step 2: the great-expectations suite over the new batches. Quarantined lines go to the quarantine prefix
beside their batch file's key, each with its original text and reasons; accepted records go to the run's
prefix; the Data Docs of the validation go there too."""
from __future__ import annotations

import json
import tempfile

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact

from flows import s3_tasks
from patcher.engine.records import split_lines
from patcher.pipeline import store
from patcher.pipeline.store import Layout
from patcher.pipeline.validation import validate_batches


@flow(name="validate")
def validate(root: str, model: str, run_id: str, keys: list[str], processed_uri: str) -> dict:
    """`keys`: the batch files under errors/MODEL/; `processed_uri`: {id: where} of the ids already processed."""
    layout = Layout(root, model)
    run = layout.run(run_id)
    batches = {key: split_lines(s3_tasks.read_bytes(f"{layout.errors}/{key}")) for key in keys}
    processed = json.loads(s3_tasks.read_text(processed_uri))
    with tempfile.TemporaryDirectory() as docs:
        result = validate_batches(batches, model, processed, docs_dir=docs)
        s3_tasks.upload_dir(docs, f"{run}/data-docs")
    for key, rows in result.quarantined.items():
        s3_tasks.write_jsonl(f"{layout.quarantine}/{key}", rows)
    s3_tasks.write_jsonl(f"{run}/accepted.jsonl", result.accepted)
    counts = result.counts
    pages = [k for k in store.list_objects(f"{run}/data-docs/validations")]
    docs_uri = f"{run}/data-docs/validations/{pages[0]}" if pages else f"{run}/data-docs/index.html"
    create_link_artifact(store.presigned(docs_uri), link_text="great-expectations Data Docs of this batch",
                         key="data-docs", description=f"{docs_uri} (link valid 7 days)")
    get_run_logger().info("received %(received)d, accepted %(accepted)d, quarantined %(quarantined)d", counts)
    return {**counts, "accepted_uri": f"{run}/accepted.jsonl", "accepted_ids": [r["id"] for r in result.accepted],
            "quarantine_keys": sorted(result.quarantined), "docs_uri": docs_uri}
