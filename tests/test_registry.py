"""The patch registry on a temporary git repository with a real DVC remote on SeaweedFS, with real patch sets
of factcheck-minilm: versions, stages, a clean clone fetching by stage, rollbacks that change nothing else,
and registrations that crash midway or run at the same time."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from patcher.engine.config import EditorConfig
from patcher.engine.patchset import MANIFEST, WEIGHTS, PatchSet
from patcher.engine.records import read_records
from patcher.engine.sequential import build_editor, run_stream, to_patchset
from patcher.facts.bank import all_facts, split_facts
from patcher.facts.mistakes import task_examples
from patcher.facts.sets import editor_on_facts
from patcher.models.base import load_model
from patcher.pipeline.registry import Registry, RegistryError

pytestmark = pytest.mark.real
MODEL = "factcheck-minilm"


@pytest.fixture(scope="module")
def patch_sets(factcheck_model, tmp_path_factory):
    """Three patch sets of one real edit stream: after 3, 6 and 9 edits (each the full set so far)."""
    model, tokenizer = load_model(factcheck_model)
    editor, _, _ = editor_on_facts(model, tokenizer, EditorConfig(), split_facts(all_facts(), seed=0))
    records = read_records(f"data/errors/{MODEL}.jsonl")[:9]
    out, outcomes = tmp_path_factory.mktemp("patch_sets"), []
    dirs = []
    for i in range(3):
        outcomes += run_stream(editor, records[3 * i: 3 * i + 3], progress=False)
        dirs.append(to_patchset(editor, outcomes, MODEL, factcheck_model).save(out / f"p{i + 1}"))
    return dirs


def gate_report(n):
    return {"passed": True, "checks": [], "metrics": {"SR": 1.0, "ER": 1.0, "TrainR": 1.0, "TestR": 0.99 + n / 1000}}


def approval(who="alice"):
    return {"approved": True, "reviewer": who, "comment": "ok", "at": "2026-11-24T12:00:00Z", "by_policy": False}


def cli(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "patcher.cli", *args], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def predictions(model_dir, patch_dir, examples):
    model, tokenizer = load_model(model_dir)
    editor = build_editor(model, tokenizer, EditorConfig(), patches=PatchSet.load(patch_dir))
    return editor.predictions(editor.cache(examples))


def test_versions_stages_clean_clone_and_rollbacks(s3_env, tmp_path, patch_sets, factcheck_model):
    repo = tmp_path / "registry-repo"
    cli("registry", "init", "--repo", str(repo), "--remote", f"{s3_env}/dvc")
    registry = Registry(repo)
    for n, p in enumerate(patch_sets, 1):
        v = registry.register(MODEL, p, gate_report(n), approval())
        assert (v["number"], v["tag"], v["edits"]) == (n, f"{MODEL}@v{n}.0.0", len(PatchSet.load(p).edits))
    listed = cli("registry", "list", "--repo", str(repo), "--model", MODEL).splitlines()
    assert [line.split()[0] for line in listed] == ["v1.0.0", "v2.0.0", "v3.0.0"] and "TestR 0.993" in listed[2]
    diff = json.loads(cli("registry", "diff", "--repo", str(repo), "--model", MODEL, "1", "3"))
    assert diff["removed"] == [] and len(diff["added"]) == len(PatchSet.load(patch_sets[2]).edits) - \
        len(PatchSet.load(patch_sets[0]).edits)

    cli("registry", "promote", "--repo", str(repo), "--model", MODEL, "2", "prod")
    assert registry.stages(MODEL) == {"prod": 2}
    assert f"{MODEL}#prod#1" in registry.git("tag", "-l").split()
    assert registry.git("status", "--porcelain").strip() == ""          # everything committed

    clone = tmp_path / "clone"                                           # a clean clone: no DVC cache
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    got = tmp_path / "got"
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "artifacts", "get", str(clone), MODEL, "--stage", "prod", "-o", str(got)], check=True,
                   capture_output=True)
    assert (got / WEIGHTS).read_bytes() == (patch_sets[1] / WEIGHTS).read_bytes()
    assert json.loads((got / MANIFEST).read_text())["edits"] == PatchSet.load(patch_sets[1]).edits
    subprocess.run([dvc, "pull", "-q"], cwd=clone, check=True, capture_output=True)
    assert (clone / "registry" / MODEL / WEIGHTS).read_bytes() == (patch_sets[2] / WEIGHTS).read_bytes()

    # one edit out: a new version; every other edit and the locality data predict exactly as before
    v3 = PatchSet.load(patch_sets[2])
    removed = v3.edits[1]["error_id"]
    out = cli("registry", "rollback", "--repo", str(repo), "--model", MODEL, "--edit", removed, "--reviewer", "bob")
    assert "v4.0.0: remove-edit" in out
    v4_dir = registry.fetch(MODEL, tmp_path / "v4")
    v4 = PatchSet.load(v4_dir)
    assert [e["error_id"] for e in v4.edits] == [e["error_id"] for e in v3.edits if e["error_id"] != removed]
    assert removed not in v4.owners and len(v4) == len(v3) - v3.owners.count(removed)
    from patcher.engine.examples import Example

    others = [Example(e["input"], e["target"]) for e in v4.edits]
    locality = task_examples("classification", split_facts(all_facts(), seed=0)["test"][:80], "prompt", 0)
    assert predictions(factcheck_model, v4_dir, others + locality) == \
        predictions(factcheck_model, patch_sets[2], others + locality)
    assert registry.read(MODEL, "approval.json")["reviewer"] == "bob"

    back = registry.rollback(MODEL, 1, "carol", "back to the first")      # a whole version back: new version
    assert (back["number"], back["action"], back["parent"]) == (5, "rollback", 4)
    assert (registry.fetch(MODEL, tmp_path / "v5") / WEIGHTS).read_bytes() == (patch_sets[0] / WEIGHTS).read_bytes()
    assert [v["number"] for v in registry.versions(MODEL)] == [1, 2, 3, 4, 5]     # history kept

    registry.register("other-model", patch_sets[0], gate_report(1), approval("dora"))
    every = cli("registry", "list", "--repo", str(repo)).splitlines()          # no --model: every model's versions
    assert [line.split()[:2] for line in every] == \
        [["factcheck-minilm", f"v{n}.0.0"] for n in range(1, 6)] + [["other-model", "v1.0.0"]]
    assert every[-1].endswith("by dora")


# A registration in its own process; with a step named, the process dies (os._exit: no cleanup, no finally) as
# that step starts, as a registration killed there would.
REGISTER = """
import os, sys
from patcher.pipeline.registry import Registry
if len(sys.argv) > 4:
    assert callable(getattr(Registry, sys.argv[4]))
    setattr(Registry, sys.argv[4], lambda *args, **kwargs: os._exit(97))
Registry(sys.argv[1]).register("{model}", sys.argv[2], {{"metrics": {{}}}}, {{"reviewer": sys.argv[3]}})
"""


def _register_in_subprocess(repo, patches, reviewer, crash_at=None):
    return subprocess.Popen([sys.executable, "-c", REGISTER.format(model=MODEL), str(repo), str(patches), reviewer,
                             *([crash_at] if crash_at else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_crashed_and_concurrent_registrations(s3_env, tmp_path, patch_sets):
    repo = tmp_path / "registry-repo"
    registry = Registry.init(repo, f"{s3_env}/dvc")
    registry.register(MODEL, patch_sets[0], gate_report(1), approval())
    with pytest.raises(RegistryError, match="no version 9"):
        registry.resolve(MODEL, 9)
    for step in ("_push", "_commit", "_tag"):      # dies before DVC has the weights, before the commit, before the tag
        crashed = _register_in_subprocess(repo, patch_sets[2], "mallory", step)
        assert crashed.wait(timeout=120) == 97, crashed.stderr.read()[-2000:]
        assert [v["number"] for v in registry.versions(MODEL)] == [1]            # the previous version intact
        assert (registry.fetch(MODEL, tmp_path / "latest") / WEIGHTS).read_bytes() == \
            (patch_sets[0] / WEIGHTS).read_bytes()
        assert registry.read(MODEL, "approval.json")["reviewer"] == "alice"
    assert registry.git("log", "-1", "--format=%s").startswith(f"{MODEL} v2: register")   # committed, never tagged

    a = _register_in_subprocess(repo, patch_sets[1], "dave")                 # two at once: both land, in turn
    b = _register_in_subprocess(repo, patch_sets[2], "erin")
    assert a.wait(timeout=180) == 0 and b.wait(timeout=180) == 0, (a.stderr.read() + b.stderr.read())[-3000:]
    versions = registry.versions(MODEL)
    assert [v["number"] for v in versions] == [1, 2, 3]
    assert sorted(v["approved_by"] for v in versions[1:]) == ["dave", "erin"]
    for v in versions[1:]:
        source = patch_sets[1] if v["approved_by"] == "dave" else patch_sets[2]
        assert (registry.fetch(MODEL, tmp_path / v["tag"], v["number"]) / WEIGHTS).read_bytes() == \
            (source / WEIGHTS).read_bytes()
    assert registry.git("status", "--porcelain").strip() == ""
