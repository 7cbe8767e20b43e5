"""Step 6: the approved patch set becomes the model's next version: in the patch registry (git + DVC + GTO
tags, patcher/registry.py) when params.yaml `register.repo` names one, and under patches/M/vNNNN/ in S3
(the full set, its gate report and its approval) either way. The version is live for the pipeline once the
ledger names it (the pipeline commits the ledger last, in one conditional write)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger

from flows import s3_tasks
from patcher.pipeline.store import Layout


@flow(name="register")
def register(root: str, model: str, run_id: str, number: int, approval: dict, registry_repo: str | None = None) -> dict:
    """`number`: the next version when there is no registry (the registry numbers its own).
    -> {"number", "uri" (S3 prefix), "tag" (registry tag or None)}."""
    layout = Layout(root, model)
    run = layout.run(run_id)
    tag = None
    if registry_repo:
        from patcher.pipeline.registry import Registry

        with tempfile.TemporaryDirectory() as tmp:
            patches = s3_tasks.download_dir(f"{run}/patches", Path(tmp) / "patches")
            gate_report = json.loads(s3_tasks.read_text(f"{run}/gate_report.json"))
            version = Registry(registry_repo).register(model, patches, gate_report, approval, note=f"run {run_id}")
        number, tag = version["number"], version["tag"]
    target = layout.version(number)
    s3_tasks.copy_prefix(f"{run}/patches", target)
    s3_tasks.write_text(f"{target}/gate_report.json", s3_tasks.read_text(f"{run}/gate_report.json"),
                        content_type="application/json")
    s3_tasks.write_json(f"{target}/approval.json", {**approval, "run_id": run_id, "version": number, "tag": tag})
    get_run_logger().info("%s v%04d: %s%s", model, number, target, f" (registry tag {tag})" if tag else "")
    return {"number": number, "uri": target, "tag": tag}
