"""Step 5: a person approves or rejects the gated patch set in the Prefect UI (the run pauses with a form whose
description is the gate's summary, linking the full report). No decision within the timeout: rejected. The `auto`
policy, for the demo and tests only, approves without asking and says so in the record."""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from patcher.pipeline.approval import ApprovalRecord

INTRO = ("Approve this patch set to make it the model's next registry version; reject (leave *approve* off) to send "
         "its errors to review.\n\n")


class Approval(RunInput):
    """The reviewer's form. The UI renders it from this model's JSON schema and the server checks a resume against
    that schema, so a required `reviewer` (not blank) is refused there, before the run resumes."""

    approve: bool = Field(False, title="Approve",
                          description="On: approve, the patch set becomes the model's next version. Off: reject.")
    reviewer: str = Field(min_length=1, pattern=r"\S", title="Reviewer",
                          description="Your name, as the approval record keeps it (required, not blank)")
    comment: str = Field("", title="Comment", description="Why (optional)")


@flow(name="approve")
def approve(summary: str, policy: str = "manual", timeout_s: float = 86400, poll_s: float = 10) -> dict:
    """-> an ApprovalRecord as a dict; `summary`: the gate's summary (GateReport.summary), the form's description.
    A timeout fails this flow run (Prefect's FlowPauseTimeout); the pipeline reads that as a rejection."""
    if policy != "manual":
        return ApprovalRecord.from_policy(policy).to_dict()
    answer = pause_flow_run(wait_for_input=form(summary), timeout=int(timeout_s), poll_interval=max(1, int(poll_s)))
    record = decision(answer)
    if not record["reviewer"]:
        get_run_logger().warning("a decision without a reviewer's name: treated as a rejection")
    return record


def form(summary: str) -> type[Approval]:
    """The form the paused run shows: the intro and the gate's summary above the fields."""
    return Approval.with_initial_data(description=INTRO + summary)


def decision(answer: Approval) -> dict:
    """The approval record of a submitted form. A blank reviewer never approves: the form refuses one, and an
    answer that got past it anyway (an older form's schema) is recorded as a rejection."""
    reviewer = answer.reviewer.strip()
    if not reviewer:
        return ApprovalRecord.by_person(False, "", "a decision without a reviewer's name: rejected").to_dict()
    return ApprovalRecord.by_person(answer.approve, reviewer, answer.comment).to_dict()
