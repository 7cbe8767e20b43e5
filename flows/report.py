"""What every run leaves in Prefect: a Markdown summary (counts, outcome, metrics, timings, where things
are), the metrics along the edit stream as a table and as a plot (SVG in S3, shown as an image artifact)."""
from __future__ import annotations

import json

from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact

from flows import s3_tasks
from patcher.pipeline import store
from patcher.pipeline.gate import fmt
from patcher.pipeline.plot import metrics_svg


def summary_markdown(summary: dict) -> str:
    counts, m = summary.get("counts", {}), summary.get("metrics") or {}
    lines = [f"# Pipeline run {summary['run_id']}: {summary['model']}", "",
             f"**Outcome: {summary['outcome']}**" + (f" (version v{summary['version']:04d})"
                                                     if summary.get("version") else ""), "",
             "| received | accepted | quarantined | edited | failed | already right |", "|---|---|---|---|---|---|",
             f"| {counts.get('received', 0)} | {counts.get('accepted', 0)} | {counts.get('quarantined', 0)} | "
             f"{m.get('n_edits', 0) - m.get('n_failed', 0) if m else 0} | {m.get('n_failed', 0)} | "
             f"{m.get('n_skipped_already_correct', 0)} |", ""]
    if m:
        lines += ["| SR | GR | ER | TrainR | TestR | neurons | s per edit (median) |", "|---|---|---|---|---|---|---|",
                  "| " + " | ".join(fmt(m.get(k)) for k in ("SR", "GR", "ER", "TrainR", "TestR", "n_neurons",
                                                              "edit_seconds_median")) + " |", ""]
    if summary.get("approval"):
        a = summary["approval"]
        lines.append(f"Decision: {'approved' if a['approved'] else 'rejected'} by {a['reviewer'] or '(nobody)'}"
                     f"{' (policy)' if a.get('by_policy') else ''}: {a.get('comment', '')}")
    lines += ["", "| step | seconds |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in summary["seconds"].items()]
    lines += ["", "Where to look:"] + [f"- {k}: `{v}`" for k, v in summary.get("where", {}).items()]
    return "\n".join(lines) + "\n"


def publish(summary: dict, report_uri: str | None) -> None:
    create_markdown_artifact(summary_markdown(summary), key="pipeline-summary",
                             description=f"{summary['model']} run {summary['run_id']}")
    if not report_uri:
        return
    points = json.loads(s3_tasks.read_text(report_uri)).get("checkpoints", [])
    if not points:
        return
    create_table_artifact(points, key="edit-metrics", description="metrics along this run's edit stream")
    svg_uri = report_uri.rsplit("/", 1)[0] + "/metrics.svg"
    s3_tasks.write_text(svg_uri, metrics_svg(points, f"{summary['model']}: metrics over this run's edits"),
                        content_type="image/svg+xml")
    create_image_artifact(store.presigned(svg_uri), key="edit-metrics-plot",
                          description=f"{svg_uri} (link valid 7 days)")
