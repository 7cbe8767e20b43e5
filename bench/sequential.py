"""Sequential editing of a production model's real mistakes, measured every few edits.

    .venv/bin/python bench/sequential.py --model smollm2 --edits 200 [--editors patcher,no-memory] [--set k=v]

Every editor runs on the same stream of real mistakes (the fact bank's edit split, seeded), starting from
the unpatched model. At each checkpoint (10, 50, then every 50, and the end) it records SR and GR so far,
ER over every edit so far (judged on the current patched model), TrainR/TestR and the share of locality
examples whose prediction is unchanged, failed edits, neurons, median seconds and steps per edit.
Writes JSON and a Markdown table to --out-dir (default docs/benchmarks/).

Editors (settings on top of --set):
  patcher     the editor's defaults
  reference   the reference implementation's settings (patcher.config.REFERENCE_SETTINGS)
  no-memory   ablation: no memory loss (beta = 0)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from patcher import EditorConfig  # noqa: E402
from patcher.config import REFERENCE_SETTINGS  # noqa: E402
from patcher.facts import all_facts, split_facts  # noqa: E402
from patcher.facts.mistakes import find_mistakes  # noqa: E402
from patcher.models.base import load_model  # noqa: E402
from patcher.sequential import build_editor, editor_on_facts  # noqa: E402

EDITORS = {"patcher": {}, "reference": REFERENCE_SETTINGS, "no-memory": {"beta": 0.0}}


def checkpoints(n: int) -> list[int]:
    marks = sorted({m for m in [10, *range(50, n, 50)] if m < n} | {n})
    return marks


def run_editor(name, settings, model, tokenizer, split, records, progress=True):
    config = EditorConfig(**settings)
    editor, train, test = editor_on_facts(model, tokenizer, config, split)
    marks, rows, outcomes = checkpoints(len(records)), [], []
    start = time.perf_counter()
    for i, r in enumerate(records, 1):
        outcomes.append(editor.edit(r.id, r.input, r.target, r.rephrases))
        if progress:
            o = outcomes[-1]
            print(f"  {name} {i}/{len(records)} {o.status} {o.steps} steps {o.seconds:.2f} s lead {o.lead:.3f}",
                  file=sys.stderr)
        if i in marks:
            attempted = [o for o in outcomes if o.status != "skipped"]
            gr = [o.generalization for o in attempted if o.generalization is not None]
            rows.append({
                "editor": name, "edits": i,
                "SR": sum(o.succeeded for o in attempted) / len(attempted),
                "GR": sum(gr) / len(gr) if gr else None,
                "ER": editor.accuracy(list(editor.edited.values())),
                "TrainR": train.ratio(editor), "TestR": test.ratio(editor),
                "train_unchanged": 1 - len(train.changed(editor)) / len(train.cached),
                "test_unchanged": 1 - len(test.changed(editor)) / len(test.cached),
                "failed": sum(o.status == "failed" for o in attempted),
                "skipped": len(outcomes) - len(attempted),
                "neurons": len(editor.neurons),
                "s_per_edit_median": statistics.median(o.seconds for o in attempted),
                "steps_median": statistics.median(o.steps for o in attempted),
                "wall_s": round(time.perf_counter() - start, 1),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            })
            print(json.dumps(rows[-1]), file=sys.stderr)
    lost = [o.error_id for o in outcomes if o.error_id in editor.edited and not editor.judge(editor.edited[o.error_id])[0]]
    return rows, {"editor": name, "settings": config.to_dict(), "lost_edits": lost,
                  "outcomes": [o.to_dict() for o in outcomes]}


def markdown(rows: list[dict], header: str) -> str:
    cols = ["editor", "edits", "SR", "GR", "ER", "TrainR", "TestR", "train_unchanged", "test_unchanged",
            "failed", "neurons", "s_per_edit_median", "steps_median", "peak_rss_mb"]
    fmt = lambda v: "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))   # noqa: E731
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", choices=["smollm2"])
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument("--editors", default="patcher")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--out-dir", default="docs/benchmarks")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    settings = EditorConfig.parse_overrides(args.set)
    model, tokenizer = load_model(args.model)
    split = split_facts(all_facts(), seed=args.seed)
    probe = build_editor(model, tokenizer, EditorConfig(**settings))
    records = find_mistakes(probe, split["edit"], args.model, limit=args.edits)
    print(f"{len(records)} real mistakes of {args.model} in the edit split", file=sys.stderr)
    all_rows, details = [], []
    for name in args.editors.split(","):
        torch.manual_seed(args.seed)
        rows, detail = run_editor(name, {**EDITORS[name], **settings, "seed": args.seed}, model, tokenizer,
                                  split, records, progress=not args.quiet)
        all_rows += rows
        details.append(detail)
    stem = f"sequential_{args.model}_{len(records)}{('_' + args.tag) if args.tag else ''}"
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "edits": len(records), "seed": args.seed, "settings": settings,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
            "date": time.strftime("%Y-%m-%d")}
    (out / f"{stem}.json").write_text(json.dumps({**meta, "rows": all_rows, "runs": details}, indent=1) + "\n")
    effective = EditorConfig(**settings).to_dict()
    deviations = {k: v for k, v in effective.items() if EditorConfig.reference().to_dict()[k] != v and k != "seed"}
    header = (f"### {args.model}: {len(records)} sequential real edits, seed {args.seed}, --set {settings or 'none'};"
              f" 'patcher' deviates from the reference settings in {deviations or 'nothing'}"
              f" ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, torch {torch.__version__})")
    (out / f"{stem}.md").write_text(markdown(all_rows, header))
    print(markdown(all_rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
