"""Validation with the great-expectations suite: every damaged line of a realistic batch is quarantined
with a reason and its original text, every clean line accepted: accepted + quarantined = received."""
import json
import subprocess
import sys
from datetime import datetime, timezone

from patcher.engine.records import ErrorRecord, parse_record
from patcher.facts.stream import batches
from patcher.pipeline.validation import Expected, validate_lines

# the two built-in models' rules, as the catalog gives them once their directories are built
MODELS = {"factcheck-minilm": Expected("classification", ("SUPPORTED", "REFUTED")),
          "facts-smollm2": Expected("generation")}


def stream(task="classification", n=240, share=0.3, seed=2):
    model, target = ("factcheck-minilm", "REFUTED") if task == "classification" else ("facts-smollm2", "Lima")
    records = [ErrorRecord(f"r-{i}", model, task, f"Claim number {i}.", "x", target, "2026-11-24T10:00:00Z",
                           [f"Claim {i}, said again."]) for i in range(n)]
    files, damaged = batches(records, datetime(2026, 11, 24, 10, tzinfo=timezone.utc), hours=1, per_batch=n,
                             damaged_share=share, seed=seed)
    (key, lines), = files.items()
    return lines, {i + 1: kind for (k, i), kind in damaged.items()}


def test_every_damaged_line_is_quarantined_with_its_reason():
    for task in ("classification", "generation"):
        lines, damaged = stream(task)
        result = validate_lines(lines, MODELS)
        assert result.received == len(lines) and len(result.accepted) + len(result.quarantined) == len(lines)
        quarantined = {q["line"]: q for q in result.quarantined}
        assert set(quarantined) == set(damaged), task
        for number, q in quarantined.items():
            assert q["record"] == lines[number - 1] and q["reasons"]        # original text kept, reason given
        for record in result.accepted:
            parse_record(record)                                           # accepted ones are valid records


def test_reasons_name_the_problem():
    ok = {"id": "a-1", "model": "factcheck-minilm", "task": "classification", "input": "The sky is green.",
          "prediction": "SUPPORTED", "target": "REFUTED", "logged_at": "2026-11-24T10:00:00Z"}
    lines = [json.dumps(ok), json.dumps({**ok, "target": "MAYBE", "id": "a-2"}), json.dumps(ok),
             json.dumps({**ok, "id": "a-3", "model": "gpt-9"}), "{not json", json.dumps({**ok, "id": "a-4", "x": 1}),
             json.dumps({**ok, "id": "a-5", "phrasings": ["The sky is blue.", 7]}),
             json.dumps({**ok, "id": "a-6", "phrasings": ["The sky has the colour green."]})]
    result = validate_lines(lines, MODELS)
    reasons = {q["line"]: q["reasons"] for q in result.quarantined}
    assert [r["id"] for r in result.accepted] == ["a-1", "a-6"]
    assert reasons[7] == ["phrasings must be a list of valid texts"]
    assert reasons[2] == ["target is not one of factcheck-minilm's labels ['SUPPORTED', 'REFUTED']"]
    assert reasons[3] == ["duplicate id (first at line 1)"]
    assert reasons[4] == ["model is not factcheck-minilm or facts-smollm2"]
    assert reasons[5][0].startswith("not valid JSON")
    assert reasons[6] == ["unknown fields x"]


def test_cli(tmp_path):
    lines, damaged = stream(n=60, share=0.25, seed=5)
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    catalog = user_classifier(tmp_path, ["SUPPORTED", "REFUTED"], name="factcheck-minilm")
    proc = subprocess.run([sys.executable, "-m", "patcher.cli", "validate", "--catalog", str(catalog),
                           "--in", str(tmp_path / "in.jsonl"),
                           "--accepted", str(tmp_path / "ok.jsonl"), "--quarantine", str(tmp_path / "q.jsonl")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts == {"received": 60, "accepted": 60 - len(damaged), "quarantined": len(damaged)}
    quarantine = [json.loads(x) for x in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert {q["line"] for q in quarantine} == set(damaged) and all(q["reasons"] for q in quarantine)


def test_batches_of_one_stream_with_data_docs(tmp_path):
    from patcher.pipeline.validation import validate_batches

    ok = {"id": "b-1", "model": "factcheck-minilm", "task": "classification", "input": "The sky is green.",
          "prediction": "SUPPORTED", "target": "REFUTED", "logged_at": "2026-11-24T10:00:00Z"}
    batches = {"2026/11/24/10/a.jsonl": [json.dumps(ok), json.dumps({**ok, "id": "b-2", "model": "facts-smollm2"})],
               "2026/11/24/11/b.jsonl": ["", json.dumps(ok), json.dumps({**ok, "id": "b-3"}),
                                         json.dumps({**ok, "id": "old-1"})]}
    result = validate_batches(batches, "factcheck-minilm", processed={"old-1": "run run-7"}, docs_dir=tmp_path / "docs",
                              expected=MODELS["factcheck-minilm"])
    assert [r["id"] for r in result.accepted] == ["b-1", "b-3"]
    assert result.counts == {"received": 5, "accepted": 2, "quarantined": 3}
    q = {(key, row["line"]): row["reasons"] for key, rows in result.quarantined.items() for row in rows}
    assert q == {("2026/11/24/10/a.jsonl", 2): ["model is not factcheck-minilm"],
                 ("2026/11/24/11/b.jsonl", 2): ["duplicate id (first at line 1)"],
                 ("2026/11/24/11/b.jsonl", 4): ["id already processed (run run-7)"]}
    pages = list((tmp_path / "docs" / "validations").rglob("*.html"))
    assert (tmp_path / "docs" / "index.html").exists() and len(pages) == 1
    page = pages[0].read_text()
    assert "Failed" in page and "belong to this set" in page and "facts-smollm2" in page   # the unexpected value


def user_classifier(tmp_path, labels, name="tickets"):
    """A catalog with one classifier whose directory holds only its config.json (all validation reads)."""
    model = tmp_path / name
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"],
                                                   "id2label": {str(i): v for i, v in enumerate(labels)}}))
    (tmp_path / "catalog.yaml").write_text(f"models:\n  {name}:\n    path: {name}\n    task: classification\n")
    return tmp_path / "catalog.yaml"


def test_labels_and_task_come_from_the_catalog_model(tmp_path):
    from patcher.pipeline.catalog import Catalog
    from patcher.pipeline.validation import known_models

    catalog = Catalog(user_classifier(tmp_path, ["billing", "bug", "feature", "account", "other"]))
    models = known_models(catalog=catalog)
    assert models == {"tickets": Expected("classification", ("billing", "bug", "feature", "account", "other"))}
    ok = {"id": "t-1", "model": "tickets", "task": "classification", "input": "I was charged twice.",
          "prediction": "bug", "target": "billing", "logged_at": "2026-11-24T10:00:00Z"}
    lines = [json.dumps(ok), json.dumps({**ok, "id": "t-2", "target": "feature"}),
             json.dumps({**ok, "id": "t-3", "target": "SUPPORTED"}),
             json.dumps({**ok, "id": "t-4", "task": "generation"}),
             json.dumps({**ok, "id": "t-5", "model": "factcheck-minilm"})]
    reasons = {q["line"]: q["reasons"] for q in validate_lines(lines, models).quarantined}
    assert reasons == {3: ["target is not one of tickets's labels ['billing', 'bug', 'feature', 'account', 'other']"],
                       4: ["task is not classification, what tickets does"],
                       5: ["model is not tickets"]}
