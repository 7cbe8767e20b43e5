"""Approval records: who let a gated patch set go live, when, and why; or who stopped it. The pipeline asks a
person in the Prefect UI (flows/approve.py); the demo and tests may use an explicit policy instead, which
the record says."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from patcher.engine.records import stamp

POLICIES = ("manual", "auto")   # auto: approve every patch set that passed the gate (demo and tests only)


@dataclass
class ApprovalRecord:
    approved: bool
    reviewer: str                   # a person's name, or "policy:auto", or "timeout"
    comment: str = ""
    at: str = ""
    by_policy: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_policy(cls, policy: str) -> "ApprovalRecord":
        if policy != "auto":
            raise ValueError(f"no approval by policy {policy!r}")
        return cls(True, "policy:auto", "approved by policy (auto-approve: demo and tests only)", stamp(), True)

    @classmethod
    def timed_out(cls, timeout_s: float) -> "ApprovalRecord":
        return cls(False, "timeout", f"no decision within {timeout_s:g} s: rejected", stamp())

    @classmethod
    def gate_failed(cls) -> "ApprovalRecord":
        return cls(False, "gate", "the gate failed: not sent for approval", stamp())
