"""What a run does first about the runs before it that died. A run killed outright (SIGKILL, a lost machine)
leaves its flow run "Running" in Prefect and may have registered a version without writing the ledger: the
lock it held names its flow run, which is marked Crashed, and a registry version the ledger lacks is adopted
(the ledger names it, its patch set is under patches/M/vNNNN/, and serving gets it)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import get_client, get_run_logger

from flows import s3_tasks
from patcher.pipeline.registry import Registry
from patcher.pipeline.store import Layout, State


def mark_crashed(holders: list[dict], by: str) -> list[str]:
    """The flow runs (and their unfinished subflow runs) of dead lock holders -> Crashed, as far as this Prefect
    server knows them (best effort: the run goes on either way). -> their ids."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.states import Crashed

    marked = []
    with get_client(sync_client=True) as client:
        for holder in holders:
            flow_run_id = holder.get("flow_run_id")
            if not flow_run_id:
                continue
            try:
                children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
                for run in [client.read_flow_run(flow_run_id), *children]:
                    if run.state is not None and not run.state.is_final():
                        client.set_flow_run_state(run.id, Crashed(message=f"its process died ({holder['why']}); "
                                                                          f"found by run {by}"), force=True)
                        marked.append(str(run.id))
            except Exception as error:  # noqa: BLE001 (e.g. a run of another Prefect server: nothing to mark here)
                get_run_logger().warning("could not mark dead run %s's flow run %s crashed: %s", holder["run_id"],
                                         flow_run_id, error)
    if marked:
        get_run_logger().warning("marked %d flow runs of dead run %s as crashed", len(marked),
                                 ", ".join(h["run_id"] for h in holders))
    return marked


def adopt_registered(layout: Layout, state: State, repo: str | None, run_id: str) -> dict | None:
    """The registry's latest version, when the ledger lags behind it (a run that crashed between registering and
    its ledger write, or a rollback made with `patcher registry`), into `state`: version, S3 prefix (copied from
    the registry if missing) and its edits' ids. -> that version's info, or None when the ledger is current."""
    if not repo:
        return None
    registry = Registry(repo)
    versions = registry.versions(layout.model)
    if not versions or versions[-1]["number"] <= state.version:
        return None
    version, was = versions[-1], state.version
    uri = layout.version(version["number"])
    if not {"manifest.json", "patches.safetensors", "gate_report.json", "approval.json"} <= \
            set(s3_tasks.list_objects(uri)):             # missing, or half copied by the run that died
        with tempfile.TemporaryDirectory() as tmp:
            s3_tasks.upload_dir(registry.fetch(layout.model, Path(tmp) / "p", version["number"]), uri)
        for name in ("gate_report.json", "approval.json"):
            s3_tasks.write_json(f"{uri}/{name}", registry.read(layout.model, name, version["number"]))
    state.version, state.patches = version["number"], uri
    note = version.get("note") or ""
    by = note.removeprefix("run ") if note.startswith("run ") else version["tag"]     # the run that made it
    state.records.update({i: by for i in version.get("error_ids", [])})
    state.runs.append({"run_id": run_id, "at": version.get("registered_at"), "version": version["number"],
                       "outcome": f"adopted {version['tag']} from the registry ({version.get('note') or version['action']})"})
    get_run_logger().warning("the ledger was at version %d, the registry at %s (%s): adopted", was,
                             version["tag"], version.get("note") or version["action"])
    return version
