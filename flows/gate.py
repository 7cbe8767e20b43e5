"""Step 4: the locality gate on the train report; writes gate_report.json and .md beside it."""
from __future__ import annotations

import json

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows import s3_tasks
from patcher.pipeline.gate import GateThresholds, gate


@flow(name="gate")
def gate_step(report_uri: str, thresholds: dict | None = None) -> dict:
    report = json.loads(s3_tasks.read_text(report_uri))
    result = gate(report, GateThresholds.from_dict(thresholds))
    run = report_uri.rsplit("/", 1)[0]
    markdown = result.markdown(f"Gate report: {report['model']}")
    s3_tasks.write_json(f"{run}/gate_report.json", result.to_dict())
    s3_tasks.write_text(f"{run}/gate_report.md", markdown, content_type="text/markdown; charset=utf-8")
    create_markdown_artifact(markdown, key="gate-report", description=f"{run}/gate_report.md")
    return {**result.to_dict(), "markdown": markdown}
