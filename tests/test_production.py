"""The production models and their real mistakes: builds load, reach the accuracy measured here, are
deterministic and cached; error records are valid and each one is a real mistake of the model."""
import json
import subprocess
import sys

import pytest
import torch

from patcher import Editor
from patcher.engine.examples import Example
from patcher.engine.patchset import weights_sha256
from patcher.engine.records import read_records
from patcher.models.base import load_model
from patcher.models.production import FinetuneSettings, build

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def factcheck(factcheck_model):
    return factcheck_model


def test_factcheck_build_accuracy_and_card(factcheck):
    card = json.loads((factcheck / "model_card.json").read_text())
    assert card["task"] == "classification" and card["build"]["seed"] == 0
    acc = card["accuracy"]
    assert acc["train"] >= 0.9                 # it learned its training claims
    assert acc["test"] >= 0.6 and acc["edit"] >= 0.6   # better than chance on unseen facts, far from perfect
    model, _ = load_model(factcheck)
    assert model.config.id2label == {0: "SUPPORTED", 1: "REFUTED"}
    assert (factcheck / "MODEL_CARD.md").read_text().startswith("# Model card: factcheck-minilm")


def test_factcheck_build_is_cached(factcheck):
    before = (factcheck / "model_card.json").stat().st_mtime_ns
    assert build("factcheck-minilm", seed=0, out=factcheck) == factcheck
    assert (factcheck / "model_card.json").stat().st_mtime_ns == before


def test_finetune_is_deterministic(tmp_path):
    settings = FinetuneSettings(seed=3, epochs=1, limit=96)
    a = build("factcheck-minilm", out=tmp_path / "a", settings=settings, progress=lambda m: None)
    b = build("factcheck-minilm", out=tmp_path / "b", settings=settings, progress=lambda m: None)
    assert weights_sha256(a) == weights_sha256(b)
    assert json.loads((a / "model_card.json").read_text())["accuracy"] == \
        json.loads((b / "model_card.json").read_text())["accuracy"]


def test_factcheck_errors_are_real_mistakes(factcheck, tmp_path):
    out = tmp_path / "errors.jsonl"
    proc = subprocess.run([sys.executable, "-m", "patcher.cli", "errors", "generate", "--model", "factcheck-minilm",
                           "--model-dir", str(factcheck), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = read_records(out)                     # every line parses: valid format, unique ids
    assert len(records) >= 300
    assert all(r.model == "factcheck-minilm" and r.task == "classification" and len(r.rephrases) == 2
               for r in records)
    model, tokenizer = load_model(factcheck)
    torch.set_num_threads(1)
    editor = Editor(model, tokenizer)
    cached = editor.cache([Example(r.input, r.target) for r in records])
    assert all(not editor.judge(c)[0] for c in cached)                  # each one the model gets wrong
    assert all(r.prediction == editor.judge(c)[2] != r.target for r, c in zip(records, cached))


def test_smollm2_build_and_errors(models_dir, tmp_path):
    path = build("facts-smollm2", seed=0, out=models_dir / "facts-smollm2", progress=lambda m: None)
    card = json.loads((path / "model_card.json").read_text())
    assert card["task"] == "generation" and 0.1 <= card["accuracy"]["edit"] <= 0.6
    model, tokenizer = load_model(path)
    torch.set_num_threads(2)
    editor = Editor(model, tokenizer)
    from patcher.facts import all_facts, split_facts
    from patcher.facts.bank import sibling_prompts
    from patcher.facts.mistakes import find_mistakes, greedy_answer

    edit = split_facts(all_facts(), seed=0)["edit"]
    records = find_mistakes(editor, edit[:60], "facts-smollm2", logged_at="2026-11-27T19:20:02+00:00")
    assert len(records) >= 20 and {r.logged_at for r in records} == {"2026-11-27T19:20:02+00:00"}
    with pytest.raises(ValueError, match="logged_at is not an RFC 3339 timestamp: 'yesterday'"):
        find_mistakes(editor, edit[:2], "facts-smollm2", logged_at="yesterday")
    # negatives: the subject in the first 3 training templates of each other relation the bank has for it, then
    # the same question about its name twins (tests/test_facts.py)
    facts = {f.id: f for f in edit}
    for r in records:
        siblings = sibling_prompts(facts[r.id], all_facts(), 3)
        assert r.negatives[: len(siblings)] == siblings and r.input not in r.negatives
        assert len(r.negatives) % 3 == 0 and all(facts[r.id].subject in n for n in siblings), r
        if r.id.startswith("trivia:"):                                 # no other relation about the subject
            assert r.negatives == []
    countries = [r for r in records if r.id.split(":")[0] in ("capital", "currency_code", "demonym", "region")]
    assert sum(len(r.negatives) == 9 for r in countries) >= len(countries) / 2   # most: 3 other relations
    for r in records[:5]:
        assert greedy_answer(editor, r.input, len(editor.task.answer_ids(r.target))) == r.prediction != r.target
    torch.set_num_threads(1)


def test_errors_land_in_s3_as_hourly_batches(factcheck, tmp_path):
    from patcher.engine.records import RecordError, parse_record
    from patcher.pipeline.s3 import EmbeddedS3

    with EmbeddedS3(tmp_path / "s3", "test-key", "test-secret") as server:
        env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "AWS_ENDPOINT_URL": server.endpoint_url,
               "AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret"}
        proc = subprocess.run([sys.executable, "-m", "patcher.cli", "errors", "generate", "--model",
                               "factcheck-minilm", "--model-dir", str(factcheck), "--limit", "120", "--hours", "2",
                               "--damaged", "0.2", "--s3", "s3://patcher-test/errors"],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        s3 = server.client()
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="patcher-test", Prefix="errors/")["Contents"]]
        assert len({k.rsplit("/", 1)[0] for k in keys}) == 2                     # two hourly prefixes
        assert all(k.startswith("errors/") and k.endswith(".jsonl") and k.count("/") == 5 for k in keys)
        lines = [line for k in keys
                 for line in s3.get_object(Bucket="patcher-test", Key=k)["Body"].read().decode().splitlines()]
        assert len(lines) == 120
        bad = 0
        for line in lines:
            try:
                parse_record(line)
            except RecordError:
                bad += 1
        assert 5 <= bad <= 60                                                     # damaged lines are there
        import boto3

        wrong = boto3.client("s3", endpoint_url=server.endpoint_url, aws_access_key_id="test-key",
                             aws_secret_access_key="not-the-secret", region_name="us-east-1")
        with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
            wrong.list_objects_v2(Bucket="patcher-test")
