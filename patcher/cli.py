"""The `patcher` command. Heavy imports (torch, transformers) happen inside the commands, so `--help` is fast."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _config(args):
    from .config import EditorConfig

    values = json.loads(Path(args.config).read_text()) if args.config else {}
    values.update(EditorConfig.parse_overrides(args.set or []))
    return EditorConfig.from_dict(values)


def _examples(path):
    from .records import read_examples
    from .tasks import Example

    return [Example(r["input"], r["target"]) for r in read_examples(path)] if path else []


def _write_json(path, data):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def cmd_edit(args) -> int:
    from .metrics import LocalitySet, summarize
    from .models.base import load_model, resolve_model_dir
    from .patchset import PatchSet
    from .records import read_records
    from .sequential import build_editor, run_stream, to_patchset

    config = _config(args)
    records = read_records(args.errors)
    model_dir = resolve_model_dir(args.model)
    model, tokenizer = load_model(model_dir)
    earlier = PatchSet.load(args.patches) if args.patches else None
    editor = build_editor(model, tokenizer, config, _examples(args.memory), _examples(args.val_memory), earlier)
    if earlier is not None:
        earlier.check_base(editor.arch, model_dir)
    if editor.memory is None:
        print("warning: no --memory: patches are kept off only earlier edit inputs; locality will suffer",
              file=sys.stderr)
    train = LocalitySet.build(editor, "train", _examples(args.train_locality)) if args.train_locality else None
    test = LocalitySet.build(editor, "test", _examples(args.locality)) if args.locality else None
    outcomes = run_stream(editor, records, progress=not args.quiet, path=args.path)
    patches = to_patchset(editor, outcomes, str(args.model), model_dir, earlier)
    patches.save(args.out)
    metrics = summarize(editor, outcomes, train, test)
    metrics["outcomes"] = [o.to_dict() for o in outcomes]
    if args.metrics:
        _write_json(args.metrics, metrics)
    failed = metrics["failed_ids"]
    print(f"{metrics['n_edits']} edits, {metrics['n_failed']} failed, "
          f"{metrics['n_skipped_already_correct']} already right; SR {_fmt(metrics['SR'])} "
          f"ER {_fmt(metrics['ER'])}; {len(patches)} neurons -> {args.out}", file=sys.stderr)
    if failed:
        print(f"failed (not kept{', kept' if config.keep_failed else ''}): {', '.join(failed)}", file=sys.stderr)
    return 3 if failed and args.strict else 0


def cmd_eval(args) -> int:
    from .metrics import LocalitySet
    from .models.base import load_model, resolve_model_dir
    from .patchset import PatchSet
    from .records import read_records
    from .sequential import build_editor, check_task
    from .tasks import Example

    model_dir = resolve_model_dir(args.model)
    model, tokenizer = load_model(model_dir)
    patches = PatchSet.load(args.patches)
    editor = build_editor(model, tokenizer, _config(args), patches=patches)
    patches.check_base(editor.arch, model_dir)
    records = read_records(args.errors)
    check_task(editor, records)
    cached = editor.cache([Example(r.input, r.target) for r in records])
    rephrased = editor.cache([Example(p, r.target) for r in records for p in r.rephrases])
    result = {
        "SR": None,
        "GR": editor.accuracy(rephrased),
        "ER": editor.accuracy(cached),
        "TrainR": None,
        "TestR": None,
        "n_errors": len(records),
        "n_neurons": len(editor.neurons),
        "wrong_ids": [r.id for r, c in zip(records, cached) if not editor.judge(c)[0]],
    }
    for key, path, name in (("TrainR", args.train_locality, "train"), ("TestR", args.locality, "test")):
        if path:
            loc = LocalitySet.build(editor, name, _examples(path))
            result[key] = loc.ratio(editor)
            changed = loc.changed(editor)
            result[f"{name}_unchanged"] = 1 - len(changed) / len(loc.cached) if loc.cached else None
            result[f"{name}_changed"] = changed
    _write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}))
    return 0


def cmd_config(args) -> int:
    from dataclasses import fields

    from .config import EditorConfig

    help_ = EditorConfig.help()
    for f in fields(EditorConfig):
        print(f"{f.name:22} {f.default!r:10}  {help_[f.name]}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(edits=args.edits, out_dir=Path(args.out))


def _fmt(x):
    return "n/a" if x is None else f"{x:.3f}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="patcher", description="Transformer-Patcher sequential model editing")
    sub = p.add_subparsers(dest="command", required=True)

    def editor_options(sp):
        sp.add_argument("--config", help="JSON file of editor settings (see `patcher config`)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one editor setting")

    e = sub.add_parser("edit", help="apply error records as sequential edits and write the patch set")
    e.add_argument("--model", required=True, help="model directory (or base model name: minilm, smollm2)")
    e.add_argument("--errors", required=True, help="error records, JSON lines")
    e.add_argument("--out", required=True, help="patch set directory to write")
    e.add_argument("--patches", help="existing patch set to edit on top of")
    e.add_argument("--metrics", help="write SR/GR/ER/TrainR/TestR and per-edit outcomes here (JSON)")
    e.add_argument("--memory", help="training-split examples (JSON lines with input, target) for the memory")
    e.add_argument("--val-memory", help="validation-split examples for early stopping")
    e.add_argument("--train-locality", help="training subset for TrainR")
    e.add_argument("--locality", help="held-out examples for TestR")
    e.add_argument("--path", choices=["fast", "reference"], default="fast", help="training path")
    e.add_argument("--strict", action="store_true", help="exit 3 when any edit failed")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    editor_options(e)
    e.set_defaults(func=cmd_edit)

    v = sub.add_parser("eval", help="measure a patch set on error records and locality data")
    v.add_argument("--model", required=True)
    v.add_argument("--patches", required=True)
    v.add_argument("--errors", required=True)
    v.add_argument("--locality", help="held-out examples (TestR)")
    v.add_argument("--train-locality", help="training subset (TrainR)")
    v.add_argument("--out", required=True)
    editor_options(v)
    v.set_defaults(func=cmd_eval)

    c = sub.add_parser("config", help="list the editor settings with their defaults")
    c.set_defaults(func=cmd_config)

    d = sub.add_parser("demo", help="sequential editing of SmolLM2's real factual mistakes, end to end")
    d.add_argument("--edits", type=int, default=30, help="how many real mistakes to fix")
    d.add_argument("--out", default="runs/demo", help="where errors, patches and metrics go")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from .records import RecordError

    try:
        return args.func(args)
    except (RecordError, FileNotFoundError, KeyError, ValueError) as e:
        if os.environ.get("PATCHER_DEBUG"):
            raise
        print(f"patcher {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
