"""The fact bank as the editor's example sets: its memory, validation memory and the TrainR / TestR locality
sets, and an editor built on them (the production models' pipeline and benchmarks use these)."""
from __future__ import annotations

import json
from pathlib import Path

from patcher.engine.arch import adapter_for
from patcher.engine.config import EditorConfig
from patcher.engine.examples import Example
from patcher.engine.metrics import LocalitySet
from patcher.engine.patchset import PatchSet
from patcher.engine.sequential import build_editor

from .mistakes import task_examples


def memory_facts(split: dict, train_locality_share: float = 0.2) -> list:
    """The train-split facts the memory is built from: all but the first `train_locality_share` (the TrainR
    facts, kept apart from the memory)."""
    return split["train"][int(len(split["train"]) * train_locality_share):]


def fact_examples(task: str, split: dict, seed: int = 0, train_locality_share: float = 0.2,
                  training_wordings: int | None = None) -> dict[str, list[Example]]:
    """A fact-bank split as the editor's example sets: `memory` (the train split in the edit prompt's wording,
    the held-out ones and the first `training_wordings` training phrasings (all when None: give the editor's
    `phrasings`), except its first `train_locality_share`), `validation` (validation memory, the same
    wordings), `train` (those first facts: the TrainR set, kept apart from the memory) and `test` (TestR)."""
    n = int(len(split["train"]) * train_locality_share)
    memory = memory_facts(split, train_locality_share)
    return {"memory": task_examples(task, memory, "all", seed, training_wordings),
            "validation": task_examples(task, split["validation"], "all", seed, training_wordings),
            "train": task_examples(task, split["train"][:n], "prompt", seed),
            "test": task_examples(task, split["test"], "prompt", seed)}


def editor_on_facts(model, tokenizer, config: EditorConfig, split: dict, train_locality_share: float = 0.2,
                    patches: PatchSet | None = None):
    """An editor for a fact-bank split (fact_examples), on top of an existing patch set if given. Locality
    sets remember the UNPATCHED model's predictions. -> (editor, train LocalitySet, test LocalitySet)."""
    task = "classification" if adapter_for(model).task == "classification" else "generation"
    sets = fact_examples(task, split, config.seed, train_locality_share, config.phrasings)
    editor = build_editor(model, tokenizer, config, sets["memory"], sets["validation"], patches)
    return editor, LocalitySet.build(editor, "train", sets["train"]), LocalitySet.build(editor, "test", sets["test"])


def write_sets(facts_dir: str | Path, task: str, out_dir: str | Path, wordings: int | None = None, seed: int = 0,
               train_locality_share: float = 0.2) -> dict[str, int]:
    """A catalog entry's data from the fact bank's split files (`patcher facts build`): memory.jsonl and
    validation.jsonl (every wording an edit trains on: `wordings` training phrasings), and the locality suites
    train.jsonl (TrainR: train-split facts kept out of the memory) and test.jsonl (TestR). -> rows per file."""
    from .bank import SPLITS, load_split

    split = {name: load_split(Path(facts_dir) / f"{name}.jsonl") for name in SPLITS}
    sets = fact_examples(task, split, seed, train_locality_share, wordings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, examples in sets.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps({"input": e.input, "target": e.target},
                                                              ensure_ascii=False) + "\n" for e in examples))
    return {name: len(examples) for name, examples in sets.items()}
