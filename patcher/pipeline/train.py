"""The pipeline's train step as a library function: sequential patching of accepted error records on top of
the current patch set of a production model, with the report the gate and the reviewer read.

The memory and the locality sets come from the fact bank split the production model was built on (train
split: memory and TrainR; validation: early stopping; test: TestR). The report holds the five metrics, ER
over every edit of the resulting patch set, each edit's outputs before, right after and at the end, the
locality examples whose prediction changed, and the metrics at checkpoints along the stream (the plot).
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from patcher.engine.config import EditorConfig, from_section
from patcher.engine.editor import EditOutcome
from patcher.engine.patchset import PatchSet
from patcher.engine.records import ErrorRecord


@dataclass
class TrainSettings:
    """params.yaml `train`."""

    seed: int = 0                       # the fact bank split seed (memory, locality sets): the models' build seed
    checkpoints: int = 8                # how many points of the metrics-over-the-stream plot
    editor: dict = field(default_factory=dict)    # EditorConfig overrides (see `patcher config`); device: auto
    models: dict = field(default_factory=dict)    # per model name: EditorConfig overrides on top of `editor`

    @classmethod
    def from_dict(cls, data: dict | None) -> "TrainSettings":
        settings = from_section(cls, data)
        for name, overrides in {"": settings.editor, **settings.models}.items():
            unknown = set(overrides or {}) - set(EditorConfig.help())
            if unknown:
                raise ValueError(f"train.{'models.' + name if name else 'editor'}: unknown editor settings "
                                 f"{', '.join(sorted(unknown))} (see `patcher config`)")
        return settings

    def editor_overrides(self, model_name: str) -> dict:
        """The model's EditorConfig overrides: `editor`, then `models[model_name]`."""
        return {**self.editor, **(self.models.get(model_name) or {})}

    def editor_config(self, model_name: str, base: PatchSet | None = None) -> tuple[EditorConfig, list[str]]:
        """-> (the model's editor settings (device auto: CUDA where there is one), notes). An existing patch set
        keeps one kind of neuron: where its subject layer or activation differs from the settings', its own wins
        (a patch set changes kind only when it starts over: an empty registry, a new model)."""
        config = EditorConfig.from_dict({"device": "auto", **self.editor_overrides(model_name)})
        notes = []
        if base is None or not len(base.neurons):
            return config, notes
        if base.neurons.subject_layer != config.subject_layer:
            notes.append(f"subject_layer {base.neurons.subject_layer} (the patch set's own; the settings ask for "
                         f"{config.subject_layer})")
            config.subject_layer = base.neurons.subject_layer
        if config.activation not in ("auto", base.neurons.activation):
            notes.append(f"activation {base.neurons.activation} (the patch set's own; the settings ask for "
                         f"{config.activation})")
            config.activation = base.neurons.activation
        return config, notes


def checkpoint_marks(n: int, points: int) -> set[int]:
    """About `points` edit counts spread over a stream of n, always including the last."""
    if n <= 0:
        return set()
    return {max(1, round(n * i / points)) for i in range(1, points + 1)} | {n}


def train_patches(model_name: str, model_dir: str | Path, records: list[ErrorRecord], base: PatchSet | None,
                  settings: TrainSettings | None = None, progress: bool = False) -> tuple[PatchSet, dict]:
    """-> (the patch set: base's edits plus the new ones that succeeded, the train report)."""
    import torch

    from patcher.engine.metrics import paper_metrics, summarize
    from patcher.engine.sequential import run_stream, to_patchset
    from patcher.facts.bank import all_facts, split_facts
    from patcher.facts.sets import editor_on_facts
    from patcher.models.base import load_model

    settings = settings or TrainSettings()
    start = time.perf_counter()
    model, tokenizer = load_model(model_dir)
    config, notes = settings.editor_config(model_name, base)
    editor, train, test = editor_on_facts(model, tokenizer, config, split_facts(all_facts(), seed=settings.seed),
                                          patches=base)
    if base is not None:
        base.check_base(editor.arch, model_dir)
    setup_seconds = time.perf_counter() - start

    marks, points, done = checkpoint_marks(len(records), settings.checkpoints), [], []

    def measure(outcome: EditOutcome) -> None:
        done.append(outcome)
        if len(done) in marks:
            points.append({"records": len(done), "edits": sum(o.status != "skipped" for o in done),
                           **paper_metrics(editor, done, train, test, er=_registry_retention(editor)[0]),
                           "neurons": len(editor.neurons)})

    outcomes = run_stream(editor, records, progress=progress, on_outcome=measure)
    patches = to_patchset(editor, outcomes, model_name, model_dir, base)
    metrics = summarize(editor, outcomes, train, test)
    retention, wrong = _registry_retention(editor)
    final = dict(zip(editor.edited, editor.predictions(list(editor.edited.values()))))
    report = {
        "model": model_name,
        "base_edits": len(base.edits) if base is not None else 0,
        "records": len(records),
        "metrics": {k: v for k, v in metrics.items() if not isinstance(v, list)},
        "registry_ER": retention,                  # over every edit the new patch set holds, old and new
        "registry_wrong": wrong,                   # its edits the final patched model gets wrong
        "failed_ids": metrics["failed_ids"],
        "edits": [{**_outcome_row(o), "final": final.get(o.error_id)} for o in outcomes],
        "train_changed": metrics.get("train_changed", []),
        "test_changed": metrics.get("test_changed", []),
        "checkpoints": points,
        "editor": config.to_dict(),
        "editor_notes": notes,
        "device": str(editor.device),
        "host": {"machine": platform.machine(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available()
                 else None, "threads": torch.get_num_threads()},
        "seconds": {"setup": round(setup_seconds, 2), "total": round(time.perf_counter() - start, 2)},
        "neurons": len(patches),
    }
    return patches, report


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
