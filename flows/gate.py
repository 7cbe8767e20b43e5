"""Step 4: the locality gate on the train report; writes gate_report.json and .md beside it, publishes the full
report as an artifact and returns the short summary the approval form shows, with a link to that artifact."""
from __future__ import annotations

import json
from uuid import UUID

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows import s3_tasks
from patcher.pipeline.gate import GateThresholds, gate


@flow(name="gate")
def gate_step(report_uri: str, thresholds: dict | None = None) -> dict:
    """-> the gate report as a dict, with `markdown` (the full report) and `summary` (the approval form's text)."""
    report = json.loads(s3_tasks.read_text(report_uri))
    result = gate(report, GateThresholds.from_dict(thresholds))
    run = report_uri.rsplit("/", 1)[0]
    markdown = result.markdown(f"Gate report: {report['model']}")
    s3_tasks.write_json(f"{run}/gate_report.json", result.to_dict())
    s3_tasks.write_text(f"{run}/gate_report.md", markdown, content_type="text/markdown; charset=utf-8")
    artifact = create_markdown_artifact(markdown, key="gate-report", description=f"{run}/gate_report.md")
    summary = result.summary(f"Gate: {report['model']}", artifact_url(artifact), f"{run}/gate_report.md")
    return {**result.to_dict(), "markdown": markdown, "summary": summary}


def artifact_url(artifact_id: UUID | str | None) -> str | None:
    """The artifact's page in the Prefect UI; None where no UI URL is known (an ephemeral server)."""
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/artifacts/artifact/{artifact_id}" if base and artifact_id else None
