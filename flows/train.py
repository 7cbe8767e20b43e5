"""Step 3: sequential patching of the accepted errors on top of the current registry version. Its own
deployment on the `gpu` work pool (CUDA when the worker has it); in-process when no worker serves that
pool. Inputs and outputs are S3 URIs, so it runs the same on another machine."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger

from flows import s3_tasks
from patcher.engine.patchset import PatchSet
from patcher.engine.records import parse_record, split_lines
from patcher.pipeline.catalog import Catalog
from patcher.pipeline.train import TrainSettings, train_patches


@flow(name="train")
def train(model: str, accepted_uri: str, out_uri: str, base_uri: str | None = None,
          settings: dict | None = None) -> str:
    """Writes OUT/patches/ and OUT/train_report.json. -> the report's URI."""
    log = get_run_logger()
    lines = split_lines(s3_tasks.read_bytes(accepted_uri))
    records = [parse_record(line, f"{accepted_uri}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    entry = Catalog().entry(model)
    with tempfile.TemporaryDirectory() as tmp:
        base = PatchSet.load(s3_tasks.download_dir(base_uri, Path(tmp) / "base")) if base_uri else None
        patches, report = train_patches(entry, records, base, TrainSettings.from_dict(settings))
        patches.save(Path(tmp) / "patches")
        s3_tasks.upload_dir(Path(tmp) / "patches", f"{out_uri}/patches")
    report["base_uri"] = base_uri
    s3_tasks.write_json(f"{out_uri}/train_report.json", report)
    m = report["metrics"]
    log.info("%d records on %s: %d edits, %d failed, %d already right; SR %s ER %s TrainR %s TestR %s",
             len(records), report["device"], m["n_edits"], m["n_failed"], m["n_skipped_already_correct"],
             *(json.dumps(m[k]) for k in ("SR", "ER", "TrainR", "TestR")))
    return f"{out_uri}/train_report.json"
