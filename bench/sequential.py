"""Sequential editing of a production model's real error stream, every editor on the same stream, in one run.

    .venv/bin/python bench/sequential.py --model facts-smollm2 --edits 1000 \
        [--editors patcher,reference,ft-last,ft-last-kl,no-memory] [--set key=value] [--seeds 0,1] [--tag name]

The stream is the model's real mistakes (data/errors/MODEL.jsonl, from the fact bank's edit split; fewer than
--edits when the stream has fewer, and the output says so). Each editor starts from the unpatched model. At
each checkpoint (10, 50, 100, then every 100, and the end) it records SR and GR so far, ER over every edit so
far (judged on the current model), TrainR/TestR and the share of locality examples whose prediction is
unchanged, failed edits, neurons, median seconds and steps per edit, and the process's peak RSS so far. The
unpatched model's forward passes over the stream's prompts (inputs, training wordings, negatives, rephrases)
run once, before any editor, for all of them (the JSON's prompts_cached): the seconds per edit leave them out.
Writes JSON, a Markdown table and one SVG plot per metric (every editor against the number of edits) to
--out-dir (default docs/results/), at every checkpoint: a run cut off keeps what it measured.

Editors (their own settings win over --set, which applies to the rest; the rest start from the model's
settings: params.yaml train.editor and the catalog entry's editor, as the pipeline runs them):
  patcher     the editor's defaults with the model's settings (facts-smollm2: subject_layer 9, phrasings 15,
              bias_shift 1, value_gain 1.25)
  reference   the reference implementation's settings (patcher.engine.config.REFERENCE_SETTINGS)
  no-memory   ablation: no memory loss (beta = 0); stops at the 4th right check at the latest
              (max_checks_right: without the memory loss the validation rule never stops a right edit) and
              after 500 steps (max_steps; twice with the whole-vocabulary retry): without the memory loss
              every earlier neuron fires on a new edit, and SmolLM2's edit 237 trained for over an hour
  ft-last     fine-tuning the last FFN on each mistake until it is right (patcher/engine/finetune.py)
  ft-last-kl  the same with a KL term on locality examples from the memory's facts (FT+KL)
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from patcher import EditorConfig  # noqa: E402
from patcher.engine.config import REFERENCE_SETTINGS  # noqa: E402
from patcher.engine.examples import Example, SharedCache  # noqa: E402
from patcher.engine.finetune import FineTuneEditor  # noqa: E402
from patcher.engine.metrics import LocalitySet, paper_metrics  # noqa: E402
from patcher.engine.records import read_records  # noqa: E402
from patcher.engine.sequential import build_editor, set_threads  # noqa: E402
from patcher.engine.tasks import Task  # noqa: E402
from patcher.facts import all_facts, split_facts  # noqa: E402
from patcher.facts.bank import negative_prompts  # noqa: E402
from patcher.facts.sets import fact_examples  # noqa: E402
from patcher.models.base import load_model  # noqa: E402
from patcher.models.production import build, model_path  # noqa: E402
from patcher.pipeline.catalog import Catalog  # noqa: E402
from patcher.pipeline.plot import metrics_svg  # noqa: E402
from patcher.pipeline.settings import PipelineSettings  # noqa: E402

EDITORS = {"patcher": {}, "reference": REFERENCE_SETTINGS,
           "no-memory": {"beta": 0.0, "max_checks_right": 4, "max_steps": 500},
           "ft-last": {"subject_layer": None}, "ft-last-kl": {"subject_layer": None}}
FINE_TUNING = {"ft-last": {"kl_weight": 0.0}, "ft-last-kl": {"kl_weight": 1.0}}   # lr and steps: --ft-* options
METRICS = ["SR", "GR", "ER", "TrainR", "TestR", "test_unchanged"]


def checkpoints(n: int) -> list[int]:
    return sorted({m for m in [10, 50, *range(100, n, 100)] if m < n} | {n})


def make_editor(name, config, model, tokenizer, sets, ft_lr, ft_steps, kl_examples, kl_batch):
    if name in FINE_TUNING:
        editor = FineTuneEditor(model, tokenizer, EditorConfig(**{**config.to_dict(), "max_steps": ft_steps}),
                                lr=ft_lr, kl_examples=kl_examples, kl_batch=kl_batch, **FINE_TUNING[name])
        set_threads(config, editor.task.name)
        editor.task.shared = sets["shared"]       # every editor reads the same frozen model: each prompt runs once
        return editor
    return build_editor(model, tokenizer, config, sets["memory"], sets["validation"], shared=sets["shared"])


COST = {"patcher": 5, "reference": 4, "ft-last-kl": 3, "no-memory": 2, "ft-last": 1}   # longest first (--jobs)
_FORKED = None                    # --jobs: the run function the forked workers call


def _forked(job):
    seed, name = job
    Task.batch_threads = 1            # forked after the parent's parallel regions: 1 thread (Task.batch_threads)
    return (seed, *_FORKED(seed, name))


def warm_up(probe, shared: SharedCache, records, phrasings: int) -> dict:
    """Caches every prompt an editor will run on the unpatched model (each record's input, training wordings,
    negatives and rephrases) once, in batches, for every editor: their seconds per edit leave those forward
    passes out alike. -> {"prompts", "seconds"}."""
    prompts = list(dict.fromkeys((text, r.target) for r in records
                                 for text in [r.input, *r.phrasings[:phrasings], *r.negatives, *r.rephrases]))
    probe.task.shared = shared
    start = time.perf_counter()
    lengths = probe.task.lengths([Example(text, target) for text, target in prompts])
    prompts = [p for _, p in sorted(zip(lengths, prompts), key=lambda pair: pair[0])]   # batches of like lengths
    for i in range(0, len(prompts), 128):        # under the on-disk cache's threshold: kept in this process only
        probe.cache([Example(text, target) for text, target in prompts[i:i + 128]])
    seconds = round(time.perf_counter() - start, 1)
    print(f"{len(prompts)} prompts cached in {seconds} s", file=sys.stderr)
    return {"prompts": len(prompts), "seconds": seconds}


def run_editor(name, settings, model, tokenizer, sets, train, test, records, ft, progress=True,
               checkpoint=lambda rows, detail: None, finished=lambda editor: None):
    """-> (a row per checkpoint, the run's detail); `checkpoint` gets both so far at every checkpoint, `finished`
    the editor at the end."""
    config = EditorConfig(**settings)
    editor = make_editor(name, config, model, tokenizer, sets, *ft)
    marks, rows, outcomes, detail = checkpoints(len(records)), [], [], None
    start = time.perf_counter()
    for i, r in enumerate(records, 1):
        negatives = {"negatives": r.negatives} if r.negatives and name not in FINE_TUNING else {}
        outcomes.append(editor.edit(r.id, r.input, r.target, r.rephrases, r.phrasings, **negatives))
        if progress:
            o = outcomes[-1]
            print(f"  {name} {i}/{len(records)} {o.status} {o.steps} steps {o.seconds:.2f} s lead {o.lead:.3f}",
                  file=sys.stderr)
        if i in marks:
            attempted = [o for o in outcomes if o.status != "skipped"]
            if not attempted:
                continue                                  # nothing attempted yet: every record was already right
            moved = locality_moved(editor, train, test)
            rows.append({
                "editor": name, "edits": i, **paper_metrics(editor, outcomes, train, test),
                "train_unchanged": 1 - len(moved["train"]) / len(train.cached),
                "test_unchanged": 1 - len(moved["test"]) / len(test.cached),
                **same_subject_unchanged(moved["test"], sets, records[:i]),
                "failed": sum(o.status == "failed" for o in attempted),
                "skipped": len(outcomes) - len(attempted),
                "neurons": len(editor.neurons),
                "s_per_edit_median": statistics.median(o.seconds for o in attempted),
                "steps_median": statistics.median(o.steps for o in attempted),
                "wall_s": round(time.perf_counter() - start, 1),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            })
            print(json.dumps(rows[-1]), file=sys.stderr)
            detail = run_detail(name, config, editor, outcomes, moved)
            checkpoint(rows, detail)
    # the last record is a checkpoint: no detail yet only when every record was already right
    finished(editor)
    return rows, detail or run_detail(name, config, editor, outcomes, locality_moved(editor, train, test))


def same_subject_unchanged(moved_test: list[dict], sets: dict, done: list) -> dict:
    """The test facts about a subject edited so far (other relations: the TestR set's prompts), the share whose
    prediction did not change, and how many there are; None where records name no bank fact (claims)."""
    subjects = {sets["record_subjects"][r.id] for r in done if r.id in sets.get("record_subjects", {})}
    about = [e.input for e, subject in zip(sets["test"], sets.get("test_subjects", [])) if subject in subjects]
    moved = {m["input"] for m in moved_test}
    share = 1 - sum(x in moved for x in about) / len(about) if about else None
    return {"same_subject_unchanged": share, "same_subject_facts": len(about)}


def locality_moved(editor, train, test) -> dict:
    return {"train": train.changed(editor), "test": test.changed(editor)}


def run_detail(name, config, editor, outcomes, moved: dict) -> dict:
    """The run so far: settings, edits lost, the locality facts moved (with the edits firing on them), every
    outcome."""
    edited = [o.error_id for o in outcomes if o.error_id in editor.edited]
    lost = [e for e, (right, _, _) in zip(edited, editor.judge_all([editor.edited[e] for e in edited])) if not right]
    return {"editor": name, "settings": config.to_dict(), "lost_edits": lost, "changed": moved,
            "outcomes": [o.to_dict() for o in outcomes]}


def plots(rows: list[dict], title: str) -> dict[str, str]:
    """{metric: SVG} with one line per editor (mean over seeds) against the number of edits."""
    editors = list(dict.fromkeys(r["editor"] for r in rows))
    out = {}
    for metric in METRICS:
        points = {}
        for r in rows:
            if r[metric] is not None:
                points.setdefault(r["edits"], {}).setdefault(r["editor"], []).append(r[metric])
        series = [{"edits": n, **{e: statistics.mean(v) for e, v in by.items()}} for n, by in sorted(points.items())]
        out[metric] = metrics_svg(series, f"{title}: {metric}", x="edits", series=editors)
    return out


def generality_by_relation(details: list[dict]) -> str:
    """GR of each editor's edits by relation (the error id's prefix): where generalization fails. `edits`: the
    relation's distinct records, however many seeds and editors edited them."""
    table, edited = {}, {}
    for d in details:
        for o in d["outcomes"]:
            if o["status"] != "skipped" and o["generalization"] is not None:
                relation = o["error_id"].split(":")[0]
                table.setdefault(relation, {}).setdefault(d["editor"], []).append(o["generalization"])
                edited.setdefault(relation, set()).add(o["error_id"])
    editors = sorted(dict.fromkeys(d["editor"] for d in details), key=list(EDITORS).index)
    lines = ["| relation | edits | " + " | ".join(editors) + " |", "|" + "---|" * (len(editors) + 2)]
    for relation, by in sorted(table.items()):
        lines.append(f"| {relation} | {len(edited[relation])} | " + " | ".join(
            f"{statistics.mean(by[e]):.3f}" if e in by else "n/a" for e in editors) + " |")
    return "GR by relation (all seeds):\n\n" + "\n".join(lines) + "\n"


def run_settings(details: list[dict]) -> str:
    """One line per editor: the settings its rows were measured with, taken from the runs themselves (merged
    files keep the settings of the process that ran them, not those of the process that combined them)."""
    reference = EditorConfig.reference().to_dict()
    lines = {}
    for d in details:
        if d["editor"] in FINE_TUNING:
            ft = d.get("ft", {})
            text = (f"lr {ft.get('lr')}, at most {ft.get('steps')} steps" + (
                f", KL on {ft.get('kl_examples')} examples, {ft.get('kl_batch')} per step" if d["editor"] == "ft-last-kl"
                else ""))
        else:
            ignored = {"seed", "threads", "device"}
            deviations = {k: v for k, v in d["settings"].items() if k in reference and k not in ignored
                          and reference[k] != v}
            text = f"deviates from the reference settings in {deviations or 'nothing'}"
        lines.setdefault(d["editor"], f"- {d['editor']}: {text}")
    return "\n".join(lines[e] for e in sorted(lines, key=list(EDITORS).index))


def markdown(rows: list[dict], header: str) -> str:
    cols = ["editor", "seed", "edits", "SR", "GR", "ER", "TrainR", "TestR", "train_unchanged", "test_unchanged",
            "same_subject_unchanged", "same_subject_facts",
            "failed", "neurons", "s_per_edit_median", "steps_median", "peak_rss_mb"]
    fmt = lambda v: "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))   # noqa: E731
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="facts-smollm2", choices=["factcheck-minilm", "facts-smollm2"])
    ap.add_argument("--edits", type=int, default=1000)
    ap.add_argument("--editors", default="patcher,reference,ft-last,ft-last-kl,no-memory")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="EditorConfig override")
    ap.add_argument("--seeds", default="0", help="comma-separated editor seeds (the stream is the same)")
    ap.add_argument("--ft-lr", type=float, default=1e-5, help="fine-tuning baselines: Adam learning rate "
                    "(1e-3 and 1e-4 wrecked locality on MiniLM within 40 edits; 1e-5 kept it best)")
    ap.add_argument("--ft-steps", type=int, default=200, help="fine-tuning baselines: step limit per edit")
    ap.add_argument("--kl-examples", type=int, default=512, help="FT+KL: locality examples from the memory facts")
    ap.add_argument("--kl-batch", type=int, default=None, help="FT+KL: examples drawn per step for the KL term "
                    "(each costs the output layer at every answer position; default 32 for the classifier, 4 "
                    "for the LM)")
    ap.add_argument("--negatives", type=int, default=None, help="each record's negatives instead of the "
                    "stream's own: its subject in the N training templates of each other relation most like its "
                    "prompt and the same question about its name twins (patcher.facts.bank.negative_prompts, as `patcher "
                    "errors generate --negatives N` writes them; facts-smollm2), joining the memory before its edit")
    ap.add_argument("--jobs", type=int, default=1, help="editors run side by side in N forked processes, each "
                    "on 1 thread (GNU OpenMP is not fork-safe: a worker on more waited forever), longest first (on a machine "
                    "with more cores, more jobs); results are written as each "
                    "editor finishes (with 1, at every checkpoint). Seconds per edit are then measured beside another "
                    "editor: compare them within one run")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--out-dir", default="docs/results")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--append", action="store_true", help="keep the other editors' rows of an earlier run with "
                    "the same output name (rerun some editors only)")
    ap.add_argument("--merge", action="append", default=[], metavar="JSON", help="add the other editors' rows "
                    "of this result file (same model and edits; e.g. editors run in separate processes); with "
                    "--editors '' the files are only combined")
    args = ap.parse_args()
    args.started = time.perf_counter()
    # this project's settings for the model (params.yaml train.editor + its catalog entry's), then --set
    settings = {**PipelineSettings.load().train.editor_overrides(Catalog().entry(args.model)), **EditorConfig.parse_overrides(args.set)}
    if args.kl_batch is None:
        args.kl_batch = 4 if args.model == "facts-smollm2" else 32
    stream = read_records(f"data/errors/{args.model}.jsonl")
    records = stream[: args.edits]
    stem = f"sequential_{args.model}_{len(records)}{('_' + args.tag) if args.tag else ''}"
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    editors = [e for e in args.editors.split(",") if e]
    all_rows, details = [], []
    earlier = [out / f"{stem}.json"] if args.append and (out / f"{stem}.json").exists() else []
    for path in earlier + [Path(p) for p in args.merge]:  # other editors' results on the same stream
        result = json.loads(Path(path).read_text())
        if (result["model"], result["edits"]) != (args.model, len(records)):
            raise SystemExit(f"{path}: {result['model']}, {result['edits']} edits; this run: {args.model}, "
                             f"{len(records)} edits")
        all_rows += [r for r in result["rows"] if r["editor"] not in editors]
        details += [d for d in result["runs"] if d["editor"] not in editors]
    if not editors:                               # only combining result files: no model needed, no run to time
        args.started = None
        write(out, stem, args, settings, len(records), len(stream), all_rows, details)
        return 0
    model_dir = build(args.model, out=model_path(args.model), progress=lambda m: print(m, file=sys.stderr))
    model, tokenizer = load_model(model_dir)
    split = split_facts(all_facts(), seed=0)
    if args.negatives is not None:
        by_id = {f.id: f for f in all_facts()}
        for r in records:
            if r.id in by_id:
                r.negatives = negative_prompts(by_id[r.id], list(by_id.values()), args.negatives)
    print(f"{len(records)} of the {len(stream)} real mistakes in {args.model}'s stream", file=sys.stderr)
    probe = build_editor(model, tokenizer, EditorConfig(**settings))
    sets = fact_examples(probe.task.name, split, 0, training_wordings=probe.cfg.phrasings)   # one memory for all
    sets["shared"] = SharedCache()
    args.prompts = warm_up(probe, sets["shared"], records,
                           max(EditorConfig(**{**settings, **EDITORS[name]}).phrasings for name in editors))
    for name in ("memory", "validation"):       # every editor's memories from one pass, here (--jobs: not in a worker)
        for example, cached in zip(sets[name], probe.cache(sets[name])):
            sets["shared"].put(example, probe.cfg.subject_layer, cached)
    train, test = LocalitySet.build(probe, "train", sets["train"]), LocalitySet.build(probe, "test", sets["test"])
    if probe.task.name == "generation":          # one test example per test fact, in order
        facts = {f.id: f for f in all_facts()}
        sets["test_subjects"] = [f.subject for f in split["test"]]
        sets["record_subjects"] = {r.id: facts[r.id].subject for r in records if r.id in facts}
    kl_examples = probe.cache(random.Random(0).sample(sets["memory"], min(args.kl_examples, len(sets["memory"]))))
    ft = {"lr": args.ft_lr, "steps": args.ft_steps, "kl_examples": args.kl_examples, "kl_batch": args.kl_batch}
    jobs = [(seed, name) for seed in [int(x) for x in args.seeds.split(",")] for name in editors]

    def finished(seed, rows, detail):
        all_rows.extend({**r, "seed": seed} for r in rows)
        details.append({**detail, "seed": seed, "ft": ft})
        write(out, stem, args, settings, len(records), len(stream), all_rows, details)

    def run(seed, name, checkpoint=lambda rows, detail: None):
        torch.manual_seed(seed)
        # the editor's own settings win: `reference` stays the reference whatever --set says
        return run_editor(name, {**settings, **EDITORS[name], "seed": seed}, model, tokenizer, sets, train, test,
                          records, (args.ft_lr, args.ft_steps, kl_examples, args.kl_batch),
                          progress=not args.quiet, checkpoint=checkpoint)

    if args.jobs <= 1:
        for seed, name in jobs:
            def save(rows, detail, seed=seed):  # after every checkpoint: a cut-off run keeps what it measured
                write(out, stem, args, settings, len(records), len(stream),
                      all_rows + [{**r, "seed": seed} for r in rows], details + [{**detail, "seed": seed, "ft": ft}])
            finished(seed, *run(seed, name, save))
        return 0
    # --jobs N: forked workers inherit the model and the cached prompts; the longest editors start first, each
    # worker on 1 thread (Task.batch_threads: GNU OpenMP is not fork-safe); results are written as each finishes
    if settings.setdefault("threads", 1) != 1:
        raise SystemExit(f"--jobs: each forked editor runs on 1 thread (not threads={settings['threads']}): GNU "
                         "OpenMP is not fork-safe, a worker on more threads than 1 can wait forever")
    global _FORKED
    _FORKED = run
    jobs.sort(key=lambda job: -COST[job[1]])
    with multiprocessing.get_context("fork").Pool(args.jobs, maxtasksperchild=1) as pool:
        for seed, rows, detail in pool.imap_unordered(_forked, jobs):
            finished(seed, rows, detail)
    return 0


def write(out: Path, stem: str, args, settings: dict, edits: int, stream: int, all_rows: list, details: list):
    import transformers

    all_rows = sorted(all_rows, key=lambda r: (r["seed"], list(EDITORS).index(r["editor"]), r["edits"]))
    meta = {"model": args.model, "edits": edits, "stream": stream, "seeds": args.seeds,
            "settings": settings, "negatives": args.negatives, "prompts_cached": getattr(args, "prompts", None),
            "jobs": args.jobs,
            "run_wall_s": None if args.started is None else round(time.perf_counter() - args.started, 1),
            "ft": {"lr": args.ft_lr, "steps": args.ft_steps, "kl_examples": args.kl_examples,
                   "kl_batch": args.kl_batch},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                        "transformers": transformers.__version__},
            "date": time.strftime("%Y-%m-%d")}
    (out / f"{stem}.json").write_text(json.dumps({**meta, "rows": all_rows, "runs": details}, indent=1) + "\n")
    for metric, svg in plots(all_rows, f"{args.model}, {edits} edits").items():
        (out / f"{stem}_{metric}.svg").write_text(svg)
    header = (f"### {args.model}: {edits} sequential real edits (of {stream} in the stream), seeds {args.seeds} "
              f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, torch {torch.__version__})\n\n"
              + run_settings(details))
    (out / f"{stem}.md").write_text(markdown(all_rows, header) + "\n" + generality_by_relation(details) + "\n" + "".join(
        f"![{m}]({stem}_{m}.svg)\n" for m in METRICS))
    print(markdown(all_rows, header), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
