"""The five metrics of sequential model editing (Huang et al., ICLR 2023), plus cost and failure counts.

  SR      share of attempted edits whose own input is right right after that edit
  GR      accuracy on each edit's rephrases right after that edit (mean over edits that have rephrases)
  ER      accuracy of the FINAL patched model on all past edit inputs (does it forget?)
  TrainR  final accuracy on a fixed training subset / the ORIGINAL model's accuracy on it
  TestR   the same on held-out test data
Edits skipped because the model was already right are not attempted edits. Locality sets also report the
share of examples whose prediction did not change at all (`*_unchanged`), a stricter view than the ratio.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from .editor import Editor, EditOutcome
from .examples import Cached, Example
from .patch import PatchNeurons


@dataclass
class LocalitySet:
    """Examples cached once, with the original (unpatched) model's accuracy and predictions."""

    name: str
    examples: list[Example]
    cached: list[Cached]
    accuracy_before: float
    predictions_before: list[str]
    has_targets: bool = True           # False: the targets are the base model's own answers (unchanged only)

    @classmethod
    def build(cls, editor: Editor, name: str, examples: list[Example], has_targets: bool = True) -> "LocalitySet":
        cached = editor.cache(examples)
        base = PatchNeurons.empty(editor.arch.hidden_size, editor.neurons.activation,
                                  editor.neurons.keys.dtype, editor.device)
        return cls(name, examples, cached, editor.accuracy(cached, base), editor.predictions(cached, base),
                   has_targets)

    def ratio(self, editor: Editor) -> float | None:
        """Accuracy now / the original model's (None for a suite without targets of its own)."""
        if not self.cached or not self.has_targets:
            return None
        after = editor.accuracy(self.cached)
        return after / self.accuracy_before if self.accuracy_before else None

    def unchanged(self, editor: Editor) -> float | None:
        """Share of the examples whose prediction is still the original model's."""
        if not self.cached:
            return None
        return sum(a == b for a, b in zip(editor.predictions(self.cached), self.predictions_before)) / len(self.cached)

    def summary(self, editor: Editor, changed_limit: int = 50) -> dict:
        """retain (the ratio), unchanged, accuracy before, and the examples that changed (at most changed_limit)."""
        changed = self.changed(editor) if self.cached else []
        return {"examples": len(self.cached), "retain": self.ratio(editor),
                "unchanged": 1 - len(changed) / len(self.cached) if self.cached else None,
                "accuracy_before": self.accuracy_before if self.has_targets else None,
                "changed": changed[:changed_limit]}

    def moved(self, editor: Editor) -> list[tuple[int, str]]:
        """(index, prediction now) of the examples whose prediction differs from the original model's."""
        after = editor.predictions(self.cached)
        return [(i, a) for i, (a, b) in enumerate(zip(after, self.predictions_before)) if a != b]

    def changed(self, editor: Editor) -> list[dict]:
        """Examples whose prediction differs from the original model's, each with the edits whose neurons
        fire on it (`fired_by`): who moved it."""
        return [{"input": self.examples[i].input, "target": self.examples[i].target, "before": self.predictions_before[i],
                 "after": a, "fired_by": firing_edits(editor, self.cached[i])} for i, a in self.moved(editor)]


def firing_edits(editor: Editor, c: Cached, limit: int = 3) -> list[dict]:
    """The edits whose neurons fire on a cached input (pre-activation > 0 at a judged position), strongest
    first, at most `limit`; none for an editor without neurons (fine-tuning)."""
    if not len(editor.neurons):
        return []
    peak = editor.neurons.preactivation(c.q, c.z, c.at).amax(0)               # (P, N) -> (N,)
    strongest: dict[str, float] = {}
    for owner, a in zip(editor.owners, peak.tolist()):
        if a > max(strongest.get(owner, 0.0), 0.0):
            strongest[owner] = a
    ranked = sorted(strongest.items(), key=lambda item: -item[1])[:limit]
    return [{"error_id": owner, "preactivation": round(a, 3)} for owner, a in ranked]


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def paper_metrics(editor: Editor, outcomes: list[EditOutcome], train: LocalitySet | None = None,
                  test: LocalitySet | None = None, er: float | None = None) -> dict:
    """The five metrics after `outcomes`: SR and GR over the attempted edits, ER (unless given: the pipeline
    counts its registry's edits too), TrainR and TestR of the editor as it is now; null where there is no data."""
    attempted = [o for o in outcomes if o.status != "skipped"]
    return {"SR": _mean([1.0 if o.succeeded else 0.0 for o in attempted]),
            "GR": _mean([o.generalization for o in attempted]),
            "ER": editor.accuracy(list(editor.edited.values())) if er is None else er,
            "TrainR": train.ratio(editor) if train else None,
            "TestR": test.ratio(editor) if test else None}


def summarize(editor: Editor, outcomes: list[EditOutcome], train: LocalitySet | None = None,
              test: LocalitySet | None = None, changed_limit: int = 50) -> dict:
    """The metrics JSON: SR, GR, ER, TrainR, TestR (null where no data) and counts."""
    attempted = [o for o in outcomes if o.status != "skipped"]
    edited_seconds = [o.seconds for o in attempted]
    result = {
        **paper_metrics(editor, outcomes, train, test),
        "n_records": len(outcomes),
        "n_edits": len(attempted),
        "n_failed": sum(o.status == "failed" for o in attempted),
        "n_skipped_already_correct": sum(o.status == "skipped" for o in outcomes),
        "n_neurons": len(editor.neurons),
        "neurons_added": sum(o.neurons for o in outcomes),
        "edit_seconds_median": statistics.median(edited_seconds) if edited_seconds else None,
        "edit_steps_median": statistics.median([o.steps for o in attempted]) if attempted else None,
        "failed_ids": [o.error_id for o in attempted if o.status == "failed"],
        "failed_reasons": {o.error_id: o.reason for o in attempted if o.status == "failed"},
    }
    for name, loc in (("train", train), ("test", test)):
        if loc is not None and loc.cached:
            changed = loc.changed(editor)
            result[f"{name}_unchanged"] = 1 - len(changed) / len(loc.cached)
            result[f"{name}_accuracy_before"] = loc.accuracy_before
            result[f"{name}_changed"] = changed[:changed_limit]
    return result
