"""The pipeline's settings: params.yaml, one section per step, each section a dataclass with documented
defaults (a missing file or section means the defaults)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from patcher.engine.config import from_section

from .approval import POLICIES
from .gate import GateThresholds
from .train import TrainSettings


@dataclass
class IngestSettings:
    """params.yaml `ingest`."""

    root: str = "s3://patcher"         # the pipeline's S3 root (layout: patcher/pipeline/store.py)
    lock_ttl_s: float = 300.0          # the lease of a run's lock, renewed while the run lives: a dead run's expires
    lock_wait_s: float = 0.0           # how long a second run waits for the lock before it gives up

    @classmethod
    def from_dict(cls, data: dict | None) -> "IngestSettings":
        return from_section(cls, data)


@dataclass
class ApproveSettings:
    """params.yaml `approve`."""

    policy: str = "manual"             # manual: a person approves in the Prefect UI; auto: demo and tests only
    timeout_s: float = 24 * 3600       # no decision within this: rejected
    poll_s: float = 10.0               # how often the paused run checks for the decision

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"approve.policy must be one of {POLICIES}, got {self.policy!r}")

    @classmethod
    def from_dict(cls, data: dict | None) -> "ApproveSettings":
        return from_section(cls, data)


@dataclass
class RegisterSettings:
    """params.yaml `register`."""

    repo: str | None = None    # the patch registry's git + DVC repository (pipeline/registry.py); None: approved
                               # versions go to S3 only (patches/MODEL/vNNNN/)

    @classmethod
    def from_dict(cls, data: dict | None) -> "RegisterSettings":
        return from_section(cls, data)


@dataclass
class ExportSettings:
    """params.yaml `export`: each approved version to ONNX (patcher/serving/), published for serving."""

    enabled: bool = True               # export and publish under serving/MODEL/vNNNN/ after each approval
    locality: int = 30                 # inputs of the model's locality suites checked for parity besides its edits
    tolerance: float = 1e-4            # parity: |onnx - torch| <= tolerance + rtol x max|logit| per position
    rtol: float = 1e-5

    @classmethod
    def from_dict(cls, data: dict | None) -> "ExportSettings":
        return from_section(cls, data)


SECTIONS = ("ingest", "train", "gate", "approve", "register", "export")


@dataclass
class PipelineSettings:
    ingest: IngestSettings = field(default_factory=IngestSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    gate: GateThresholds = field(default_factory=GateThresholds)
    approve: ApproveSettings = field(default_factory=ApproveSettings)
    register: RegisterSettings = field(default_factory=RegisterSettings)
    export: ExportSettings = field(default_factory=ExportSettings)

    @classmethod
    def from_dict(cls, data: dict | None) -> "PipelineSettings":
        data = data or {}
        return cls(IngestSettings.from_dict(data.get("ingest")), TrainSettings.from_dict(data.get("train")),
                   GateThresholds.from_dict(data.get("gate")), ApproveSettings.from_dict(data.get("approve")),
                   RegisterSettings.from_dict(data.get("register")), ExportSettings.from_dict(data.get("export")))

    @classmethod
    def load(cls, path: str | Path | None = "params.yaml", overrides: dict | None = None) -> "PipelineSettings":
        """params.yaml (if it exists), then `overrides` ({section: {key: value}}) on top."""
        import yaml

        data = yaml.safe_load(Path(path).read_text()) if path and Path(path).exists() else {}
        data = {k: dict(v or {}) for k, v in (data or {}).items() if k in SECTIONS}
        for section, values in (overrides or {}).items():
            data.setdefault(section, {}).update(values)
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return asdict(self)

