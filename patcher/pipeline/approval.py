"""Approval records: who let a gated patch set go live, when, and why; or who stopped it. The pipeline asks a
person in the Prefect UI (flows/approve.py); the demo and tests may use an explicit policy instead, which
the record says. `dvc repro` cannot pause for a person, so its gate leaves a pending approval that
`patcher approve` answers."""
from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from patcher.engine.records import stamp

POLICIES = ("manual", "auto")   # auto: approve every patch set that passed the gate (demo and tests only)
GATE, TIMEOUT = "gate", "timeout"   # the reviewer of a decision no person made


@dataclass
class ApprovalRecord:
    approved: bool
    reviewer: str                   # a person's name, or "policy:auto", or GATE, or TIMEOUT
    comment: str = ""
    at: str = ""
    by_policy: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ApprovalRecord":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    @classmethod
    def by_person(cls, approved: bool, reviewer: str, comment: str = "") -> "ApprovalRecord":
        return cls(bool(approved), reviewer, comment, stamp())

    @classmethod
    def from_policy(cls, policy: str) -> "ApprovalRecord":
        if policy != "auto":
            raise ValueError(f"no approval by policy {policy!r}")
        return cls(True, "policy:auto", "approved by policy (auto-approve: demo and tests only)", stamp(), True)

    @classmethod
    def timed_out(cls, timeout_s: float) -> "ApprovalRecord":
        return cls(False, TIMEOUT, f"no decision within {timeout_s:g} s: rejected", stamp())

    @classmethod
    def gate_failed(cls) -> "ApprovalRecord":
        return cls(False, GATE, "the gate failed: not sent for approval", stamp())

    @property
    def stopped_by(self) -> str:
        """Who or what rejected it, as the run's outcome says: "gate failed", "approval timed out", "by NAME"."""
        return {GATE: "gate failed", TIMEOUT: "approval timed out"}.get(self.reviewer) or \
            f"by {self.reviewer or 'a reviewer'}"

    @property
    def why(self) -> str:
        """A rejection's reason, as the review queue gives it for each of the run's records."""
        if self.reviewer in (GATE, TIMEOUT):
            return self.comment
        return f"rejected by {self.reviewer or 'a reviewer'}: {self.comment}"


@dataclass
class PendingApproval:
    """A gated patch set waiting for `patcher approve` (data/pipeline/MODEL/pending.json)."""

    id: str                 # from the train report's bytes: the same report, the same id
    model: str
    passed: bool
    patches: str | None     # the patch set directory
    gate_report: str        # the gate report (JSON) path
    created_at: str = ""

    @classmethod
    def of(cls, train_report: bytes, model: str, passed: bool, patches: str | None, gate_report: str) \
            -> "PendingApproval":
        return cls(hashlib.sha256(train_report).hexdigest()[:12], model, passed, patches, str(gate_report), stamp())

    @classmethod
    def load(cls, path: str | Path) -> "PendingApproval":
        data = json.loads(Path(path).read_text())
        missing = [f.name for f in fields(cls) if f.name not in data and f.default is MISSING]
        if missing:
            raise ValueError(f"{path} is not a pending approval (no {', '.join(missing)})")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def to_dict(self) -> dict:
        return asdict(self)

    def decide(self, pending_id: str, model: str, approved: bool, reviewer: str, comment: str = "",
               where: str | Path = "the pending approval") -> dict:
        """A person's decision on it, refused unless it is this id and model, passed its gate and names the
        reviewer (`where` names the file in the refusal). -> the approval record, with the pending id."""
        if self.id != pending_id or self.model != model:
            raise ValueError(f"{where} holds {self.model} {self.id}, not {model} {pending_id}: "
                             f"rerun `dvc repro` or check the id")
        if not self.passed:
            raise ValueError(f"{model} {pending_id} failed its gate: nothing to approve")
        if not reviewer.strip():
            raise ValueError("an approval needs the reviewer's name")
        return {**ApprovalRecord.by_person(approved, reviewer, comment).to_dict(), "pending": pending_id}
