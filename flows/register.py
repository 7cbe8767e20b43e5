"""Step 6: the approved patch set becomes the model's next version under patches/M/vNNNN/ (the full set,
its gate report and its approval record). The version is live once the ledger names it (the pipeline
commits the ledger last, in one conditional write)."""
from __future__ import annotations

from prefect import flow, get_run_logger

from flows import s3_tasks
from patcher.store import Layout


@flow(name="register")
def register(root: str, model: str, run_id: str, version: int, approval: dict) -> str:
    """-> the version's s3:// prefix."""
    layout = Layout(root, model)
    run, target = layout.run(run_id), layout.version(version)
    s3_tasks.copy_prefix(f"{run}/patches", target)
    s3_tasks.write_text(f"{target}/gate_report.json", s3_tasks.read_text(f"{run}/gate_report.json"),
                        content_type="application/json")
    s3_tasks.write_json(f"{target}/approval.json", {**approval, "run_id": run_id, "version": version})
    get_run_logger().info("%s v%04d: %s", model, version, target)
    return target
