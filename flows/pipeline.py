"""The edit-management loop, one model per run: ingest -> validate -> train -> gate -> approve -> register
-> export (ONNX, published for serving), then one conditional write of the ledger that records the whole
outcome (patcher/pipeline/store.py explains why that makes each batch exactly-once). The run holds the model's
lock throughout, renewing its lease; a second run started meanwhile waits up to ingest.lock_wait_s, then ends
without touching anything. A run that finds a dead run's lock marks that run crashed in Prefect, and one that
finds the registry ahead of the ledger adopts the registered version first (flows/recover.py). Flow runs are
named MODEL-RUN_ID. Returns a typed outcome (patcher/pipeline/outcome.py) with the run summary.

    patcher pipeline run --model NAME                     # a catalog model; or its deployment in prefect.yaml
"""
from __future__ import annotations

import json
import tempfile
import time
import uuid
from contextvars import ContextVar
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.runtime import flow_run

from flows import s3_tasks
from flows.approve import approve
from flows.export import export_version
from flows.gate import gate_step
from flows.ingest import ingest
from flows.recover import adopt_registered, mark_crashed
from flows.register import register
from flows.report import publish
from flows.train import train
from flows.validate import validate
from patcher.engine.records import split_lines, stamp, utc_now
from patcher.pipeline.approval import ApprovalRecord
from patcher.pipeline.catalog import Catalog
from patcher.pipeline.outcome import Outcome, RunResult, Status
from patcher.pipeline.registry import live_base
from patcher.pipeline.settings import PipelineSettings
from patcher.pipeline.store import Layout, Lock, LockHeld, version_name
from patcher.serving.publish import latest


def new_run_id() -> str:
    return f"{utc_now():%Y%m%dT%H%M%SZ}-{(flow_run.id or uuid.uuid4().hex)[:8]}"


RUN_NAME: ContextVar[str | None] = ContextVar("run_name", default=None)


def name_run(model: str, run_id: str) -> None:
    """The flow run is named MODEL-RUN_ID, and each step's run MODEL-RUN_ID-STEP (`step`): the UI lists runs,
    paused approvals among them, by name."""
    from prefect import get_client

    RUN_NAME.set(f"{model}-{run_id}")
    if flow_run.id:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=RUN_NAME.get())


def step(subflow):
    """A step's flow, its run named after this run (name_run)."""
    name = RUN_NAME.get()
    return subflow.with_options(flow_run_name=f"{name}-{subflow.name}") if name else subflow


def publish_adopted(layout: Layout, state, settings: PipelineSettings, summary: dict) -> None:
    """Serving gets an adopted version unless it serves it already."""
    pointer = latest(layout.root, layout.model)
    if not settings.export.enabled or (pointer or {}).get("version") == version_name(state.version):
        return
    exported = step(export_version)(layout.root, layout.model, version_name(state.version), state.patches,
                                    asdict(settings.export), return_state=True)
    summary["adopted"]["export"] = exported.result() if exported.is_completed() else {"error": exported.message}


def gpu_worker_online(pool: str = "gpu") -> bool:
    """Whether a worker serves the work pool now (else the train step runs in this process)."""
    from prefect import get_client
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            work_pool = client.read_work_pool(pool)
        except ObjectNotFound:
            return False
        online = client.read_workers_for_work_pool(
            pool, worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"])))
        return work_pool.status is not None and work_pool.status.value == "READY" and bool(online)


def run_train(deployment: str, pool: str, **parameters) -> tuple[str, str]:
    """The train deployment when a worker serves its pool, else the train flow in this process.
    -> (the train report's URI, where it ran)."""
    if gpu_worker_online(pool):
        from prefect.deployments import run_deployment

        child = run_deployment(name=deployment, parameters=parameters, as_subflow=True,
                               flow_run_name=f"{RUN_NAME.get()}-train" if RUN_NAME.get() else None)
        if not child.state or not child.state.is_completed():
            raise RuntimeError(f"train run {child.id} of {deployment} ended {child.state_type}: "
                               f"{child.state.message if child.state else ''}")
        return f"{parameters['out_uri']}/train_report.json", f"deployment {deployment}"
    return step(train)(**parameters), "in-process"


def live_version(layout: Layout, run: str, state, settings: PipelineSettings) -> tuple[str | None, dict]:
    """The patch set new patches go on top of (patcher.pipeline.registry.live_base, as `patcher train` finds it,
    copied to RUN/base for the train step), else, with no registry, the ledger's.
    -> (its S3 URI or None, {error id it already holds: where})."""
    if not settings.register.repo:
        return s3_tasks.ledger_base(state)
    with tempfile.TemporaryDirectory() as tmp:
        base, held = live_base(settings.register.repo, layout.model, Path(tmp) / "base")
        if base is None:
            return None, {}
        s3_tasks.upload_dir(Path(tmp) / "base", f"{run}/base")
    return f"{run}/base", held


def decide(gated: dict, settings: PipelineSettings) -> dict:
    """The approval step's answer; a gate failure or a timeout is a rejection."""
    if not gated["passed"]:
        return ApprovalRecord.gate_failed().to_dict()
    a = settings.approve
    state = step(approve)(gated["summary"], a.policy, a.timeout_s, a.poll_s, return_state=True)
    if state.is_completed():
        return state.result()
    error = state.result(raise_on_failure=False)
    # the server fails an expired pause itself ("...paused/failed and never resumed"), so the client-side
    # FlowPauseTimeout is not always what the state holds
    if isinstance(error, FlowPauseTimeout) or "never resumed" in (state.message or ""):
        return ApprovalRecord.timed_out(a.timeout_s).to_dict()
    raise RuntimeError(f"the approval step failed: {state.message}")


@flow(name="pipeline")
def pipeline(model: str, root: str | None = None, approval: str | None = None,
             params: str = "params.yaml", overrides: dict | None = None, train_deployment: str = "train/train-gpu",
             train_pool: str = "gpu") -> RunResult:
    """One pass of the loop for `model` (a catalog model: pipeline/catalog.py). Settings: params.yaml, then `overrides` ({section: {key: value}}),
    then `root` and `approval` ("manual" or "auto"; auto is for the demo and tests).
    -> the outcome and the run summary (also at runs/MODEL/RUN/summary.json)."""
    log = get_run_logger()
    overrides = {k: dict(v) for k, v in (overrides or {}).items()}
    if approval:
        overrides.setdefault("approve", {})["policy"] = approval
    if root:
        overrides.setdefault("ingest", {})["root"] = root
    settings = PipelineSettings.load(params, overrides)
    entry = Catalog().entry(model)                 # an unknown model ends the run here, before any S3 work
    layout = Layout(settings.ingest.root, model)
    run_id = new_run_id()
    run = layout.run(run_id)
    summary = {"run_id": run_id, "model": model, "started_at": stamp(), "outcome": None, "seconds": {},
               "counts": {}, "where": {}}
    name_run(model, run_id)
    lock = Lock(layout, run_id, settings.ingest.lock_ttl_s, settings.ingest.lock_wait_s,
                about={"flow_run_id": str(flow_run.id) if flow_run.id else None})
    try:
        s3_tasks.s3_task(name="acquire-lock")(lock.acquire)()
    except LockHeld as held:
        log.warning("not running: %s", held)
        return RunResult(Outcome.skipped(), {**summary, "outcome": str(Outcome.skipped()), "reason": str(held)})
    report_uri, outcome = None, None

    def settle(result: Outcome) -> None:
        nonlocal outcome
        outcome, summary["outcome"] = result, str(result)

    try:
        if lock.broken:
            summary["crashed_runs"] = mark_crashed(lock.broken, run_id)
        clock = time.perf_counter()

        def lap(step: str) -> None:
            nonlocal clock
            summary["seconds"][step] = round(time.perf_counter() - clock, 2)
            clock = time.perf_counter()

        state, etag = s3_tasks.load_state(layout)
        adopted = adopt_registered(layout, state, settings.register.repo, run_id)
        if adopted:          # recorded at once: whatever this run does next, the ledger names the live version
            lock.check()
            etag = s3_tasks.commit_state(layout, state, etag)
            summary["adopted"] = {"version": adopted["number"], "tag": adopted["tag"]}
            publish_adopted(layout, state, settings, summary)
        got = step(ingest)(layout.root, model)
        lap("ingest")
        if not got["keys"]:
            settle(Outcome.nothing_new())
            if got["stray"]:
                summary["stray_errors"] = got["stray"]
            return RunResult(outcome, summary)
        # ids the live version holds count as processed too: a run that registered but crashed before the
        # ledger write must not edit them again
        base_uri, held = live_version(layout, run, state, settings)
        processed = {**held, **{i: f"run {r}" for i, r in state.records.items()}}
        s3_tasks.write_json(f"{run}/processed.json", processed)
        checked = step(validate)(layout.root, model, run_id, got["keys"], f"{run}/processed.json")
        lap("validate")
        summary["counts"] = {k: checked[k] for k in ("received", "accepted", "quarantined")}
        summary["where"] |= {"quarantine": layout.quarantine, "data docs": checked["docs_uri"]}
        if not checked["accepted"]:
            settle(Outcome.nothing_to_edit())
        else:
            report_uri, where = run_train(train_deployment, train_pool, model=model, accepted_uri=checked["accepted_uri"],
                                          out_uri=run, base_uri=base_uri,
                                          settings=asdict(settings.train))
            summary["train_ran"] = where
            lap("train")
            gated = step(gate_step)(report_uri, asdict(entry.gate_thresholds(settings.gate)))
            summary["metrics"] = gated["metrics"]
            summary["gate_passed"] = gated["passed"]
            lap("gate")
            decision = decide(gated, settings)
            summary["approval"] = decision
            s3_tasks.write_json(f"{run}/approval.json", decision)
            lap("approve")
            review = list(gated["review"])
            if decision["approved"]:
                lock.check()                # a run whose lock was broken must not make a version
                version = step(register)(layout.root, model, run_id, state.version + 1, decision, settings.register.repo)
                state.version, state.patches = version["number"], version["uri"]
                summary["version"] = state.version
                summary["where"]["patch set"] = state.patches
                if version["tag"]:
                    summary["where"]["registry"] = f"{settings.register.repo} ({version['tag']})"
                settle(Outcome.approved_as(state.version))
                lap("register")
                if settings.export.enabled:
                    exported = step(export_version)(layout.root, model, version_name(state.version), state.patches,
                                                    asdict(settings.export), return_state=True)
                    if exported.is_completed():
                        summary["export"] = exported.result()
                        summary["where"]["serving"] = summary["export"]["pointer"]["uri"]
                    else:       # the version stands (approved, registered); serving keeps the previous one
                        summary["export"] = {"error": exported.message}
                    lap("export")
            else:
                why = ApprovalRecord.from_dict(decision).why
                flagged = {r["error_id"] for r in review}
                review += [{"error_id": i, "reason": why} for i in checked["accepted_ids"] if i not in flagged]
                settle(Outcome.rejected_by(decision))
            if review:
                records = {json.loads(x)["id"]: json.loads(x) for x in
                           split_lines(s3_tasks.read_bytes(checked["accepted_uri"])) if x.strip()}
                # an earlier edit a new patch broke is not among this run's records: its id says which
                s3_tasks.write_jsonl(layout.review(run_id), [{**records.get(r["error_id"], {"id": r["error_id"]}),
                                                              "reason": r["reason"], "run_id": run_id} for r in review])
                summary["where"]["review"] = layout.review(run_id)
        state.batches.update(got["etags"])
        state.records.update({i: run_id for i in checked["accepted_ids"]})
        state.runs.append({"run_id": run_id, "at": stamp(), "outcome": summary["outcome"], "version": state.version,
                           **summary["counts"]})
        lock.check()
        s3_tasks.commit_state(layout, state, etag)
        summary["where"] |= {"run": run, "ledger": layout.state}
        if "error" in summary.get("export", {}):
            raise RuntimeError(f"{version_name(state.version)} is approved and registered, but its ONNX export "
                               f"failed ({summary['export']['error']}): serving keeps the previous version; export "
                               f"it again with `patcher export --publish`")
        return RunResult(outcome, summary)
    finally:
        summary["finished_at"] = stamp()
        if outcome is not None and outcome.status is not Status.NOTHING_NEW:
            s3_tasks.write_json(f"{run}/summary.json", summary)
        if outcome is not None:
            publish(summary, report_uri)
        s3_tasks.s3_task(name="release-lock")(lock.release)()
