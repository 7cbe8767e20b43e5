"""Issue "Trust": inputs that would alter, crash or block the pipeline are quarantined with their reason and their
original bytes; a record that cannot be edited fails alone; a corrupt patch set never loads."""
import base64
import json

import pytest
import torch
from conftest import FACTS, editor_for

from patcher.engine.config import EditorConfig
from patcher.engine.patchset import CorruptPatchSet, PatchSet
from patcher.engine.records import ErrorRecord, RecordError, load_json, parse_record, read_records, split_lines
from patcher.engine.sequential import run_stream, to_patchset
from patcher.engine.suites import Rows
from patcher.pipeline.train import claim_key, known_answers, suspicious
from patcher.pipeline.validation import Expected, validate_lines

MODELS = {"factcheck-minilm": Expected("classification", ("SUPPORTED", "REFUTED")),
          "facts-smollm2": Expected("generation")}


def record(**fields) -> dict:
    r = {"id": "r1", "model": "factcheck-minilm", "task": "classification", "input": "Paris is in France.",
         "prediction": "REFUTED", "target": "SUPPORTED", "logged_at": "2026-01-01T00:00:00Z"}
    return {**r, **fields}


def line(**fields) -> str:
    return json.dumps(record(**fields))


def quarantined(lines) -> dict:
    result = validate_lines(lines, MODELS)
    assert result.received == sum(1 for x in lines if not isinstance(x, str) or x.strip())
    return {q["line"]: q for q in result.quarantined}


def test_lines_split_on_newline_only_with_bom_and_crlf():
    text = json.dumps(record(input="a\u2028b\u0085c"), ensure_ascii=False)   # JSON allows both inside strings
    data = b"\xef\xbb\xbf" + text.encode() + b"\r\n" + line(id="r2").encode() + b"\n"
    lines = split_lines(data)
    assert len(lines) == 2 and json.loads(lines[0])["input"] == "a\u2028b\u0085c"
    assert validate_lines(lines, MODELS).quarantined == []                # the BOM no longer rejects line 1


def test_invalid_utf8_is_quarantined_with_its_bytes(tmp_path):
    raw = line(id="bad").encode().replace(b"Paris", b"Par\xffis")
    lines = split_lines(line().encode() + b"\n" + raw + b"\n")
    q = quarantined(lines)
    at = raw.index(b"\xff")
    assert list(q) == [2] and q[2]["reasons"] == [f"not valid UTF-8 (byte 0xff at offset {at})"]
    assert base64.b64decode(q[2]["record_base64"]) == raw                  # the original bytes, not U+FFFD
    (tmp_path / "bad.jsonl").write_bytes(raw + b"\n")
    with pytest.raises(RecordError, match="not valid UTF-8"):
        read_records(tmp_path / "bad.jsonl")


@pytest.mark.parametrize("text, reason", [
    ('{"id": "a", "id": "b"}', "duplicate keys ['id']"),
    ("[" * 100_000, "JSON nested too deeply"),
    (line(input="a\ud800b"), "lone surrogate"),
    ('{"input": "' + "x" * (1 << 20) + '"}', "line longer than"),
])
def test_json_that_would_alter_or_crash_is_refused(text, reason):
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        load_json(text)
    assert reason.split(" (")[0] in quarantined([line(id="ok"), text])[2]["reasons"][0]


def test_dates_tasks_sources_and_empty_fields_get_their_reasons():
    q = quarantined([line(id="ok"), line(id="t", task="generation"), line(id="e", prediction=""),
                     line(id="f", logged_at="2026-02-30T00:00:00Z"), line(id="y", logged_at="2999-01-01T00:00:00Z"),
                     line(id="z", logged_at="0000-01-01T00:00:00Z"), line(id="s", source="feedback:alice"),
                     line(id="b", source="no spaces allowed")])
    assert q[2]["reasons"] == ["task is not classification, what factcheck-minilm does"]
    assert q[3]["reasons"] == ["prediction is empty"]                       # not "longer than 2000"
    for n in (4, 5, 6):
        assert q[n]["reasons"] == ["logged_at is not a real date, or more than 300 s in the future"]
    assert 7 not in q and q[8]["reasons"] == ["source must be 1-128 of letters, digits and . _ : @ -"]
    assert parse_record(line(source="feedback:alice")).source == "feedback:alice"
    with pytest.raises(RecordError, match="in the future"):
        parse_record(line(logged_at="2999-01-01T00:00:00Z"))
    with pytest.raises(RecordError, match="not a real date"):
        parse_record(line(logged_at="2026-02-30T00:00:00Z"))
    assert "source" not in ErrorRecord(**{k: v for k, v in record().items()}).to_dict()   # absent, not ""


def test_a_record_that_cannot_be_edited_fails_alone(make_model, tokenizer, monkeypatch):
    editor = editor_for(make_model, tokenizer, "gpt2")
    records = [ErrorRecord(f"e{i}", "tiny", "generation", f.input, "x", f.target, "2026-01-01T00:00:00Z")
               for i, f in enumerate(FACTS[:3])]
    records[0].task = "classification"
    real_edit = editor.edit

    def edit(error_id, *args, **kwargs):
        if error_id == "e1":
            raise ValueError("something about this record")
        return real_edit(error_id, *args, **kwargs)

    monkeypatch.setattr(editor, "edit", edit)
    outcomes = run_stream(editor, records, progress=False, hold=lambda r: None)
    assert [o.status for o in outcomes] == ["failed", "failed", "edited"]
    assert outcomes[0].reason == "task 'classification', but the model does generation"
    assert outcomes[1].reason == "editing raised ValueError: something about this record"
    held = run_stream(editor, [ErrorRecord("e9", "tiny", "generation", FACTS[3].input, "x", "rome", "2026-01-01T00:00:00Z")],
                      progress=False, hold=lambda r: "contradicts the memory")
    assert held[0].status == "failed" and held[0].reason == "held for review: contradicts the memory"
    assert "e9" not in editor.owners


def test_corrections_that_contradict_known_answers_are_flagged():
    def rows(*pairs):
        return Rows("f.jsonl", "0" * 64, [{"input": i, "target": t} for i, t in pairs])

    known = known_answers([("memory", rows((FACTS[0].input, "paris"), (FACTS[2].input, None))),
                           ("locality suite test", rows((FACTS[1].input, "madrid"))), ("validation memory", None)])
    assert claim_key("The capital of  France is.") == claim_key(FACTS[0].input)
    poison = ErrorRecord("p", "m", "generation", "The capital of France is", "x", "berlin", "2026-01-01T00:00:00Z")
    assert suspicious(poison, known) == ["contradicts the memory: 'The capital of France is' -> 'paris'"]
    agreeing = ErrorRecord("q", "m", "generation", FACTS[1].input, "x", "Madrid.", "2026-01-01T00:00:00Z")
    assert suspicious(agreeing, known) == []
    unanswered = ErrorRecord("r", "m", "generation", FACTS[2].input, "x", "rome", "2026-01-01T00:00:00Z")
    assert suspicious(unanswered, known) == []          # the model's own answer is what a mistake contradicts


def test_a_corrupt_patch_set_never_loads(tmp_path, make_model, tokenizer):
    editor = editor_for(make_model, tokenizer, "gpt2")
    outcomes = [editor.edit("e0", FACTS[0].input, FACTS[0].target)]
    out = to_patchset(editor, outcomes, "tiny", None).save(tmp_path / "p")
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["weights_sha256"]) == 64
    PatchSet.load(out)
    data = bytearray((out / "patches.safetensors").read_bytes())
    data[-4:] = b"\x00\x00\x80\x68"            # one float becomes ~4.8e24: finite, wrong
    (out / "patches.safetensors").write_bytes(bytes(data))
    with pytest.raises(CorruptPatchSet, match="is corrupt: sha256"):
        PatchSet.load(out)
    del manifest["weights_sha256"]             # an older manifest: finite values at least
    (out / "manifest.json").write_text(json.dumps(manifest))
    data[-4:] = b"\x00\x00\x80\x7f"            # +inf
    (out / "patches.safetensors").write_bytes(bytes(data))
    with pytest.raises(CorruptPatchSet, match="non-finite"):
        PatchSet.load(out)


def test_a_patch_set_keeps_its_own_kind_of_neuron(make_model, tokenizer):
    editor = editor_for(make_model, tokenizer, "gpt2", subject_layer=0)
    outcomes = [editor.edit("e0", FACTS[0].input, FACTS[0].target)]
    patches = to_patchset(editor, outcomes, "tiny", None)
    config = EditorConfig()
    assert patches.own_kind(config) == ["subject_layer 0 (the patch set's own; the settings ask for None)"]
    assert config.subject_layer == 0
    assert torch.equal(patches.neurons.keys, editor.neurons.keys)
