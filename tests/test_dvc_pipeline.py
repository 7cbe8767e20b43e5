"""`dvc repro` of the project's own dvc.yaml and catalog.yaml in a temporary copy: validate -> patch -> gate run for real on
factcheck-minilm's real mistakes, a second repro runs nothing, a gate threshold change reruns only the
gate, and `patcher approve` registers the pending patch set in the registry (DVC remote on SeaweedFS)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from patcher.serving.publish import latest

pytestmark = pytest.mark.real
MODEL = "factcheck-minilm"
ROOT = Path(__file__).resolve().parents[1]


def sh(*args, cwd, env):
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{args}: {proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def ran(output: str) -> list[str]:
    return sorted(line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '"))


def test_repro_noop_param_change_and_approval(tmp_path, factcheck_model, s3_env):
    repo = tmp_path / "project"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", "catalog.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "patcher", repo / "patcher", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data" / "facts", repo / "data" / "facts")
    shutil.copytree(ROOT / "data" / "catalog" / MODEL, repo / "data" / "catalog" / MODEL)
    (repo / "data" / "errors").mkdir(parents=True)
    for suffix in (".jsonl", ".stats.json"):
        shutil.copy(ROOT / "data" / "errors" / f"{MODEL}{suffix}", repo / "data" / "errors" / f"{MODEL}{suffix}")
    shutil.copytree(factcheck_model, repo / "data" / "models" / MODEL)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["patch"]["limit"] = 6
    params["ingest"]["root"] = s3_env                  # where `patcher approve` publishes the ONNX export
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = {**{k: v for k, v in os.environ.items() if k != "PATCHER_CATALOG"}, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    sh("git", "init", "-q", cwd=repo, env=env)
    sh("patcher", "registry", "init", "--repo", ".", "--remote", f"{s3_env}/dvc", cwd=repo, env=env)
    # what earlier stages would build (minutes) is here already: record it as their output, unrun
    sh("dvc", "commit", "-f", "-q", "facts", f"sets@{MODEL}", "model_factcheck", f"errors@{MODEL}", cwd=repo, env=env)
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "project", cwd=repo, env=env)

    target = f"gate@{MODEL}"
    first = sh("dvc", "repro", target, cwd=repo, env=env)
    assert ran(first) == [target, f"patch@{MODEL}", f"validate@{MODEL}"], first
    pipeline = repo / "data" / "pipeline" / MODEL
    pending = json.loads((pipeline / "pending.json").read_text())
    assert pending["passed"] and pending["model"] == MODEL
    shown = subprocess.run(["dvc", "metrics", "show", "--json", f"data/pipeline/{MODEL}/gate_metrics.json"],
                           cwd=repo, env=env, capture_output=True, text=True)
    metrics = json.loads(shown.stdout)
    shown = next(iter(metrics.values()))["data"][f"data/pipeline/{MODEL}/gate_metrics.json"]["data"]
    assert shown["passed"] is True and shown["n_edits"] >= 1
    assert len(json.loads((pipeline / "edit_metrics.json").read_text())) >= 2          # the plot's points

    assert ran(sh("dvc", "repro", target, cwd=repo, env=env)) == []                     # nothing changed

    params["gate"]["retain"] = 0.995
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(sh("dvc", "repro", target, cwd=repo, env=env)) == [target]              # only the gate
    pending = json.loads((pipeline / "pending.json").read_text())

    wrong = subprocess.run(["patcher", "approve", "not-the-id", "--model", MODEL, "--reviewer", "alice"], cwd=repo,
                           env=env, capture_output=True, text=True)
    assert wrong.returncode == 2 and "not-the-id" in wrong.stderr
    out = sh("patcher", "approve", pending["id"], "--model", MODEL, "--reviewer", "alice", "--registry", ".",
             cwd=repo, env=env)
    assert f"{MODEL}@v1.0.0" in out and f"published: {s3_env}/serving/{MODEL}/v0001" in out
    exported = json.loads((repo / "data" / "serving" / MODEL / "export.json").read_text())
    assert exported["patch_set"]["version"] == "v0001" and exported["patch_set"]["edits"] == shown["n_edits"]
    assert latest(s3_env, MODEL)["version"] == "v0001"
    listed = sh("patcher", "registry", "list", "--repo", ".", "--model", MODEL, cwd=repo, env=env)
    assert listed.startswith("v1.0.0") and "by alice" in listed
    every = sh("patcher", "registry", "list", "--repo", ".", cwd=repo, env=env)       # every model in the registry
    assert every.split()[:2] == [MODEL, "v1.0.0"] and len(every.splitlines()) == 1
    assert (repo / "registry" / MODEL / "patches.safetensors").read_bytes() == \
        (pipeline / "patches" / "patches.safetensors").read_bytes()


