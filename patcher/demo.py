"""The main job on the embedded defaults: find SmolLM2's real factual mistakes and fix them as sequential
edits, then report SR / GR / ER / TrainR / TestR. Everything goes through the same functions as
`patcher edit` (the files it writes can be fed to that command)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .config import EditorConfig
from .facts import all_facts, split_facts
from .facts.mistakes import find_mistakes
from .metrics import summarize
from .models.base import load_model, smollm2_dir
from .sequential import editor_on_facts, run_stream, to_patchset


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def run_demo(edits: int = 30, out_dir: Path = Path("runs/demo"), config: EditorConfig | None = None,
             seed: int = 0) -> int:
    start = time.perf_counter()
    config = config or EditorConfig()
    model_dir = smollm2_dir()
    model, tokenizer = load_model(model_dir)
    split = split_facts(all_facts(), seed=seed)
    editor, train, test = editor_on_facts(model, tokenizer, config, split)
    records = find_mistakes(editor, split["edit"], "smollm2", limit=edits)
    write_jsonl(out_dir / "errors.jsonl", [r.to_dict() for r in records])
    print(f"{len(records)} real mistakes of SmolLM2-135M to fix (memory: {len(editor.memory)} vectors)",
          file=sys.stderr)
    outcomes = run_stream(editor, records)
    to_patchset(editor, outcomes, "smollm2", model_dir).save(out_dir / "patches")
    metrics = summarize(editor, outcomes, train, test)
    metrics["total_seconds"] = round(time.perf_counter() - start, 1)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, ensure_ascii=False) + "\n")
    keys = ["SR", "GR", "ER", "TrainR", "TestR", "train_unchanged", "test_unchanged", "n_edits", "n_failed",
            "n_skipped_already_correct", "n_neurons", "edit_seconds_median", "total_seconds"]
    print(json.dumps({k: metrics[k] for k in keys}, indent=1))
    print(f"errors: {out_dir / 'errors.jsonl'}  patches: {out_dir / 'patches'}  metrics: {out_dir / 'metrics.json'}",
          file=sys.stderr)
    return 0
