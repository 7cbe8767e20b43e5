"""Bad records are refused with the file, line, id and every problem named; good ones parse."""
import json

import pytest

from patcher.engine.records import RecordError, parse_record, read_records

GOOD = {"id": "err-1", "model": "facts-smollm2", "task": "generation", "input": "The capital of Peru is",
        "prediction": "Cusco", "target": "Lima", "rephrases": ["Peru's capital city is"],
        "logged_at": "2026-11-24T10:00:00Z"}


def test_good_record_parses():
    r = parse_record(json.dumps(GOOD))
    assert (r.id, r.target, r.rephrases, r.phrasings) == ("err-1", "Lima", ["Peru's capital city is"], [])
    r = parse_record({**GOOD, "phrasings": ["Peru has its capital in"]})
    assert r.phrasings == ["Peru has its capital in"] and parse_record(r.to_json()) == r


@pytest.mark.parametrize("change, problem", [
    ({"id": "../etc/passwd"}, "id must be"),
    ({"task": "translation"}, "task must be one of"),
    ({"input": ""}, "input is empty"),
    ({"input": 3}, "input must be a string"),
    ({"target": "x" * 3000}, "more than 2000"),
    ({"input": "bell\x07"}, "control characters"),
    ({"logged_at": "yesterday"}, "not an RFC 3339"),
    ({"rephrases": "one"}, "rephrases must be a list"),
    ({"phrasings": ["ok", ""]}, r"phrasings\[1\]: phrasing is empty"),
    ({"extra": 1}, "unknown fields"),
])
def test_each_problem_is_named(change, problem):
    with pytest.raises(RecordError, match=problem) as info:
        parse_record(json.dumps({**GOOD, **change}), "errors.jsonl:7")
    assert str(info.value).startswith("errors.jsonl:7")


def test_missing_fields_are_all_listed():
    with pytest.raises(RecordError) as info:
        parse_record(json.dumps({"id": "e2", "task": "generation"}), "f:1")
    assert "(id 'e2')" in str(info.value)
    assert all(f"missing field '{name}'" in str(info.value) for name in ("model", "input", "target", "logged_at"))


def test_truncated_line_and_duplicate_ids(tmp_path):
    path = tmp_path / "errors.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD)[:40] + "\n")
    with pytest.raises(RecordError, match=r"errors.jsonl:2: not valid JSON"):
        read_records(path)
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(RecordError, match=r":3 \(id 'err-1'\): duplicate id \(first at line 1\)"):
        read_records(path)


def test_damaged_batches_are_caught_and_clean_lines_parse():
    from datetime import datetime, timezone

    from patcher.engine.records import ErrorRecord
    from patcher.facts.stream import DAMAGES, batches

    records = [ErrorRecord(f"g-{i}", "facts-smollm2", "generation", f"The capital of country {i} is", "x",
                           f"City{i}", "2026-11-24T10:00:00Z", [f"Country {i}'s capital is"]) for i in range(400)]
    files, damaged = batches(records, datetime(2026, 11, 24, 10, 30, tzinfo=timezone.utc), hours=2,
                             per_batch=50, damaged_share=0.25, seed=1)
    assert sorted({k.rsplit("/", 1)[0] for k in files}) == ["2026/11/24/10", "2026/11/24/11"]
    assert sum(map(len, files.values())) == 400 and set(damaged.values()) == set(DAMAGES)
    seen = set()
    for key, lines in files.items():
        for i, line in enumerate(lines):
            kind = damaged.get((key, i))
            try:
                record = parse_record(line, f"{key}:{i + 1}")
                problem = record.id in seen
                seen.add(record.id)
            except RecordError:
                problem = True
            assert problem == (kind is not None), (key, i, kind, line[:120])
