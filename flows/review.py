"""The reviewer's side of the approval step, from the command line (the Prefect UI's form does
the same): list the approval runs waiting for a decision, and answer one."""
from __future__ import annotations


def pending_approvals() -> list[dict]:
    """Paused `approve` flow runs on the Prefect server in PREFECT_API_URL."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["approve"])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    return [{"flow_run": str(r.id), "name": r.name, "parent_task_run": str(r.parent_task_run_id),
             "paused_since": r.state.timestamp.isoformat() if r.state else None} for r in runs]


def resume(flow_run_id: str, approve: bool, reviewer: str, comment: str = "") -> None:
    from prefect.flow_runs import resume_flow_run

    if not reviewer.strip():
        raise ValueError("a decision needs the reviewer's name")
    resume_flow_run(flow_run_id, run_input={"approve": approve, "reviewer": reviewer, "comment": comment})
