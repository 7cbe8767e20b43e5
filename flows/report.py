"""What every run leaves in Prefect: a Markdown summary (counts, outcome, metrics, timings, where things
are), the metrics along the edit stream as a table and as a plot. The plot's artifact holds the SVG itself (a
data: URI) and its numbers, so it lasts as long as the run's artifacts; a copy of the SVG goes to S3 beside the
run's files."""
from __future__ import annotations

import json

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows import s3_tasks
from patcher.pipeline.gate import fmt
from patcher.pipeline.plot import metrics_markdown, metrics_svg


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
    title = f"{summary['model']}: metrics over this run's edits"
    svg_uri = report_uri.rsplit("/", 1)[0] + "/metrics.svg"
    s3_tasks.write_text(svg_uri, metrics_svg(points, title), content_type="image/svg+xml")
    # no link to S3: a presigned URL expires, and the server may move
    create_markdown_artifact(metrics_markdown(points, title), key="edit-metrics-plot",
                             description=f"metrics along this run's edit stream (the SVG also at {svg_uri})")
