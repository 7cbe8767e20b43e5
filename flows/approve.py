"""Step 5: a person approves or rejects the gated patch set in the Prefect UI (the run pauses with a form
whose description is the gate report). No decision within the timeout: rejected. The `auto` policy, for
the demo and tests only, approves without asking and says so in the record."""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from patcher.pipeline.approval import ApprovalRecord


class Approval(RunInput):
    approve: bool = False
    reviewer: str = ""
    comment: str = ""


@flow(name="approve")
def approve(gate_markdown: str, policy: str = "manual", timeout_s: float = 86400, poll_s: float = 10) -> dict:
    """-> an ApprovalRecord as a dict. A timeout fails this flow run (Prefect's FlowPauseTimeout); the
    pipeline reads that as a rejection."""
    if policy != "manual":
        return ApprovalRecord.from_policy(policy).to_dict()
    intro = ("Approve this patch set to make it the model's next registry version; reject to send its errors "
             "to review.\n\n")
    answer = pause_flow_run(wait_for_input=Approval.with_initial_data(description=intro + gate_markdown,
                                                                      approve=False),
                            timeout=int(timeout_s), poll_interval=max(1, int(poll_s)))
    if answer.approve and not answer.reviewer.strip():
        get_run_logger().warning("approval without a reviewer name: treated as a rejection")
        return ApprovalRecord.by_person(False, "", "approved without a reviewer name: rejected").to_dict()
    return ApprovalRecord.by_person(answer.approve, answer.reviewer.strip(), answer.comment).to_dict()
