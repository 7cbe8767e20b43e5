"""The `patcher` command. Heavy imports (torch, transformers) happen inside the commands, so `--help` is fast."""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path


def _config(args):
    from .engine.config import EditorConfig

    return EditorConfig.from_dict(_overrides(args))


def _write_json(path, data):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def _entry(args):
    """The model of a command: a catalog entry by name (its files overridden by flags), or an entry made of a model
    directory (or base model name) and the flags' files."""
    from .models.base import resolve_model_dir
    from .pipeline.catalog import Catalog, ModelEntry, labels_of

    def here(location: str) -> str:            # a flag's file is relative to where the command runs
        return location if location.startswith("s3://") else str(Path(location).resolve())

    catalog = Catalog(getattr(args, "catalog", None))
    files = {k: here(v) for k, v in {"memory": getattr(args, "memory", None),
                                     "validation": getattr(args, "val_memory", None)}.items() if v}
    suites = {name: here(f) for name, f in
              _suites(getattr(args, "locality", None) or [], getattr(args, "train_locality", None)).items()}
    if args.model in catalog:
        entry = catalog.entry(args.model)
        return ModelEntry.from_dict(entry.name, {**entry.to_dict(), **files,
                                                 "locality": {**entry.locality, **suites}}, entry.home)
    model_dir = resolve_model_dir(args.model)
    task = "classification" if labels_of(model_dir) else "generation"
    return ModelEntry.from_dict(Path(args.model).name, {"path": str(model_dir.resolve()), "task": task, **files,
                                                        "locality": suites}, Path.cwd())


def _suites(items: list[str], train: str | None) -> dict[str, str]:
    """--locality [SUITE=]FILE (SUITE defaults to test) and --train-locality FILE (suite train)."""
    out = {"train": train} if train else {}
    for item in items:
        name, sep, path = item.partition("=")
        out.update({name: path} if sep else {"test": item})
    return out


def _overrides(args) -> dict:
    from .engine.config import EditorConfig

    values = json.loads(Path(args.config).read_text()) if getattr(args, "config", None) else {}
    values.update(EditorConfig.parse_overrides(getattr(args, "set", None) or []))
    return values


def below_gate(report: dict, thresholds) -> list[str]:
    """What an end-of-run report misses of the gate's locality and retention thresholds, as lines for people."""
    misses = []
    er = report.get("registry_ER")
    if er is not None and er < thresholds.edit_retain:
        misses.append(f"ER {er:.3f} < {thresholds.edit_retain}")
    for name, suite in report.get("locality", {}).items():
        if suite.get("unchanged") is not None and suite["unchanged"] < thresholds.unchanged:
            misses.append(f"{name} unchanged {suite['unchanged']:.3f} < {thresholds.unchanged}")
        if suite.get("retain") is not None and suite["retain"] < thresholds.retain:
            misses.append(f"{name} retain {suite['retain']:.3f} < {thresholds.retain}")
    return misses


def cmd_edit(args) -> int:
    from .engine.patchset import PatchSet
    from .engine.records import read_records
    from .pipeline.settings import PipelineSettings
    from .pipeline.train import train_patches

    overrides = _overrides(args)                  # flags first: a bad one is named before any loading
    entry = _entry(args)
    settings = PipelineSettings.load(args.params)
    records = read_records(args.errors)
    earlier = PatchSet.load(args.patches) if args.patches else None
    if args.no_memory:
        print("WARNING: --no-memory: nothing keeps these patches off unrelated inputs; the patch set's manifest "
              "records it (data.no_memory)", file=sys.stderr)
    patches, report = train_patches(entry, records, earlier, settings.train, progress=not args.quiet,
                                    overrides=overrides, no_memory=args.no_memory, path=args.path)
    patches.save(args.out)
    if args.metrics:
        _write_json(args.metrics, report)
    m = report["metrics"]
    print(f"{m['n_edits']} edits, {m['n_failed']} failed, {m['n_skipped_already_correct']} already right; "
          f"SR {_fmt(m['SR'])} GR {_fmt(m['GR'])} ER {_fmt(report['registry_ER'])}; "
          + "".join(f"{name} unchanged {_fmt(s['unchanged'])}; " for name, s in report["locality"].items())
          + f"{len(patches)} neurons -> {args.out}", file=sys.stderr)
    if report["failed_ids"]:
        print(f"failed: {', '.join(report['failed_ids'])}", file=sys.stderr)
    misses = below_gate(report, entry.gate_thresholds(settings.gate))
    if misses:
        print(f"below {entry.name}'s gate: {'; '.join(misses)}", file=sys.stderr)
    return 3 if args.strict and (report["failed_ids"] or misses) else 0


def cmd_eval(args) -> int:
    from .engine.examples import Example
    from .engine.metrics import LocalitySet
    from .engine.patchset import PatchSet
    from .engine.records import RecordError, read_records
    from .engine.sequential import build_editor
    from .engine.suites import examples, read_rows
    from .models.base import load_model, resolve_model_dir

    model_dir = resolve_model_dir(args.model)
    model, tokenizer = load_model(model_dir)
    patches = PatchSet.load(args.patches)
    config = _config(args)
    for note in patches.own_kind(config):                     # its neurons read what they were trained on
        print(f"eval: {note}", file=sys.stderr)
    editor = build_editor(model, tokenizer, config, patches=patches, edits_in_memory=False)   # reads only
    patches.check_base(editor.arch, model_dir)
    records = read_records(args.errors)
    wrong_task = [r.id for r in records if r.task != editor.task.name]
    if wrong_task:
        raise RecordError(str(args.errors), wrong_task[0], [f"task is not {editor.task.name}, what the model does "
                                                            f"({len(wrong_task)} records)"])
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
        "wrong_ids": [r.id for r, (right, _, _) in zip(records, editor.judge_all(cached)) if not right],
    }
    for key, path, name in (("TrainR", args.train_locality, "train"), ("TestR", args.locality, "test")):
        if path:
            rows = read_rows(path)
            loc = LocalitySet.build(editor, name, examples(editor, rows)[0], rows.has_targets)
            result[key] = loc.ratio(editor)
            changed = loc.changed(editor)
            result[f"{name}_unchanged"] = 1 - len(changed) / len(loc.cached) if loc.cached else None
            result[f"{name}_changed"] = changed
    _write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}))
    return 0


def cmd_config(args) -> int:
    from dataclasses import fields

    from .engine.config import GROUPS, EditorConfig

    help_ = EditorConfig.help()
    for f in fields(EditorConfig):
        if f.name in GROUPS:
            print(f"{'' if f.name == 'lr' else chr(10)}# {GROUPS[f.name]}")
        print(f"{f.name:22} {f.default!r:10}  {help_[f.name]}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(model=args.model, edits=args.edits, out_dir=Path(args.out))


def _section_overrides(items: list[str]) -> dict:
    """["gate.retain=0.995", ...] -> {"gate": {"retain": 0.995}} (values parsed as YAML scalars)."""
    import yaml

    out: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not (sep and dot and section and name):
            raise ValueError(f"expected SECTION.KEY=VALUE (a params.yaml setting), got {item!r}")
        out.setdefault(section, {})[name] = yaml.safe_load(raw)
    return out


def cmd_pipeline_run(args) -> int:
    from flows.pipeline import pipeline

    if args.catalog:
        os.environ["PATCHER_CATALOG"] = str(Path(args.catalog).resolve())     # the flows' steps read it
    result = pipeline(model=args.model, root=args.root, approval=args.approval, params=args.params,
                      overrides=_section_overrides(args.set))
    print(json.dumps(result.summary, indent=1, ensure_ascii=False))
    return 4 if result.outcome.rejected else 0


def cmd_pipeline_deployments(args) -> int:
    from .pipeline.catalog import Catalog
    from .pipeline.deployments import write_deployments

    names = write_deployments(args.prefect_yaml, Catalog(args.catalog))
    print(f"{args.prefect_yaml}: {', '.join(names)}; schedule them with `prefect --no-prompt deploy --all`")
    return 0


def cmd_pipeline_pending(args) -> int:
    from flows.review import pending_approvals

    for run in pending_approvals():
        print(json.dumps(run))
    return 0


def cmd_pipeline_resume(args) -> int:
    from flows.review import resume

    resume(args.flow_run, args.approve, args.reviewer, args.comment)
    print(f"{'approved' if args.approve else 'rejected'} {args.flow_run} as {args.reviewer}")
    return 0


def cmd_pipeline_status(args) -> int:
    from .pipeline.settings import PipelineSettings
    from .pipeline.store import Layout, load_state

    settings = PipelineSettings.load(args.params)
    layout = Layout(args.root or settings.ingest.root, args.model)
    state, _ = load_state(layout)
    print(json.dumps({"ledger": layout.state, "version": state.version, "patches": state.patches,
                      "batches": len(state.batches), "records": len(state.records), "runs": state.runs[-10:]},
                     indent=1))
    return 0


def cmd_facts_build(args) -> int:
    from .facts.build import write_splits

    stats = write_splits(args.out, seed=args.seed)
    print(json.dumps({k: stats[k] for k in ("facts", "relations", "per_split")}))
    return 0


def cmd_facts_sets(args) -> int:
    from .facts.sets import write_sets

    print(json.dumps(write_sets(args.facts, args.task, args.out, args.wordings, args.seed)))
    return 0


def cmd_models_build(args) -> int:
    from .models.production import build

    out = build(args.name, seed=args.seed, out=args.out, force=args.force,
                progress=lambda msg: print(msg, file=sys.stderr), facts_dir=args.facts)
    print(out)
    return 0


def cmd_models_path(args) -> int:
    from .models.production import model_path

    print(model_path(args.name))
    return 0


def cmd_models_add(args) -> int:
    import yaml

    from .pipeline.catalog import Catalog, ModelEntry, check

    catalog = Catalog(args.catalog)
    if args.name in catalog and not args.force:
        raise ValueError(f"{args.name!r} is already in {catalog.path}; --force replaces it")
    fields = {"path": args.path, "task": args.task, "prompt_format": args.prompt_format, "memory": args.memory,
              "validation": args.validation, "locality": _suites(args.locality or [], None), "errors": args.errors,
              "sha256": args.sha256, "description": args.description,
              "editor": {k: v for item in args.set or [] for k, v in [_setting(item)]},
              "gate": {k: float(v) for item in args.gate or [] for k, v in [_setting(item)]}}
    entry = ModelEntry.from_dict(args.name, {k: v for k, v in fields.items() if v not in (None, "", {})},
                                 catalog.path.resolve().parent)
    found = check(entry)
    catalog.put(entry)
    print(yaml.safe_dump({"added": args.name, "catalog": str(catalog.path), **found}, sort_keys=False,
                         allow_unicode=True), end="")
    return 0


def _setting(item: str) -> tuple[str, object]:
    import yaml

    key, sep, raw = item.partition("=")
    if not (sep and key):
        raise ValueError(f"expected KEY=VALUE, got {item!r}")
    return key, yaml.safe_load(raw)


def cmd_models_check(args) -> int:
    import yaml

    from .pipeline.catalog import Catalog, check

    print(yaml.safe_dump(check(Catalog(args.catalog).entry(args.name)), sort_keys=False, allow_unicode=True), end="")
    return 0


def cmd_models_list(args) -> int:
    from .pipeline.catalog import Catalog

    catalog = Catalog(args.catalog)
    print(f"{'model':22} {'task':15} {'prompt':7} {'memory':6} {'suites':24} path")
    for entry in catalog.entries.values():
        print(f"{entry.name:22} {entry.task:15} {entry.prompt_format:7} {'yes' if entry.memory else 'NONE':6} "
              f"{','.join(entry.locality) or 'NONE':24} {entry.path}")
    return 0


def cmd_errors_generate(args) -> int:
    if not (args.out or args.batches or args.s3):
        raise ValueError("say where the records go: --out FILE.jsonl, --batches DIR and/or --s3 s3://BUCKET/PREFIX")
    from .engine.editor import Editor
    from .facts.bank import all_facts, load_split, split_facts
    from .facts.mistakes import find_mistakes
    from .models.base import load_model
    from .models.production import build, model_path

    model_dir = Path(args.model_dir) if args.model_dir else model_path(args.model)
    if not (model_dir / "model_card.json").exists():
        build(args.model, seed=args.seed, out=model_dir, progress=lambda m: print(m, file=sys.stderr))
    if args.facts:       # the bank: every split file beside it (negatives name the subject's other relations, twins)
        facts = load_split(args.facts)
        bank = [f for path in sorted(Path(args.facts).parent.glob("*.jsonl")) for f in load_split(path)]
    else:
        bank = all_facts()
        facts = split_facts(bank, seed=args.seed)["edit"]
    model, tokenizer = load_model(model_dir)
    records = find_mistakes(Editor(model, tokenizer), facts, args.model, limit=args.limit, seed=args.seed,
                            negatives=args.negatives, bank=bank, logged_at=args.logged_at)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(r.to_json() + "\n")
        stats = {"model": args.model, "facts": len(facts), "records": len(records),
                 "by_relation": dict(sorted(Counter(r.id.split(":")[0] for r in records).items()))}
        Path(args.out).with_suffix(".stats.json").write_text(json.dumps(stats, indent=1) + "\n")
        print(f"{len(records)} real mistakes of {args.model} -> {args.out}", file=sys.stderr)
    if args.batches or args.s3:
        from .facts.stream import batches, hours_ago

        files, damaged = batches(records, hours_ago(args.hours), hours=args.hours,
                                 damaged_share=args.damaged, seed=args.seed)
        texts = {key: "".join(line + "\n" for line in lines) for key, lines in files.items()}
        if args.batches:
            for key, text in texts.items():
                path = Path(args.batches) / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
        if args.s3:
            from .pipeline.store import put_files

            put_files(args.s3, texts)
        where = " and ".join(x for x in (args.batches, args.s3) if x)
        print(f"{sum(map(len, files.values()))} lines ({len(damaged)} damaged) in {len(files)} hourly batch "
              f"files under {where}", file=sys.stderr)
    return 0


def cmd_errors_put(args) -> int:
    from datetime import datetime, timezone

    from .engine.records import split_lines
    from .pipeline.settings import PipelineSettings
    from .pipeline.store import Layout, write_bytes

    root = args.root or PipelineSettings.load(args.params).ingest.root
    data = Path(args.inp).read_bytes()          # as logged: the pipeline's validation judges every line
    now = datetime.now(timezone.utc)
    uri = f"{Layout(root, args.model).errors}/{now:%Y/%m/%d/%H}/{args.name or Path(args.inp).stem}-{now:%M%S}.jsonl"
    write_bytes(uri, data, content_type="application/x-ndjson")
    print(f"{sum(1 for line in split_lines(data) if not isinstance(line, str) or line.strip())} lines -> {uri}")
    return 0


def cmd_validate(args) -> int:
    from .engine.records import split_lines
    from .pipeline.catalog import Catalog
    from .pipeline.validation import known_models, validate_lines

    lines = split_lines(Path(args.inp).read_bytes())
    result = validate_lines(lines, known_models([args.model] if args.model else None, Catalog(args.catalog)))
    for path, rows in ((args.accepted, result.accepted), (args.quarantine, result.quarantined)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(json.dumps({"received": result.received, "accepted": len(result.accepted),
                      "quarantined": len(result.quarantined)}))
    return 0


def cmd_train(args) -> int:
    import tempfile

    from .engine.records import read_records
    from .pipeline.catalog import Catalog
    from .pipeline.registry import live_base
    from .pipeline.settings import PipelineSettings
    from .pipeline.train import train_patches

    settings = PipelineSettings.load(args.params)
    entry = Catalog(args.catalog).entry(args.model)
    records = read_records(args.records)[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        base, _ = live_base(args.registry, args.model, Path(tmp) / "base")
        patches, report = train_patches(entry, records, base, settings.train, progress=not args.quiet)
    patches.save(args.out)
    _write_json(args.report, report)
    if args.plots:
        _write_json(args.plots, report["checkpoints"])
    m = report["metrics"]
    print(json.dumps({k: m[k] for k in ("SR", "GR", "ER", "TrainR", "TestR", "n_edits", "n_failed")}))
    return 0


def cmd_gate(args) -> int:
    from .pipeline.approval import PendingApproval
    from .pipeline.catalog import Catalog
    from .pipeline.gate import gate
    from .pipeline.settings import PipelineSettings

    raw = Path(args.report).read_bytes()
    report = json.loads(raw)
    entry = Catalog(args.catalog).entry(report["model"])
    result = gate(report, entry.gate_thresholds(PipelineSettings.load(args.params).gate))
    _write_json(args.out, result.to_dict())
    if args.markdown:
        Path(args.markdown).write_text(result.markdown(f"Gate report: {report['model']}"))
    if args.metrics:
        _write_json(args.metrics, {"passed": result.passed, **{k: result.metrics.get(k) for k in
                                                               ("SR", "GR", "ER", "TrainR", "TestR", "n_edits",
                                                                "n_failed")}})
    if args.pending:
        pending = PendingApproval.of(raw, report["model"], result.passed, args.patches, args.out)
        _write_json(args.pending, pending.to_dict())
        print(f"gate {'passed' if result.passed else 'FAILED'}; " + (
            f"approve with: patcher approve {pending.id} --model {report['model']} --reviewer NAME"
            if result.passed else "nothing to approve"), file=sys.stderr)
    return 0


def cmd_approve(args) -> int:
    from .pipeline.approval import PendingApproval
    from .pipeline.catalog import Catalog
    from .pipeline.registry import register_version
    from .pipeline.settings import PipelineSettings

    entry = Catalog(args.catalog).entry(args.model)
    pending_path = Path(args.pending or f"data/pipeline/{args.model}/pending.json")
    pending = PendingApproval.load(pending_path)
    decision = pending.decide(args.pending_id, args.model, not args.reject, args.reviewer, args.comment,
                              where=pending_path)
    if args.reject:
        _write_json(pending_path.with_name("rejected.json"), decision)
        print(f"rejected {args.model} {args.pending_id} ({args.reviewer})")
        return 0
    settings = PipelineSettings.load(args.params)
    version = register_version(args.registry or settings.register.repo or ".", args.model, pending.patches,
                               json.loads(Path(pending.gate_report).read_text()), decision,
                               note=f"dvc repro, pending {args.pending_id}")
    print(f"{args.model} {version['version']} registered ({version['tag']}), approved by {args.reviewer}")
    if settings.export.enabled and not args.no_export:
        from .serving.release import export_and_publish

        out = Path(args.export_dir or f"data/serving/{args.model}")
        exported = export_and_publish(entry, pending.patches, out, settings.export, settings.ingest.root,
                                      version["name"])
        print(f"{args.model} {version['name']} exported to ONNX ({out}) and published: {exported['pointer']['uri']}")
    return 0


def cmd_export(args) -> int:
    from .serving.export import export
    from .serving.release import locality_sample

    if args.publish and not args.version:
        raise ValueError("--publish needs --version (the name consumers see)")
    entry = _entry(args)
    manifest = export(entry.model_dir(), args.patches, args.out, locality_sample(entry, args.parity_locality),
                      version=args.version, prompt_format=entry.prompt_format)
    if args.publish:
        from .serving.publish import publish

        manifest["published"] = publish(args.out, args.publish, entry.name, args.version)
    print(json.dumps({"out": args.out, "patch_set": manifest["patch_set"] and
                      {k: manifest["patch_set"][k] for k in ("edits", "neurons", "how")},
                      "parity": manifest["parity"], "published": manifest.get("published")}))
    return 0


def cmd_serve(args) -> int:
    from .pipeline.settings import PipelineSettings
    from .serving.serve import ServeSettings, serve

    root = args.root or PipelineSettings.load(args.params).ingest.root
    limits = {k: getattr(args, k) for k in ("feedback_per_minute", "max_request_bytes", "max_input_chars", "max_batch",
                                            "max_running", "batch_window_ms", "max_batch_rows")
              if getattr(args, k) is not None}                                                # the rest: defaults
    serve(ServeSettings(args.model, root, poll_s=args.poll, open_feedback=args.open_feedback,
                        log_format=args.log_format, **limits), args.host, args.port)
    return 0


def cmd_s3(args) -> int:
    from patcher.pipeline import s3

    if args.s3_command == "up":
        try:
            state = s3.up(args.port)
        except s3.S3PortTaken as e:                 # the clients' endpoint is taken: say by whom, move nowhere
            print(f"patcher s3: error: {e}", file=sys.stderr)
            return 2
        print(f"S3 on {state['endpoint_url']} (pid {state['pid']}, data {state['data_dir']}); patcher commands "
              f"use it when AWS_ENDPOINT_URL is unset")
    elif args.s3_command == "down":
        print("stopped" if s3.down() else "not running")
    else:
        state = s3.embedded_state()
        print(json.dumps(state or {"running": False}))
        return 0 if state else 1
    return 0


def cmd_registry(args) -> int:
    from .pipeline.registry import Registry

    if args.registry_command == "init":
        registry = Registry.init(args.repo, args.remote)
        print(f"registry in {registry.repo}" + (f", DVC remote {args.remote}" if args.remote else ""))
        return 0
    registry, model = Registry(args.repo), args.model
    which = {"version": getattr(args, "version", None), "stage": getattr(args, "stage", None)}
    if args.registry_command == "list":           # one model's versions, or every model's, each line led by its name
        for name in [model] if model else registry.models():
            for v in registry.versions(name):
                m = v.get("metrics", {})
                print(("" if model else f"{name:20} ")
                      + f"{v['version']:9} {v['action']:12} {v['edits']:5} edits {v['neurons']:5} neurons  "
                      + " ".join(f"{k} {_fmt(m.get(k))}" for k in ("SR", "ER", "TrainR", "TestR"))
                      + f"  {','.join(v['stages']) or '-':10} {v['registered_at']}  by {v['approved_by']}"
                      + (f"  ({v['note']})" if v.get("note") else ""))
    elif args.registry_command == "show":
        v = registry.resolve(model, **which)
        print(json.dumps({**v, "approval": registry.read(model, "approval.json", v["number"]),
                          "gate": {k: registry.read(model, "gate_report.json", v["number"]).get(k)
                                   for k in ("passed", "checks")}}, indent=1, ensure_ascii=False))
    elif args.registry_command == "diff":
        d = registry.diff(model, args.a, args.b)
        print(json.dumps({"from": d["from"], "to": d["to"], "kept": d["kept"],
                          "added": [e["error_id"] for e in d["added"]],
                          "removed": [e["error_id"] for e in d["removed"]]}, indent=1))
    elif args.registry_command == "get":
        print(registry.fetch(model, args.out, **which))
    elif args.registry_command == "promote":
        print(registry.promote(model, args.version, args.stage))
    elif args.registry_command == "rollback":
        if bool(args.to) == bool(args.edit):
            raise ValueError("say what to roll back: --to VERSION (a whole version) or --edit ERROR_ID (one edit)")
        v = registry.rollback(model, args.to, args.reviewer, args.comment) if args.to else \
            registry.remove_edit(model, args.edit, args.reviewer, args.comment)
        print(f"{model} {v['version']}: {v['action']} ({v['note']}), {v['edits']} edits")
    return 0


def _fmt(x):
    return "n/a" if x is None else f"{x:.3f}"


def _catalog_option(sp):
    sp.add_argument("--catalog", help="the model catalog (default: $PATCHER_CATALOG, else catalog.yaml)")


def _editor_options(sp):
    sp.add_argument("--config", help="JSON file of editor settings (see `patcher config`)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one editor setting")


def _editing_commands(sub) -> None:
    """edit, eval, config: the editor on files."""
    e = sub.add_parser("edit", help="apply error records as sequential edits and write the patch set")
    e.add_argument("--model", required=True, help="a catalog model (its memory, suites and editor settings), or a "
                                                  "model directory (or base model name: minilm, smollm2)")
    e.add_argument("--errors", required=True, help="error records, JSON lines")
    e.add_argument("--out", required=True, help="patch set directory to write")
    e.add_argument("--patches", help="existing patch set to edit on top of")
    e.add_argument("--metrics", help="write the run's report here (JSON): the five metrics, every suite, each edit")
    e.add_argument("--memory", help="representative inputs (JSON lines with input[, target]) for the memory")
    e.add_argument("--val-memory", help="validation memory for early stopping (default: a seeded share of the memory)")
    e.add_argument("--locality", action="append", metavar="[SUITE=]FILE",
                   help="a locality suite (input[, target]); SUITE defaults to test (TestR)")
    e.add_argument("--train-locality", help="the suite `train` (TrainR)")
    e.add_argument("--no-memory", action="store_true", help="edit without a memory (experiments only: the edits "
                   "then change unrelated answers); recorded in the patch set's manifest")
    e.add_argument("--path", choices=["fast", "reference"], default="fast", help="training path")
    e.add_argument("--strict", action="store_true", help="exit 3 when an edit failed or the run ends below the "
                                                         "model's gate (ER, a suite's unchanged share or retain)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.add_argument("--params", default="params.yaml", help="train.editor and gate settings")
    _catalog_option(e)
    _editor_options(e)
    e.set_defaults(func=cmd_edit)

    v = sub.add_parser("eval", help="measure a patch set on error records and locality data")
    v.add_argument("--model", required=True)
    v.add_argument("--patches", required=True)
    v.add_argument("--errors", required=True)
    v.add_argument("--locality", help="held-out examples (TestR)")
    v.add_argument("--train-locality", help="training subset (TrainR)")
    v.add_argument("--out", required=True)
    _editor_options(v)
    v.set_defaults(func=cmd_eval)

    c = sub.add_parser("config", help="list the editor settings with their defaults")
    c.set_defaults(func=cmd_config)


def _data_commands(sub) -> None:
    """facts, models, errors, validate: the production models, their data and mistakes."""
    f = sub.add_parser("facts", help="the fact bank").add_subparsers(dest="facts_command", required=True)
    fb = f.add_parser("build", help="write the seeded splits as JSON lines, with a data card")
    fb.add_argument("--out", default="data/facts")
    fb.add_argument("--seed", type=int, default=0)
    fb.set_defaults(func=cmd_facts_build)
    fs = f.add_parser("sets", help="a built-in model's catalog data from the splits: memory, validation, and the "
                                   "locality suites train (TrainR) and test (TestR)")
    fs.add_argument("--facts", default="data/facts", help="the split files (`patcher facts build`)")
    fs.add_argument("--task", required=True, choices=["classification", "generation"])
    fs.add_argument("--wordings", type=int, default=7, help="training phrasings per fact in the memory: the "
                                                            "model's editor `phrasings`")
    fs.add_argument("--seed", type=int, default=0, help="the claims' false answers (classification)")
    fs.add_argument("--out", required=True)
    fs.set_defaults(func=cmd_facts_sets)

    m = sub.add_parser("models", help="the model catalog, and the two built-in models").add_subparsers(dest="models_command", required=True)
    mb = m.add_parser("build", help="build (or reuse) a production model directory with its model card")
    mb.add_argument("name", choices=["factcheck-minilm", "facts-smollm2"])
    mb.add_argument("--seed", type=int, default=0)
    mb.add_argument("--out", help="directory (default: `patcher models path NAME`)")
    mb.add_argument("--force", action="store_true", help="rebuild even if a matching build exists")
    mb.add_argument("--facts", help="split files from `patcher facts build` (default: made with the seed)")
    mb.set_defaults(func=cmd_models_build)
    mp = m.add_parser("path", help="print where a production model is built")
    mp.add_argument("name", choices=["factcheck-minilm", "facts-smollm2"])
    mp.set_defaults(func=cmd_models_path)
    ma = m.add_parser("add", help="check a model (loads, finds its last FFN, one forward pass, reads its data) and "
                                  "write its catalog entry")
    ma.add_argument("name")
    ma.add_argument("--path", required=True, help="a from_pretrained directory, or an s3:// prefix holding one")
    ma.add_argument("--task", required=True, choices=["classification", "generation"])
    ma.add_argument("--prompt-format", default="text", choices=["text", "chat"],
                    help="generation: chat puts each input to the model as the user turn of its chat template")
    ma.add_argument("--memory", help="representative inputs, JSON lines with input[, target] (file, s3://, DVC-tracked)")
    ma.add_argument("--validation", help="validation memory (default: a seeded share of the memory)")
    ma.add_argument("--locality", action="append", metavar="SUITE=FILE", help="a regression suite, input[, target]")
    ma.add_argument("--errors", help="logged error records for `dvc repro`")
    ma.add_argument("--sha256", help="the weights' sha256, checked after an S3 download")
    ma.add_argument("--description", default="")
    ma.add_argument("--set", action="append", metavar="KEY=VALUE", help="an editor setting (`patcher config`)")
    ma.add_argument("--gate", action="append", metavar="KEY=VALUE", help="a gate threshold (retain, unchanged, "
                                                                         "edit_retain, max_failed_share)")
    ma.add_argument("--force", action="store_true", help="replace an existing entry")
    _catalog_option(ma)
    ma.set_defaults(func=cmd_models_add)
    ml = m.add_parser("list", help="the catalog's models")
    _catalog_option(ml)
    ml.set_defaults(func=cmd_models_list)
    mc = m.add_parser("check", help="check a catalog entry again (model, FFN, forward pass, data files)")
    mc.add_argument("name")
    _catalog_option(mc)
    mc.set_defaults(func=cmd_models_check)

    er = sub.add_parser("errors", help="error streams").add_subparsers(dest="errors_command", required=True)
    eg = er.add_parser("generate", help="run a built-in model over the fact bank's edit split; log its real mistakes")
    eg.add_argument("--model", required=True, choices=["factcheck-minilm", "facts-smollm2"])
    eg.add_argument("--out", help="error records, JSON lines")
    eg.add_argument("--batches", help="also write them as hourly batches (YYYY/MM/DD/HH/*.jsonl) under this "
                                      "directory, with damaged lines mixed in")
    eg.add_argument("--s3", help="the same hourly batches under an S3 prefix: the pipeline reads ROOT/errors/MODEL, "
                                 "e.g. s3://patcher/errors/facts-smollm2 (standard AWS settings: AWS_ENDPOINT_URL, "
                                 "keys from the environment)")
    eg.add_argument("--hours", type=int, default=1, help="hours the batches span")
    eg.add_argument("--damaged", type=float, default=0.1, help="share of damaged lines in the batches")
    eg.add_argument("--model-dir", help="the built model (default: `patcher models path NAME`, built if missing)")
    eg.add_argument("--facts", help="a split file (default: the edit split of the fact bank)")
    eg.add_argument("--limit", type=int, help="at most this many records")
    eg.add_argument("--negatives", type=int, default=3, help="generation: each record's negatives, its subject in "
                    "the N training templates of each other relation the bank has for it most like its prompt "
                    "and the same question about its name twins (Sudan / South Sudan) in N more (0: none)")
    eg.add_argument("--seed", type=int, default=0)
    eg.add_argument("--logged-at", help="RFC 3339 timestamp every record is stamped with (default: now; dvc.yaml "
                                        "passes params.yaml's errors.logged_at, so `dvc repro` rebuilds the same "
                                        "streams)")
    eg.set_defaults(func=cmd_errors_generate)

    ep = er.add_parser("put", help="a file of logged error records into the pipeline's S3 layout "
                                   "(ROOT/errors/MODEL/YYYY/MM/DD/HH/), as a serving system writes them")
    ep.add_argument("--model", required=True, help="the catalog model the records are for")
    ep.add_argument("--in", dest="inp", required=True, help="error records, JSON lines (validated by the pipeline)")
    ep.add_argument("--root", help="S3 root (default: params.yaml ingest.root)")
    ep.add_argument("--name", help="the batch file's name (default: the input file's)")
    ep.add_argument("--params", default="params.yaml")
    ep.set_defaults(func=cmd_errors_put)

    va = sub.add_parser("validate", help="validate error records (great-expectations); quarantine with reasons")
    va.add_argument("--in", dest="inp", required=True, help="error records, JSON lines")
    va.add_argument("--accepted", required=True, help="valid records, JSON lines")
    va.add_argument("--quarantine", required=True,
                    help="the rest, one JSON line each: line number, original text, reasons")
    va.add_argument("--model", help="accept only this catalog model's records (default: any catalog model's)")
    _catalog_option(va)
    va.set_defaults(func=cmd_validate)


def _dvc_stage_commands(sub) -> None:
    """train, gate, approve: the pipeline's steps as `dvc repro` runs them."""
    tr = sub.add_parser("train", help="the pipeline's train step on a file of accepted error records")
    tr.add_argument("--model", required=True, help="a catalog model (its directory, memory, suites, settings)")
    _catalog_option(tr)
    tr.add_argument("--records", required=True, help="accepted error records, JSON lines")
    tr.add_argument("--limit", type=int, help="the first N records only")
    tr.add_argument("--registry", help="train on top of this registry's latest version (default: the base model)")
    tr.add_argument("--out", required=True, help="patch set directory to write")
    tr.add_argument("--report", required=True, help="train report (JSON) to write")
    tr.add_argument("--plots", help="also write the metrics at checkpoints along the stream here (JSON)")
    tr.add_argument("--params", default="params.yaml", help="settings: the `train` section")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=cmd_train)

    ga = sub.add_parser("gate", help="the locality gate on a train report; a pending approval when it passes")
    ga.add_argument("--report", required=True)
    ga.add_argument("--out", required=True, help="gate report (JSON)")
    ga.add_argument("--markdown", help="the report for a reviewer (Markdown)")
    ga.add_argument("--metrics", help="flat metrics (JSON) for `dvc metrics show`")
    ga.add_argument("--pending", help="write the pending approval here (id, patch set, gate report)")
    ga.add_argument("--patches", help="the patch set the report is about (recorded in the pending approval)")
    ga.add_argument("--params", default="params.yaml", help="settings: the `gate` section (the catalog entry's on top)")
    _catalog_option(ga)
    ga.set_defaults(func=cmd_gate)

    ap = sub.add_parser("approve", help="approve (or reject) a pending patch set from `dvc repro`; approving "
                                        "registers it as the registry's next version")
    ap.add_argument("pending_id", help="the id `patcher gate` printed")
    ap.add_argument("--model", required=True)
    ap.add_argument("--reviewer", required=True)
    ap.add_argument("--comment", default="")
    ap.add_argument("--reject", action="store_true")
    ap.add_argument("--pending", help="default: data/pipeline/MODEL/pending.json")
    ap.add_argument("--registry", help="registry repository (default: params.yaml register.repo)")
    ap.add_argument("--params", default="params.yaml")
    _catalog_option(ap)
    ap.add_argument("--export-dir", help="where the ONNX export is written (default: data/serving/MODEL)")
    ap.add_argument("--no-export", action="store_true", help="register only (params.yaml export.enabled: false "
                    "does the same); the export then waits for `patcher export --publish`")
    ap.set_defaults(func=cmd_approve)


def _serving_commands(sub) -> None:
    """serve, export, s3."""
    sv = sub.add_parser("serve", help="HTTP service (127.0.0.1) over the latest published ONNX version: /predict, "
                                      "/health, /metrics, /feedback; switches to new versions as they are published")
    sv.add_argument("--model", required=True, help="a catalog model's name (ROOT/serving/MODEL/latest)")
    sv.add_argument("--root", help="S3 root (default: params.yaml ingest.root)")
    sv.add_argument("--params", default="params.yaml")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--poll", type=float, default=5.0, help="seconds between looks for a new version")
    sv.add_argument("--open-feedback", action="store_true",
                    help="accept /feedback without a token (source feedback:anonymous); default: only the "
                         "tokens in PATCHER_FEEDBACK_TOKENS (name:token,...), none set: /feedback refused")
    sv.add_argument("--feedback-per-minute", type=int, help="/feedback requests per token a minute (default 30)")
    sv.add_argument("--max-request-bytes", type=int, help="largest request body (default 262144)")
    sv.add_argument("--max-input-chars", type=int, help="longest /predict input in characters (default 4000)")
    sv.add_argument("--max-batch", type=int, help="most inputs per /predict request (default 64)")
    sv.add_argument("--max-running", type=int, help="model runs (batches) at once, the rest wait (default 1)")
    sv.add_argument("--batch-window-ms", type=float,
                    help="how long a /predict request waits for others to share its model run (default 5)")
    sv.add_argument("--max-batch-rows", type=int, help="most inputs in one model run (default 32)")
    sv.add_argument("--log-format", choices=("json", "text"), default="json",
                    help="stderr: a JSON object a line (ts, level, logger, msg and fields), or plain text")
    sv.set_defaults(func=cmd_serve)

    ex = sub.add_parser("export", help="ONNX export of a patched model, checked against PyTorch")
    ex.add_argument("--model", required=True, help="a catalog model, or a model directory (or base model name)")
    _catalog_option(ex)
    ex.add_argument("--patches", help="patch set directory (none: the unpatched model)")
    ex.add_argument("--out", required=True, help="directory to write (model.onnx, config, tokenizer, export.json)")
    ex.add_argument("--locality", dest="parity_locality", type=int, default=30,
                    help="inputs of the catalog model's locality suites added to the parity check")
    ex.add_argument("--version", help="the patch set's registry version, recorded in export.json")
    ex.add_argument("--publish", metavar="ROOT", help="then publish it under ROOT/serving/NAME/VERSION/ (s3://...) "
                    "and point ROOT/serving/NAME/latest at it (needs --version)")

    ex.set_defaults(func=cmd_export)

    s3p = sub.add_parser("s3", help="the embedded S3 server (SeaweedFS on 127.0.0.1)")
    s3p.add_argument("s3_command", choices=["up", "down", "status"])
    s3p.add_argument("--port", type=int, help="S3 port for `up` (default: the one the last `up` recorded, "
                     "else 8333, else a free one)")
    s3p.set_defaults(func=cmd_s3)


def _pipeline_commands(sub) -> None:
    """pipeline, registry, demo: the Prefect pipeline and the patch registry."""
    pl = sub.add_parser("pipeline", help="the Prefect pipeline: errors in S3 -> approved patch set") \
        .add_subparsers(dest="pipeline_command", required=True)
    pr = pl.add_parser("run", help="one run of the pipeline for a model (flows/pipeline.py)")
    pr.add_argument("--model", required=True, help="a catalog model")
    _catalog_option(pr)
    pr.add_argument("--root", help="S3 root (default: params.yaml ingest.root)")
    pr.add_argument("--approval", choices=["manual", "auto"], help="override approve.policy (auto: demo/tests)")
    pr.add_argument("--params", default="params.yaml")
    pr.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a params.yaml setting")
    pr.set_defaults(func=cmd_pipeline_run)
    pd = pl.add_parser("deployments", help="write prefect.yaml's hourly deployments: one per catalog model")
    pd.add_argument("--prefect-yaml", default="prefect.yaml")
    _catalog_option(pd)
    pd.set_defaults(func=cmd_pipeline_deployments)
    pp = pl.add_parser("pending", help="runs waiting for approval (needs PREFECT_API_URL of the server)")
    pp.set_defaults(func=cmd_pipeline_pending)
    pz = pl.add_parser("resume", help="approve or reject a paused approval run (as the UI's form does)")
    pz.add_argument("flow_run", help="the paused approve run's id (`patcher pipeline pending`)")
    decision = pz.add_mutually_exclusive_group(required=True)
    decision.add_argument("--approve", action="store_true")
    decision.add_argument("--reject", action="store_true")
    pz.add_argument("--reviewer", required=True)
    pz.add_argument("--comment", default="")
    pz.set_defaults(func=cmd_pipeline_resume)
    ps = pl.add_parser("status", help="a model's ledger: live version, processed batches, recent runs")
    ps.add_argument("--model", required=True, help="a catalog model")
    ps.add_argument("--root")
    ps.add_argument("--params", default="params.yaml")
    ps.set_defaults(func=cmd_pipeline_status)

    rg = sub.add_parser("registry", help="the patch registry (git + DVC, GTO tags)") \
        .add_subparsers(dest="registry_command", required=True)

    def registry_parser(name, help_, model="required"):
        sp = rg.add_parser(name, help=help_)
        sp.add_argument("--repo", default=".", help="the registry's git + DVC repository (default: here)")
        if model:
            sp.add_argument("--model", required=model == "required",
                            help="production model name" + ("" if model == "required" else " (default: every one)"))
        sp.set_defaults(func=cmd_registry)
        return sp

    ri = registry_parser("init", "make a repository a registry, with a DVC remote", model=None)
    ri.add_argument("--remote", help="DVC remote URL, e.g. s3://patcher/dvc (AWS settings give endpoint, keys)")
    registry_parser("list", "versions with their metrics, stages and approvals", model="optional")
    for name, help_ in (("show", "one version (default: the latest)"), ("get", "fetch a version's patch set")):
        sp = registry_parser(name, help_)
        sp.add_argument("--version")
        sp.add_argument("--stage")
        if name == "get":
            sp.add_argument("--out", required=True)
    rd = registry_parser("diff", "edits added and removed between two versions")
    rd.add_argument("a")
    rd.add_argument("b")
    rp = registry_parser("promote", "assign a version to a stage (GTO tag NAME#STAGE#N)")
    rp.add_argument("version")
    rp.add_argument("stage")
    rr = registry_parser("rollback", "a new version: an earlier version's content, or the latest without one edit")
    rr.add_argument("--to", help="version whose content becomes the new version")
    rr.add_argument("--edit", help="error id whose neurons the new version drops")
    rr.add_argument("--reviewer", required=True)
    rr.add_argument("--comment", default="")

    d = sub.add_parser("demo", help="the pipeline end to end on the embedded defaults (S3, Prefect, real errors)")
    d.add_argument("--model", default="facts-smollm2", choices=["factcheck-minilm", "facts-smollm2"])
    d.add_argument("--edits", type=int, default=40, help="how many real mistakes the seeded hour holds")
    d.add_argument("--out", default="runs/demo", help="local copies of the run's summary and reports")
    d.set_defaults(func=cmd_demo)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="patcher", description="Transformer-Patcher sequential model editing")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_editing_commands, _data_commands, _dvc_stage_commands, _serving_commands, _pipeline_commands):
        add(sub)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from .engine.records import RecordError

    try:
        return args.func(args)
    except (RecordError, FileNotFoundError, KeyError, ValueError) as e:
        if os.environ.get("PATCHER_DEBUG"):
            raise
        print(f"patcher {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
