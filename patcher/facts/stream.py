"""The error stream as a serving system writes it: hourly batches of JSON lines under
`YYYY/MM/DD/HH/` (below the errors prefix), with a realistic share of damaged lines so validation has real work to do.

Damage kinds (one per damaged line): a truncated line, a missing field, a wrong type, empty text, oversize
text, an unknown label (classification) or an empty answer (generation), a duplicate id, a bad timestamp,
control characters, an id unsafe for object keys. `batches` returns the lines and, separately, which
line got which damage, so tests can check that validation finds every one.
"""
from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

from patcher.engine.records import ErrorRecord

DAMAGES = ("truncated", "missing_field", "wrong_type", "empty_text", "oversize_text", "unknown_label",
           "duplicate_id", "bad_timestamp", "control_chars", "unsafe_id")


def damage(record: dict, kind: str, rng: random.Random, previous_id: str | None) -> str:
    r = dict(record)
    if kind == "truncated":
        line = json.dumps(r, ensure_ascii=False)
        return line[: rng.randint(5, len(line) - 5)]
    if kind == "missing_field":
        del r[rng.choice(["target", "input", "task", "logged_at", "model", "id"])]
    elif kind == "wrong_type":
        field = rng.choice(["input", "target", "rephrases"])
        r[field] = 42 if field != "rephrases" else "not a list"
    elif kind == "empty_text":
        r[rng.choice(["input", "target"])] = "   "
    elif kind == "oversize_text":
        r["input"] = (r["input"] + " ") * (4000 // max(1, len(r["input"])) + 2)
    elif kind == "unknown_label":
        r["target"] = "MAYBE" if r["task"] == "classification" else ""
    elif kind == "duplicate_id":
        r["id"] = previous_id or r["id"]
    elif kind == "bad_timestamp":
        r["logged_at"] = rng.choice(["yesterday", "2026-13-45T99:00:00Z", ""])
    elif kind == "control_chars":
        r["input"] = r["input"][:5] + "\x00\x1b" + r["input"][5:]
    elif kind == "unsafe_id":
        r["id"] = rng.choice(["../../etc/passwd", "id with spaces", "x" * 300, "ok/../../no"])
    return json.dumps(r, ensure_ascii=False)


def hours_ago(hours: int) -> datetime:
    """The start of a stream of `hours` hourly batches that ends now: no logged_at lies in the future."""
    return datetime.now(timezone.utc) - timedelta(hours=hours)


def batches(records: list[ErrorRecord], start: datetime, hours: int = 1, per_batch: int = 50,
            damaged_share: float = 0.1, seed: int = 0) -> tuple[dict[str, list[str]], dict[tuple[str, int], str]]:
    """Spreads the records over `hours` hourly prefixes, `per_batch` lines per file, stamping logged_at
    inside each hour. -> ({key: lines}, {(key, line index): damage kind})."""
    rng = random.Random(seed)
    start = start.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
    files: dict[str, list[str]] = {}
    damaged: dict[tuple[str, int], str] = {}
    per_hour = max(1, -(-len(records) // hours))
    previous_id = None
    for i, record in enumerate(records):
        hour = start + timedelta(hours=i // per_hour)
        logged = hour + timedelta(seconds=rng.randint(0, 3599))
        row = {**record.to_dict(), "logged_at": logged.isoformat().replace("+00:00", "Z")}
        prefix = hour.strftime("%Y/%m/%d/%H")
        index_in_hour = i % per_hour
        key = f"{prefix}/batch-{index_in_hour // per_batch:04d}.jsonl"
        lines = files.setdefault(key, [])
        if rng.random() < damaged_share:
            kind = rng.choice(DAMAGES if previous_id else DAMAGES[:6])
            damaged[(key, len(lines))] = kind
            lines.append(damage(row, kind, rng, previous_id))
        else:
            lines.append(json.dumps(row, ensure_ascii=False))
            previous_id = row["id"]          # a duplicate repeats a clean line's id
    return files, damaged
