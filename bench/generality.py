"""Generality in the user's world: leave-relation-out editing of a production model's real error stream.

    .venv/bin/python bench/generality.py --model facts-smollm2 [--per-relation 20] [--methods upper,floor,frames]
        [--method NAME:key=value,key=value] [--memory strict,logs] [--leave-out all|REL,REL] [--seeds 0]
        [--set key=value] [--tag name]

A real error record brings its input, the model's prediction and the target, nothing else. For every relation R
left out (default: all of them at once, the user who wrote no templates): R's records lose their `phrasings`
and `negatives`, and R's hand-written wordings leave the memory and the validation memory. What the memory keeps
of R's other facts:
  strict   the edited wording only (template 0): a log of one prompt format
  logs     the edited wording and the training wordings (TRAINING_TEMPLATES), never the rephrasings that measure
           GR (TEMPLATES[1:]): a log of many users
GR is measured on each record's held-out rephrasings right after its edit (they are never trained on), ER and
the locality suites' unchanged shares at the end, as bench/sequential.py does (its run_editor runs each row).

Methods (EditorConfig overrides on top of the model's pipeline settings, params.yaml + catalog.yaml):
  upper    today's editor given the templates: full records and the full memory (the upper reference)
  floor    today's editor without them (the number a user gets now)
  frames   + wordings, subject and negatives found in the memory's frames (patcher/engine/frames.py)
  reword   + rule rewordings where the frames found no wording (patcher/engine/rewording.py)
  --method NAME:key=value,...   any other settings (repeatable), measured the same way
Prints and writes docs/results/generality_MODEL[_TAG].{md,json}: one row per (method, memory, seed) and GR by
relation.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import transformers  # noqa: E402
from sequential import run_editor, warm_up  # noqa: E402

from patcher import EditorConfig  # noqa: E402
from patcher.engine.examples import Example, SharedCache  # noqa: E402
from patcher.engine.metrics import LocalitySet  # noqa: E402
from patcher.engine.records import read_records  # noqa: E402
from patcher.engine.sequential import build_editor  # noqa: E402
from patcher.facts import all_facts, split_facts  # noqa: E402
from patcher.facts.bank import RELATIONS  # noqa: E402
from patcher.facts.claims import claims  # noqa: E402
from patcher.facts.mistakes import task_examples  # noqa: E402
from patcher.facts.sets import fact_examples, memory_facts  # noqa: E402
from patcher.models.base import load_model  # noqa: E402
from patcher.models.production import build, model_path  # noqa: E402
from patcher.pipeline.catalog import Catalog  # noqa: E402
from patcher.pipeline.settings import PipelineSettings  # noqa: E402

METHODS = {"upper": {}, "floor": {"frames": False}, "frames": {"frames": True, "reword": False},
           "reword": {"frames": True, "reword": True}}


def relation_of(record_id: str) -> str:
    return record_id.split(":")[0]


def memory_examples(task: str, facts: list, left_out: set[str], variant: str, wordings: int | None) -> list[Example]:
    """The memory of `facts` with the left-out relations' wordings cut to the variant's: strict (the edited
    wording), logs (it and the training wordings); the other relations keep every wording."""
    kept = [f for f in facts if f.relation not in left_out]
    cut = [f for f in facts if f.relation in left_out]
    out = task_examples(task, kept, "all", 0, wordings) + task_examples(task, cut, "prompt", 0)
    if variant == "logs":
        if task == "classification":
            out += [Example(p, c.label) for c in claims(cut, 0) for p in c.phrasings[:wordings]]
        else:
            out += [Example(p, f.answer) for f in cut for p in f.phrasings[:wordings]]
    return out


def runs_of(args) -> list[tuple[str, str, dict]]:
    """(method, memory variant, settings) per run: upper runs once, on the full memory."""
    out = []
    for item in [m for m in args.methods.split(",") if m] + args.method:
        name, _, extra = item.partition(":")
        if name not in METHODS and not extra:
            raise SystemExit(f"unknown method {name!r}: {', '.join(METHODS)}, or --method NAME:key=value,...")
        settings = {**METHODS.get(name, {}), **EditorConfig.parse_overrides([x for x in extra.split(",") if x])}
        out += [(name, "full", settings)] if name == "upper" else [(name, v, settings) for v in args.memory.split(",")]
    return out


def by_relation(detail: dict) -> dict[str, dict]:
    """GR, SR and edits per relation from one run's outcomes."""
    out = {}
    for o in detail["outcomes"]:
        if o["status"] == "skipped":
            continue
        r = out.setdefault(relation_of(o["error_id"]), {"gr": [], "sr": []})
        r["sr"].append(o["status"] == "edited")
        if o["generalization"] is not None:
            r["gr"].append(o["generalization"])
    return {k: {"edits": len(v["sr"]), "SR": statistics.mean(v["sr"]),
                "GR": statistics.mean(v["gr"]) if v["gr"] else None} for k, v in sorted(out.items())}


@torch.no_grad()
def firing(editor, records) -> dict:
    """At the end of a run, each edit's neurons on its held-out rephrasings: right or not, and whether any of its
    neurons fires there (pre-activation > 0 at a judged position): a miss the key side (did not fire) or the value
    side (fired, still wrong) makes. -> shares and a few examples of each miss."""
    rows = []
    for r in records:
        columns = [i for i, owner in enumerate(editor.owners) if owner == r.id]
        if not columns or not r.rephrases:
            continue
        for text, c in zip(r.rephrases, editor.cache([Example(p, r.target) for p in r.rephrases])):
            peak = float(editor.neurons.preactivation(c.q, c.z, c.at)[:, columns].amax())
            rows.append({"id": r.id, "rephrase": text, "right": editor.judge(c)[0], "peak": round(peak, 3)})
    wrong = [x for x in rows if not x["right"]]
    quiet = [x for x in wrong if x["peak"] <= 0]
    return {"rephrases": len(rows), "wrong": len(wrong), "wrong_not_fired": len(quiet),
            "not_fired": quiet[:8], "fired_wrong": [x for x in wrong if x["peak"] > 0][:8]}


def markdown(result: dict) -> str:
    fmt = lambda v: "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))   # noqa: E731
    cols = ["method", "memory", "seed", "edits", "SR", "GR", "ER", "train_unchanged", "test_unchanged",
            "same_subject_unchanged", "failed", "neurons", "s_per_edit_median", "wall_s"]
    lines = [f"### {result['model']}: {result['edits']} real edits, left out: {', '.join(result['left_out'])} "
             f"({result['date']}, {result['machine']['cpus']} CPUs, torch {result['machine']['torch']})", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in result["rows"]]
    relations = sorted({k for r in result["rows"] for k in r["relations"]})
    keys = [f"{r['method']}/{r['memory']}/{r['seed']}" for r in result["rows"]]
    for r in result["runs"]:
        if r.get("firing"):
            f = r["firing"]
            lines += ["", f"{r['method']}/{r['memory']}/{r['seed']}: {f['wrong']} of {f['rephrases']} held-out "
                      f"rephrasings wrong at the end, {f['wrong_not_fired']} of them with none of the edit's neurons "
                      "firing; "
                      "not fired: " + "; ".join(f"{x['rephrase']!r} ({x['peak']})" for x in f["not_fired"][:4])]
    lines += ["", "GR by relation (edits in brackets):", "", "| relation | " + " | ".join(keys) + " |",
              "|" + "---|" * (len(keys) + 1)]
    for rel in relations:
        cells = [r["relations"].get(rel) for r in result["rows"]]
        lines.append(f"| {rel} | " + " | ".join("n/a" if c is None else f"{fmt(c['GR'])} ({c['edits']})"
                                                 for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write(out: Path, stem: str, result: dict) -> None:
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result), file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="facts-smollm2", choices=["factcheck-minilm", "facts-smollm2"])
    ap.add_argument("--per-relation", type=int, default=0, help="the stream's first N records of each relation, "
                    "in stream order (0: the whole stream)")
    ap.add_argument("--methods", default="upper,floor,frames")
    ap.add_argument("--method", action="append", default=[], metavar="NAME:KEY=VALUE,...", help="another method")
    ap.add_argument("--memory", default="strict,logs", help="what the memory keeps of a left-out relation")
    ap.add_argument("--leave-out", default="all", help="relations left out: 'all' or a comma-separated list")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="EditorConfig override, all runs")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out-dir", default="docs/results")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--firing", action="store_true", help="at the end of each run: did the edits' neurons fire on "
                    "the held-out rephrasings they got wrong (key side), or fire and leave them wrong (value side)")
    ap.add_argument("--merge", nargs="*", default=[], metavar="JSON", help="put these result files' rows first (the "
                    "same model and records; methods run in separate processes); with --methods '' only combine them")
    args = ap.parse_args()
    started = time.perf_counter()
    base = {**PipelineSettings.load().train.editor_overrides(Catalog().entry(args.model)),
            **EditorConfig.parse_overrides(args.set)}
    left_out = set(RELATIONS) if args.leave_out == "all" else set(args.leave_out.split(","))
    if left_out - set(RELATIONS):
        raise SystemExit(f"unknown relations {sorted(left_out - set(RELATIONS))}: {', '.join(RELATIONS)}")
    stream, count, records = read_records(f"data/errors/{args.model}.jsonl"), {}, []
    for r in stream:
        count[relation_of(r.id)] = count.get(relation_of(r.id), 0) + 1
        if not args.per_relation or count[relation_of(r.id)] <= args.per_relation:
            records.append(r)
    bare = [replace(r, phrasings=[], negatives=[]) if relation_of(r.id) in left_out else r for r in records]
    rows, runs = [], []
    for path in args.merge:
        earlier = json.loads(Path(path).read_text())
        if (earlier["model"], earlier["edits"], earlier["left_out"]) != (args.model, len(records), sorted(left_out)):
            raise SystemExit(f"{path}: another model, stream or left-out set than this run's")
        rows, runs = rows + earlier["rows"], runs + earlier["runs"]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"generality_{args.model}{('_' + args.tag) if args.tag else ''}"
    meta = {"model": args.model, "edits": len(records), "stream": len(stream), "left_out": sorted(left_out),
            "per_relation": args.per_relation, "date": time.strftime("%Y-%m-%d"),
            "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__}}
    if not runs_of(args):
        write(out, stem, {**meta, "rows": rows, "runs": runs})
        return 0
    model, tokenizer = load_model(build(args.model, out=model_path(args.model), progress=lambda m: None))
    split = split_facts(all_facts(), seed=0)
    probe = build_editor(model, tokenizer, EditorConfig(**base))
    task, wordings = probe.task.name, probe.cfg.phrasings
    full = fact_examples(task, split, 0, training_wordings=wordings)
    shared = SharedCache()
    prompts = warm_up(probe, shared, records, wordings)
    train = LocalitySet.build(probe, "train", full["train"])
    test = LocalitySet.build(probe, "test", full["test"])
    context = {"test": full["test"]}
    if task == "generation":
        facts = {f.id: f for f in all_facts()}
        context["test_subjects"] = [f.subject for f in split["test"]]
        context["record_subjects"] = {r.id: facts[r.id].subject for r in records if r.id in facts}
    for method, variant, settings in runs_of(args):
        if variant == "full":
            sets, stream_records = {"memory": full["memory"], "validation": full["validation"]}, records
        else:
            sets = {"memory": memory_examples(task, memory_facts(split), left_out, variant, wordings),
                    "validation": memory_examples(task, split["validation"], left_out, variant, wordings)}
            stream_records = bare
        for seed in [int(s) for s in args.seeds.split(",")]:
            torch.manual_seed(seed)
            print(f"{method} / {variant} / seed {seed}: memory {len(sets['memory'])} prompts", file=sys.stderr)
            run = {**base, **settings, "seed": seed}
            editors = []
            points, detail = run_editor(method, run, model, tokenizer, {**sets, **context, "shared": shared},
                                        train, test, stream_records, (None,) * 4, progress=not args.quiet,
                                        finished=editors.append)
            if args.firing:
                detail["firing"] = firing(editors[0], stream_records)
            rows.append({**points[-1], "method": method, "memory": variant, "seed": seed,
                         "relations": by_relation(detail)})
            runs.append({"method": method, "memory": variant, "seed": seed, **detail})
            write(out, stem, {**meta, "settings": base, "prompts_cached": prompts,
                              "run_wall_s": round(time.perf_counter() - started, 1), "rows": rows, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
