"""The main job on the embedded defaults: the whole loop on real components. Starts the embedded S3 server,
builds the production model (cached), logs an hour of its real mistakes into S3 as a serving system
would (with damaged lines among them), and runs the Prefect pipeline once with the demo approval policy
(approved by policy, and recorded as such) into a patch registry of its own (OUT/registry: git + DVC,
remote in the demo bucket). Prints the outcome and where to look."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

DEMO_ROOT = "s3://patcher-demo"


def _use_embedded_s3() -> dict:
    """This process (and DVC in it) talks to the embedded server, started if needed, whatever AWS
    settings are around."""
    from patcher.pipeline import s3

    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.pop(name, None)
    state = s3.up()
    s3.export_settings()
    return state


def clear_prefix(uri: str) -> int:
    """Deletes everything under an s3:// prefix (the demo starts from an empty root each time)."""
    from .pipeline.s3 import client, parse_uri
    from .pipeline.store import list_objects

    s3, (bucket, prefix) = client(), parse_uri(uri)
    keys = [f"{prefix}/{k}" if prefix else k for k in list_objects(uri, s3)]
    for i in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
    return len(keys)


def seed_errors(model: str, root: str, edits: int, seed: int = 0) -> dict:
    """The model's real mistakes on the fact bank's edit split, as one hour of batch files under
    ROOT/errors/MODEL/. -> counts."""
    from .engine.editor import Editor
    from .facts.bank import all_facts, split_facts
    from .facts.mistakes import find_mistakes
    from .facts.stream import batches, hours_ago
    from .models.base import load_model
    from .models.production import build
    from .pipeline.catalog import Catalog
    from .pipeline.store import put_files

    entry = Catalog().entry(model)               # built where the catalog says the pipeline finds it
    model_dir = build(model, out=entry.resolve(entry.path), progress=lambda m: print(m, file=sys.stderr))
    loaded, tokenizer = load_model(model_dir)
    records = find_mistakes(Editor(loaded, tokenizer), split_facts(all_facts(), seed=seed)["edit"], model,
                            limit=edits, seed=seed)
    files, damaged = batches(records, hours_ago(1), hours=1, seed=seed)
    put_files(f"{root}/errors/{model}", {k: "".join(line + "\n" for line in v) for k, v in files.items()})
    return {"mistakes": len(records), "lines": sum(map(len, files.values())), "damaged": len(damaged),
            "files": sorted(files)}


def run_demo(model: str = "facts-smollm2", edits: int = 40, out_dir: Path = Path("runs/demo"), seed: int = 0) -> int:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    start = time.perf_counter()
    state = _use_embedded_s3()
    print(f"S3: {state['endpoint_url']} (SeaweedFS, `patcher s3 down` stops it); root {DEMO_ROOT}", file=sys.stderr)
    clear_prefix(DEMO_ROOT)
    seeded = seed_errors(model, DEMO_ROOT, edits, seed)
    print(f"logged {seeded['mistakes']} real mistakes of {model} as {seeded['lines']} lines ({seeded['damaged']} "
          f"damaged) under {DEMO_ROOT}/errors/{model}/", file=sys.stderr)
    seeded_s = time.perf_counter() - start
    from flows.pipeline import pipeline

    from .pipeline.registry import Registry
    from .pipeline.store import read_text

    shutil.rmtree(out_dir / "registry", ignore_errors=True)
    registry = Registry.init(out_dir / "registry", f"{DEMO_ROOT}/dvc")      # a registry of the demo's own
    result = pipeline(model=model, approval="auto", overrides={"ingest": {"root": DEMO_ROOT},
                                                              "register": {"repo": str(registry.repo)}})
    summary = result.summary
    run = summary["where"].get("run")
    for name in ("summary.json", "train_report.json", "gate_report.md", "metrics.svg"):
        try:
            (out_dir / name).write_text(read_text(f"{run}/{name}"))
        except Exception:  # noqa: BLE001 (a rejected or empty run has fewer files)
            pass
    total = time.perf_counter() - start
    keys = ("SR", "GR", "ER", "TrainR", "TestR", "n_edits", "n_failed", "n_skipped_already_correct", "n_neurons",
            "edit_seconds_median")
    print(json.dumps({"outcome": str(result.outcome), **summary["counts"],
                      **{k: (summary.get("metrics") or {}).get(k) for k in keys},
                      "seconds": {"seed_errors": round(seeded_s, 1), **summary["seconds"], "total": round(total, 1)}},
                     indent=1))
    print("where to look:", file=sys.stderr)
    for what, uri in summary["where"].items():
        print(f"  {what}: {uri}", file=sys.stderr)
    print(f"  local copies: {out_dir}/ (summary.json, train_report.json, gate_report.md, metrics.svg)",
          file=sys.stderr)
    print(f"  versions: patcher registry list --repo {out_dir / 'registry'} --model {model}", file=sys.stderr)
    return 0 if result.outcome.approved else 4
