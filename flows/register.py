"""Step 6: the approved patch set becomes the model's next version: in the patch registry (git + DVC + GTO
tags) when params.yaml `register.repo` names one (patcher.pipeline.registry.register_version, as `patcher
approve` does), and under patches/M/vNNNN/ in S3 (the full set, its gate report and its approval) either way.
The version is live for the pipeline once the ledger names it (the pipeline commits the ledger last)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger

from flows import s3_tasks
from patcher.pipeline.registry import register_version
from patcher.pipeline.store import Layout


@flow(name="register")
def register(root: str, model: str, run_id: str, number: int, approval: dict, registry_repo: str | None = None) -> dict:
    """`number`: the next version when there is no registry (the registry numbers its own).
    -> {"number", "uri" (S3 prefix), "tag" (registry tag or None)}."""
    layout = Layout(root, model)
    run = layout.run(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        patches = gate_report = None
        if registry_repo:
            patches = s3_tasks.download_dir(f"{run}/patches", Path(tmp) / "patches")
            gate_report = json.loads(s3_tasks.read_text(f"{run}/gate_report.json"))
        version = register_version(registry_repo, model, patches, gate_report, approval, note=f"run {run_id}",
                                   number=number)
    target = s3_tasks.save_version(layout, run_id, version["number"], approval, version["tag"])
    get_run_logger().info("%s %s: %s%s", model, version["name"], target,
                          f" (registry tag {version['tag']})" if version["tag"] else "")
    return {"number": version["number"], "uri": target, "tag": version["tag"]}
