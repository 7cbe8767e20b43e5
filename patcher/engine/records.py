"""Error records: what a serving system logs when its model makes a mistake. One JSON object per line:

  id          unique id, 1-128 characters of [A-Za-z0-9._:-] (it ends up in object keys and file names)
  model       the production model's name
  task        "classification" or "generation"
  input       the text the model got
  prediction  what the model said
  target      the right label or answer
  rephrases   optional list of equivalent inputs (they measure Generality; never trained on)
  phrasings   optional list of other wordings of the input that the edit may train on
  negatives   optional list of other prompts about the input's subject whose answers must not change (they join
              the editor's memory: a subject-keyed neuron must not fire on them)
  logged_at   RFC 3339 timestamp

`parse_record` checks one line and names the line, the record and the problem; `read_records` never drops
a line silently: it raises on the first bad one unless asked to collect problems instead.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

TASKS = ("classification", "generation")
ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_TEXT = 2000
REQUIRED = ("id", "model", "task", "input", "prediction", "target", "logged_at")
OPTIONAL = ("rephrases", "phrasings", "negatives")          # lists of texts


class RecordError(ValueError):
    """A record that cannot be used, with where it came from and every problem found."""

    def __init__(self, where: str, record_id: str | None, problems: list[str]):
        self.where, self.record_id, self.problems = where, record_id, problems
        rid = f" (id {record_id!r})" if record_id else ""
        super().__init__(f"{where}{rid}: " + "; ".join(problems))


@dataclass
class ErrorRecord:
    id: str
    model: str
    task: str
    input: str
    prediction: str
    target: str
    logged_at: str
    rephrases: list[str] = field(default_factory=list)
    phrasings: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def stamp(at: datetime | None = None) -> str:
    """The RFC 3339 time (UTC, 'Z') the pipeline writes in ledgers, approvals and records."""
    return (at or utc_now()).isoformat(timespec="seconds").replace("+00:00", "Z")


def text_problem(name: str, value) -> str | None:
    if not isinstance(value, str):
        return f"{name} must be a string, got {type(value).__name__}"
    if not value.strip():
        return f"{name} is empty"
    if len(value) > MAX_TEXT:
        return f"{name} is {len(value)} characters, more than {MAX_TEXT}"
    if any(ord(ch) < 32 and ch not in "\t" for ch in value):
        return f"{name} contains control characters"
    return None


def parse_record(line: str | dict, where: str = "record") -> ErrorRecord:
    """One JSON line (or an already parsed dict) -> ErrorRecord, or RecordError naming every problem."""
    if isinstance(line, str):
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(where, None, [f"not valid JSON ({e.msg} at column {e.colno})"]) from None
    else:
        data = line
    if not isinstance(data, dict):
        raise RecordError(where, None, [f"expected a JSON object, got {type(data).__name__}"])
    rid = data.get("id") if isinstance(data.get("id"), str) else None
    problems = [f"missing field {name!r}" for name in REQUIRED if name not in data]
    if "id" in data and not (isinstance(data["id"], str) and ID_PATTERN.match(data["id"])):
        problems.append("id must be 1-128 characters of letters, digits and . _ : -")
    for name in ("model", "input", "prediction", "target"):
        if name in data and (p := text_problem(name, data[name])):
            problems.append(p)
    if "task" in data and data["task"] not in TASKS:
        problems.append(f"task must be one of {TASKS}, got {data['task']!r}")
    if "logged_at" in data:
        try:
            datetime.fromisoformat(str(data["logged_at"]).replace("Z", "+00:00"))
        except ValueError:
            problems.append(f"logged_at is not an RFC 3339 timestamp: {data['logged_at']!r}")
    lists = {}
    for name in OPTIONAL:
        items = data.get(name) or []
        if not isinstance(items, list):
            problems.append(f"{name} must be a list of strings")
        else:
            problems += [f"{name}[{i}]: {p}" for i, r in enumerate(items) if (p := text_problem(name[:-1], r))]
        lists[name] = list(items) if isinstance(items, list) else []
    unknown = set(data) - set(REQUIRED) - set(OPTIONAL)
    if unknown:
        problems.append(f"unknown fields {sorted(unknown)}")
    if problems:
        raise RecordError(where, rid, problems)
    return ErrorRecord(data["id"], data["model"], data["task"], data["input"], data["prediction"], data["target"],
                       data["logged_at"], lists["rephrases"], lists["phrasings"], lists["negatives"])


def read_records(path: str | Path) -> list[ErrorRecord]:
    """All records of a JSON-lines file; raises RecordError on the first bad line or a repeated id."""
    records, seen = [], {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            record = parse_record(line, where)
            if record.id in seen:
                raise RecordError(where, record.id, [f"duplicate id (first at line {seen[record.id]})"])
            seen[record.id] = number
            records.append(record)
    return records
