"""A pipeline run's outcome, typed: callers (exit codes, the demo, tests) branch on its status rather than on
the text, which is what the run summary, the ledger and the Prefect artifacts show."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .approval import ApprovalRecord
from .store import version_name


class Status(Enum):
    SKIPPED = "skipped"                     # another run held the model's lock: nothing touched
    NOTHING_NEW = "nothing new"             # no new batch files
    NOTHING_TO_EDIT = "nothing to edit"     # every record quarantined
    APPROVED = "approved"                   # a new version
    REJECTED = "rejected"                   # by the gate, a reviewer or the approval timeout


@dataclass(frozen=True)
class Outcome:
    status: Status
    detail: str = ""                        # the version name, or why
    version: int | None = None              # the new version's number (approved)

    def __str__(self) -> str:
        return f"{self.status.value}: {self.detail}" if self.detail else self.status.value

    @property
    def approved(self) -> bool:
        return self.status is Status.APPROVED

    @property
    def rejected(self) -> bool:
        return self.status is Status.REJECTED

    @classmethod
    def skipped(cls) -> "Outcome":
        return cls(Status.SKIPPED, "another run holds the lock")

    @classmethod
    def nothing_new(cls) -> "Outcome":
        return cls(Status.NOTHING_NEW)

    @classmethod
    def nothing_to_edit(cls) -> "Outcome":
        return cls(Status.NOTHING_TO_EDIT, "every record quarantined")

    @classmethod
    def approved_as(cls, number: int) -> "Outcome":
        return cls(Status.APPROVED, version_name(number), number)

    @classmethod
    def rejected_by(cls, decision: dict) -> "Outcome":
        return cls(Status.REJECTED, ApprovalRecord.from_dict(decision).stopped_by)


@dataclass
class RunResult:
    """What `pipeline()` returns: the outcome, and the run summary (summary.json; its "outcome" is the text)."""

    outcome: Outcome
    summary: dict
