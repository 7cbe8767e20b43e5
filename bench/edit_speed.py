"""Seconds per edit: the product's default (cached) path against the reference procedure (whole model every
step, the edit input fed 8 times, dropout on), on real edits of both real models, in one run.

    .venv/bin/python bench/edit_speed.py [--edits 20] [--reference-edits 20] [--models minilm,smollm2]

Prints one JSON object per model with fast_s_median, reference_s_median and ratio, and writes them all to
--out (default docs/results/edit_speed.json). Both paths run the same edits in the same order from the
same unpatched model and thread count; the reference path with EditorConfig.reference() settings.

MiniLM: all-MiniLM-L6-v2 with a seeded, untrained 2-label head (SUPPORTED/REFUTED); an edit flips its
label on a real claim built from the fact bank. SmolLM2: its real factual mistakes from the fact bank.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from patcher import Editor, EditorConfig  # noqa: E402
from patcher.engine.examples import Example  # noqa: E402
from patcher.engine.sequential import build_editor, set_threads  # noqa: E402
from patcher.facts import all_facts, split_facts  # noqa: E402
from patcher.facts.mistakes import examples, find_mistakes  # noqa: E402
from patcher.models.base import load_model, minilm_dir  # noqa: E402


def minilm_setup(config: EditorConfig, n_edits: int):
    import transformers as tf

    torch.manual_seed(config.seed)
    labels = {0: "SUPPORTED", 1: "REFUTED"}
    model = tf.AutoModelForSequenceClassification.from_pretrained(
        minilm_dir(), num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()})
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_dir())
    split = split_facts(all_facts(), seed=config.seed)
    claim = lambda f: Example(f"{f.prompt} {f.answer}.", "SUPPORTED")   # noqa: E731
    memory = [claim(f) for f in split["train"]]
    val = [claim(f) for f in split["validation"]]
    probe = Editor(model, tokenizer, config)
    stream = [claim(f) for f in split["edit"][:n_edits]]
    flipped = []
    for i, (ex, c) in enumerate(zip(stream, probe.cache(stream))):
        wrong = "REFUTED" if probe.judge(c)[2] == "SUPPORTED" else "SUPPORTED"
        flipped.append((f"claim-{i}", ex.input, wrong))
    return model, tokenizer, memory, val, flipped


def smollm2_setup(config: EditorConfig, n_edits: int):
    model, tokenizer = load_model("smollm2")
    split = split_facts(all_facts(), seed=config.seed)
    probe = Editor(model, tokenizer, config)
    records = find_mistakes(probe, split["edit"], "smollm2", limit=n_edits)
    return (model, tokenizer, examples(split["train"], "all", config.phrasings),
            examples(split["validation"], "all", config.phrasings),
            [(r.id, r.input, r.target) for r in records])


def run_path(model, tokenizer, config, memory, val, edits, path: str) -> list:
    editor = build_editor(model, tokenizer, config, memory, val)
    outcomes = []
    for i, (eid, text, target) in enumerate(edits):
        outcomes.append(editor.edit(eid, text, target, path=path))
        print(f"  {path:9} {i + 1:3}/{len(edits)} {outcomes[-1].status:7} {outcomes[-1].steps:5} steps "
              f"{outcomes[-1].seconds:7.3f} s", file=sys.stderr)
    return outcomes


def summary(name, outcomes_fast, outcomes_ref, threads, memory_size):
    fast = [o.seconds for o in outcomes_fast if o.status != "skipped"]
    ref = [o.seconds for o in outcomes_ref if o.status != "skipped"]
    steps = lambda os_: statistics.median([o.steps for o in os_ if o.status != "skipped"])   # noqa: E731
    per_step = lambda os_: statistics.median([o.seconds / o.steps for o in os_ if o.steps]) * 1000  # noqa: E731
    sr = lambda os_: sum(o.succeeded for o in os_) / max(1, sum(o.status != "skipped" for o in os_))  # noqa: E731
    return {
        "model": name, "edits_fast": len(fast), "edits_reference": len(ref), "threads": threads,
        "memory_vectors": memory_size,
        "fast_s_median": round(statistics.median(fast), 4),
        "reference_s_median": round(statistics.median(ref), 4),
        "ratio": round(statistics.median(ref) / statistics.median(fast), 1),
        "fast_steps_median": steps(outcomes_fast), "reference_steps_median": steps(outcomes_ref),
        "fast_ms_per_step": round(per_step(outcomes_fast), 2), "reference_ms_per_step": round(per_step(outcomes_ref), 2),
        "SR_fast": sr(outcomes_fast), "SR_reference": sr(outcomes_ref),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--edits", type=int, default=20, help="real edits on the fast path")
    ap.add_argument("--reference-edits", type=int, default=20, help="the first N of them on the reference path")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="editor setting")
    ap.add_argument("--out", default="docs/results/edit_speed.json")
    args = ap.parse_args()
    overrides = EditorConfig.parse_overrides(args.set)
    config = EditorConfig(**overrides)                       # the product's default path
    reference = EditorConfig.reference(**overrides)          # the reference procedure's settings
    results = []
    for name in args.models.split(","):
        setup = {"minilm": minilm_setup, "smollm2": smollm2_setup}[name]
        model, tokenizer, memory, val, edits = setup(config, args.edits)
        threads = set_threads(config, "classification" if name == "minilm" else "generation")
        print(f"{name}: {len(edits)} edits, {threads} thread(s)", file=sys.stderr)
        fast = run_path(model, tokenizer, config, memory, val, edits, "fast")
        ref = run_path(model, tokenizer, reference, memory, val, edits[: args.reference_edits], "reference")
        memory_size = len(build_editor(model, tokenizer, config, memory).memory)
        results.append(summary(name, fast, ref, threads, memory_size))
        print(json.dumps(results[-1]))
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
              "date": time.strftime("%Y-%m-%d"), "config": config.to_dict(), "reference_config": reference.to_dict(),
              "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
