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
  logged_at   RFC 3339 timestamp, a real date no later than now plus CLOCK_SKEW_S
  source      optional: who reported the mistake (1-128 of [A-Za-z0-9._:@-], e.g. "feedback:support-team"); the
              gate report shows it beside the correction

`parse_record` checks one line and names the line, the record and the problem; `read_records` never drops
a line silently: it raises on the first bad one. `split_lines` and `load_json` are the one reader of JSON lines
every front uses (pipeline, command line, service): bytes as logged, nothing altered on the way.
"""
from __future__ import annotations

import base64
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

TASKS = ("classification", "generation")
ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_TEXT = 2000
REQUIRED = ("id", "model", "task", "input", "prediction", "target", "logged_at")
OPTIONAL = ("rephrases", "phrasings", "negatives")          # lists of texts
SOURCE_PATTERN = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
RFC3339 = re.compile(r"^\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])[Tt ](?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d"
                     r"(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$")
CLOCK_SKEW_S = 300                  # how far in the future a logged_at may be (clocks of other machines drift)


MAX_LINE_BYTES = 1 << 20            # a longer line is quarantined unparsed (a record is a few kB)
BOM = b"\xef\xbb\xbf"


def split_lines(data: bytes) -> list[str | dict]:
    """A JSON-lines file as logged -> its lines: split on "\n" only (U+2028 and U+0085 may sit inside JSON
    strings), a trailing "\r" and a leading UTF-8 BOM dropped as JSON-lines readers do. A line that is not valid
    UTF-8 becomes its quarantine entry (`undecodable`: reason and original bytes, never repaired), a dict so that
    it crosses flow parameters as JSON."""
    if data.startswith(BOM):
        data = data[len(BOM):]
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    out: list[str | dict] = []
    for line in lines:
        line = line[:-1] if line.endswith(b"\r") else line
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            out.append(undecodable(line, error))
    return out


def undecodable(line: bytes, error: UnicodeDecodeError) -> dict:
    """What a quarantine record keeps of a line that is not UTF-8: the reason and the original bytes."""
    return {"record": None, "record_base64": base64.b64encode(line).decode("ascii"),
            "reasons": [f"not valid UTF-8 (byte 0x{line[error.start]:02x} at offset {error.start})"]}


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    repeated = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
    if repeated:
        raise ValueError(f"duplicate keys {repeated} (which one counts is ambiguous)")
    return dict(pairs)


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def load_json(line: str) -> object:
    """One JSON text, strictly: ValueError with the reason for invalid JSON, duplicate keys, nesting too deep
    for the parser, a line over MAX_LINE_BYTES, or a lone surrogate escape (not valid Unicode)."""
    if len(line) > MAX_LINE_BYTES or len(line.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
        raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        data = json.loads(line, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    for text in _strings(data):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("contains a lone surrogate escape (not valid Unicode)") from None
    return data


def logged_at_problem(value: str, now: datetime | None = None) -> str | None:
    """None for a real RFC 3339 date no later than now + CLOCK_SKEW_S, else what is wrong with it."""
    if not isinstance(value, str) or not RFC3339.match(value):
        return f"logged_at is not an RFC 3339 timestamp: {value!r}"
    try:
        at = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return f"logged_at is not a real date: {value!r}"
    if at > (now or utc_now()) + timedelta(seconds=CLOCK_SKEW_S):
        return f"logged_at is in the future (more than {CLOCK_SKEW_S} s from now): {value!r}"
    return None


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
    source: str = ""

    def to_dict(self) -> dict:
        data = asdict(self)
        if not data["source"]:
            del data["source"]                   # an optional field: absent, not empty
        return data

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
            data = load_json(line)
        except ValueError as e:
            raise RecordError(where, None, [str(e)]) from None
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
    if "logged_at" in data and (p := logged_at_problem(data["logged_at"])):
        problems.append(p)
    if "source" in data and not (isinstance(data["source"], str) and SOURCE_PATTERN.match(data["source"])):
        problems.append("source must be 1-128 characters of letters, digits and . _ : @ -")
    lists = {}
    for name in OPTIONAL:
        items = data.get(name) or []
        if not isinstance(items, list):
            problems.append(f"{name} must be a list of strings")
        else:
            problems += [f"{name}[{i}]: {p}" for i, r in enumerate(items) if (p := text_problem(name[:-1], r))]
        lists[name] = list(items) if isinstance(items, list) else []
    unknown = set(data) - set(REQUIRED) - set(OPTIONAL) - {"source"}
    if unknown:
        problems.append(f"unknown fields {sorted(unknown)}")
    if problems:
        raise RecordError(where, rid, problems)
    return ErrorRecord(data["id"], data["model"], data["task"], data["input"], data["prediction"], data["target"],
                       data["logged_at"], lists["rephrases"], lists["phrasings"], lists["negatives"],
                       data.get("source", ""))


def read_records(path: str | Path) -> list[ErrorRecord]:
    """All records of a JSON-lines file; raises RecordError on the first bad line or a repeated id."""
    records, seen = [], {}
    for number, line in enumerate(split_lines(Path(path).read_bytes()), 1):
        where = f"{path}:{number}"
        if isinstance(line, dict):
            raise RecordError(where, None, line["reasons"])
        if not line.strip():
            continue
        record = parse_record(line, where)
        if record.id in seen:
            raise RecordError(where, record.id, [f"duplicate id (first at line {seen[record.id]})"])
        seen[record.id] = number
        records.append(record)
    return records
