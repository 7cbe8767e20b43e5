"""The pipeline's train step as a library function: sequential patching of accepted error records on top of
the current patch set of a catalog model, with the report the gate and the reviewer read.

The memory, its validation split and the locality suites are the catalog entry's files (pipeline/catalog.py);
rows without a target take the unpatched model's own answer. The report holds the five metrics (TrainR and
TestR are the retain ratios of suites named `train` and `test`, the paper's names), each suite's retain ratio
and unchanged share, ER over every edit of the resulting patch set, each edit's outputs before, right after and
at the end, the locality examples whose prediction changed, the data's sha256, and the metrics at checkpoints
along the stream (the plot).
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field

from patcher.engine.config import EditorConfig, from_section
from patcher.engine.editor import EditOutcome
from patcher.engine.patchset import PatchSet
from patcher.engine.records import ErrorRecord

from .catalog import ModelEntry


@dataclass
class TrainSettings:
    """params.yaml `train`."""

    checkpoints: int = 8                # how many points of the metrics-over-the-stream plot
    editor: dict = field(default_factory=dict)    # EditorConfig overrides for every model (see `patcher config`);
                                                  # a catalog entry's `editor` goes on top; device: auto

    @classmethod
    def from_dict(cls, data: dict | None) -> "TrainSettings":
        settings = from_section(cls, data)
        unknown = set(settings.editor or {}) - set(EditorConfig.help())
        if unknown:
            raise ValueError(f"train.editor: unknown editor settings {', '.join(sorted(unknown))} (see `patcher config`)")
        return settings

    def editor_overrides(self, entry: ModelEntry) -> dict:
        """The model's EditorConfig overrides: `editor`, then the catalog entry's."""
        return {**self.editor, **entry.editor}

    def editor_config(self, entry: ModelEntry, base: PatchSet | None = None,
                      overrides: dict | None = None) -> tuple[EditorConfig, list[str]]:
        """-> (the model's editor settings: `editor`, the catalog entry's, then `overrides` (device auto: CUDA where
        there is one), notes). An existing patch set keeps one kind of neuron: where its subject layer or activation
        differs from the settings', its own wins (a patch set changes kind only when it starts over)."""
        config = entry.editor_config({"device": "auto", **self.editor}, overrides)
        if base is not None and base.editor_config.get("prompt_format", "text") != config.prompt_format:
            raise ValueError(f"{entry.name}: the patch set was trained on {base.editor_config.get('prompt_format', 'text')}"
                             f" prompts, the catalog says {config.prompt_format}: its neurons key on other inputs")
        return config, base.own_kind(config) if base is not None else []


def checkpoint_marks(n: int, points: int) -> set[int]:
    """About `points` edit counts spread over a stream of n, always including the last."""
    if n <= 0:
        return set()
    return {max(1, round(n * i / points)) for i in range(1, points + 1)} | {n}


def editor_for_entry(entry: ModelEntry, config: EditorConfig, base: PatchSet | None = None, no_memory: bool = False):
    """An editor on the entry's model with its memory and validation memory, on top of `base`, and its locality
    suites (remembering the UNPATCHED model's predictions). Without a memory it refuses unless `no_memory`.
    -> (editor, {suite: LocalitySet}, data provenance, the answers those examples hold (`known_answers`))."""
    from patcher.engine.editor import Editor
    from patcher.engine.metrics import LocalitySet
    from patcher.engine.patchset import weights_sha256
    from patcher.engine.sequential import build_editor
    from patcher.engine.suites import examples
    from patcher.models.base import load_model

    model_dir = entry.model_dir()
    model, tokenizer = load_model(model_dir)
    digest = weights_sha256(model_dir)
    memory, validation, suites = entry.data(config.seed, no_memory)
    probe = Editor(model, tokenizer, config)                   # the unpatched model's answers for target-less rows
    (memory_examples, memory_dropped), (val_examples, _) = (examples(probe, rows, model_sha256=digest)
                                                            if rows else ([], 0) for rows in (memory, validation))
    editor = build_editor(model, tokenizer, config, memory_examples, val_examples, base)
    if base is not None:
        base.check_base(editor.arch, model_dir)
    locality = {}
    data = {"model": {"dir": str(model_dir), "sha256": digest}, "locality": {},
            "memory": memory.describe() if memory else None, "validation": validation.describe() if validation else None}
    if memory is None:
        data["no_memory"] = True
    for name, rows in suites.items():
        suite_examples, dropped = examples(editor, rows, model_sha256=digest)
        locality[name] = LocalitySet.build(editor, name, suite_examples, rows.has_targets)
        data["locality"][name] = {**rows.describe(), "left_out": dropped}
    if memory is not None:
        data["memory"]["left_out"] = memory_dropped
    known = known_answers([("memory", memory), ("validation memory", validation)] +
                          [(f"locality suite {name}", rows) for name, rows in suites.items()])
    return editor, locality, data, known


def claim_key(text: str) -> str:
    """A text as a claim: case, spacing and closing punctuation aside ("Paris is the capital of France." and
    "paris is the capital of france" are one claim)."""
    return " ".join(text.casefold().split()).rstrip(" .!?;:")


def known_answers(sources: list[tuple[str, object]]) -> dict[str, tuple[str, str]]:
    """{claim: (its answer, where it is from)} over the rows (suites.Rows) whose owner wrote the answer: a row
    without one takes the model's own, which every real mistake contradicts."""
    known: dict[str, tuple[str, str]] = {}
    for where, rows in sources:
        for r in (rows.rows if rows is not None else []):
            if r["target"] is not None:
                known.setdefault(claim_key(r["input"]), (r["target"], where))
    return known


def suspicious(record: ErrorRecord, known: dict[str, tuple[str, str]]) -> list[str]:
    """Why a correction looks like poisoning: it gives another answer to a claim the memory or a locality suite
    holds (a correction of a real mistake is about an input the model got wrong, not one its data answers). Such a
    record is not edited but held for a person: one poisoned record neither trains nor blocks the batch."""
    answer, where = known.get(claim_key(record.input), (None, None))
    if answer is None or claim_key(answer) == claim_key(record.target):
        return []
    return [f"contradicts the {where}: {record.input!r} -> {answer!r}"]


def train_patches(entry: ModelEntry, records: list[ErrorRecord], base: PatchSet | None,
                  settings: TrainSettings | None = None, progress: bool = False, overrides: dict | None = None,
                  no_memory: bool = False, path: str = "fast") -> tuple[PatchSet, dict]:
    """-> (the patch set: base's edits plus the new ones that succeeded, the train report). `overrides`: editor
    settings over the catalog's; `no_memory`: edit without a memory (recorded in the patch set and report)."""
    import torch

    from patcher.engine.metrics import paper_metrics, summarize
    from patcher.engine.sequential import run_stream, to_patchset

    settings = settings or TrainSettings()
    start = time.perf_counter()
    config, notes = settings.editor_config(entry, base, overrides)
    editor, locality, data, known = editor_for_entry(entry, config, base, no_memory)
    train, test = locality.get("train"), locality.get("test")
    # locality examples the base patch set moved already: the report tells them from this run's changes
    earlier = {name: {suite.examples[i].input for i, _ in suite.moved(editor)} for name, suite in locality.items()} \
        if base is not None and len(base.neurons) else {}
    setup_seconds = time.perf_counter() - start

    marks, points, done = checkpoint_marks(len(records), settings.checkpoints), [], []

    def measure(outcome: EditOutcome) -> None:
        done.append(outcome)
        if len(done) in marks:
            points.append({"records": len(done), "edits": sum(o.status != "skipped" for o in done),
                           **paper_metrics(editor, done, train, test, er=_registry_retention(editor)[0]),
                           **{f"{name} unchanged": suite.unchanged(editor) for name, suite in locality.items()},
                           "neurons": len(editor.neurons)})

    flags = {r.id: suspicious(r, known) for r in records}
    outcomes = run_stream(editor, records, progress=progress, path=path, on_outcome=measure,
                          hold=lambda r: "; ".join(flags[r.id]))
    patches = to_patchset(editor, outcomes, entry.name, data["model"]["dir"], base)
    patches.data = data
    metrics = summarize(editor, outcomes, train, test)
    retention, wrong = _registry_retention(editor)
    final = dict(zip(editor.edited, editor.predictions(list(editor.edited.values()))))
    report = {
        "model": entry.name,
        "base_edits": len(base.edits) if base is not None else 0,
        "records": len(records),
        "metrics": {k: v for k, v in metrics.items() if not isinstance(v, list)},
        "locality": {name: _locality_summary(suite, editor, data["locality"][name], earlier.get(name, set()))
                     for name, suite in locality.items()},
        "registry_ER": retention,                  # over every edit the new patch set holds, old and new
        "registry_wrong": wrong,                   # its edits the final patched model gets wrong
        "failed_ids": metrics["failed_ids"],
        "edits": [{**_outcome_row(o), "final": final.get(o.error_id), "source": r.source,
                   "suspicious": flags[r.id]} for o, r in zip(outcomes, records)],
        "checkpoints": points,
        "editor": config.to_dict(),
        "editor_notes": notes,
        "data": data,
        "device": str(editor.device),
        "host": {"machine": platform.machine(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available()
                 else None, "threads": torch.get_num_threads()},
        "seconds": {"setup": round(setup_seconds, 2), "total": round(time.perf_counter() - start, 2)},
        "neurons": len(patches),
    }
    return patches, report


def _locality_summary(suite, editor, data: dict, earlier: set[str]) -> dict:
    summary = {**data, **suite.summary(editor)}
    summary["changed"] = [{**c, "predates": c["input"] in earlier} for c in summary["changed"]]
    return summary


def _registry_retention(editor) -> tuple[float | None, list[str]]:
    """ER over the edits that own neurons (what a registry version holds), and those now wrong."""
    kept = [error_id for error_id in dict.fromkeys(editor.owners) if error_id in editor.edited]
    verdicts = editor.judge_all([editor.edited[error_id] for error_id in kept])
    wrong = [error_id for error_id, (right, _, _) in zip(kept, verdicts) if not right]
    return (1 - len(wrong) / len(kept) if kept else None), wrong


def _outcome_row(o: EditOutcome) -> dict:
    return {"error_id": o.error_id, "input": o.input, "target": o.target, "status": o.status,
            "before": o.prediction_before, "after": o.prediction_after, "steps": o.steps,
            "seconds": round(o.seconds, 4), "lead": o.lead, "generalization": o.generalization}
