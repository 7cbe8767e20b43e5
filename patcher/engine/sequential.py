"""Sequential editing of a stream of error records: one function per job, shared by the command line, the
benchmarks and the flows. Builds an editor on top of an existing patch set (its edits re-enter the memory and
the retain set), runs the records in order with a progress bar, and turns the result into a patch set."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm import tqdm

from .config import EditorConfig
from .editor import Editor, EditOutcome
from .examples import Example, SharedCache
from .memory import Memory
from .patchset import PatchSet, module_name, now, weights_sha256
from .records import ErrorRecord


def set_threads(config: EditorConfig, task: str) -> int:
    """torch's CPU thread count. On small machines 2 threads made tiny ops (a MiniLM step) 10-40x slower,
    while the big output layer of an LM runs ~2x faster on 2: one thread for classification, all cores
    for generation, unless config.threads says otherwise."""
    n = config.threads or (1 if task == "classification" else (os.cpu_count() or 1))
    torch.set_num_threads(n)
    return n


def build_editor(model, tokenizer, config: EditorConfig, memory: list[Example] = (),
                 val_memory: list[Example] = (), patches: PatchSet | None = None,
                 edits_in_memory: bool = True, shared: SharedCache | None = None) -> Editor:
    """An editor whose memory holds the task's training examples plus the prompts every earlier edit (of
    `patches`) added to it (remember_edits; edits_in_memory False: the editor only reads the patched model).
    `shared`: the unpatched model's examples other editors cached (Task.shared), its memories among them."""
    editor = Editor(model, tokenizer, config,
                    neurons=patches.neurons if patches is not None else None,
                    owners=patches.owners if patches is not None else None)
    editor.task.shared = shared
    set_threads(config, editor.task.name)
    cfg = config
    if memory:
        editor.memory = Memory.from_examples(editor.task, list(memory), cfg.memory_size, cfg.seed)
        for example in memory:
            editor.seen(example.input, example.target)
    if val_memory:
        editor.val_memory = Memory.from_examples(editor.task, list(val_memory), cfg.memory_size, cfg.seed)
    if patches is not None and edits_in_memory and (patches.edits or patches.remembered):
        remember_edits(editor, patches.edits + patches.remembered)
    return editor


def remember_edits(editor: Editor, edits: list[dict], group: int = 64) -> None:
    """Earlier edits (a patch set's entries, its edits and its `remembered` records) re-enter an editor: each
    input but a skipped record's as an edit to keep right (ER), and every prompt the edit added to the memory (its
    `remembered`: the input, its training wordings and negatives; the input alone for older patch sets) back into
    the memory, so new neurons stay silent on them as they would have in one long run. Cached `group` edits at a
    time: a whole group's prompts are the same set on every later run, so the on-disk activation cache serves
    them."""
    for start in range(0, len(edits), group):
        prompts = [(entry, text) for entry in edits[start:start + group]
                   for text in (entry.get("remembered") or [entry["input"]])]
        cached = editor.cache([Example(text, entry["target"]) for entry, text in prompts])
        for (entry, text), c in zip(prompts, cached):
            if text == entry["input"]:
                editor.seen(text, entry["target"])
                if entry.get("status") != "skipped":
                    editor.edited.setdefault(entry["error_id"], c)
            if editor.memory is None:
                editor.memory = Memory.empty(c)
            editor.remember(c, text, entry["error_id"])


def refused(record: ErrorRecord, reason: str) -> EditOutcome:
    """The outcome of a record the editor could not take: failed, with the reason a reviewer reads."""
    return EditOutcome(record.id, record.input, "failed", "", "", record.target, reason=reason)


def run_stream(editor: Editor, records: list[ErrorRecord], progress: bool = True, path: str = "fast",
               on_outcome=None, hold=None) -> list[EditOutcome]:
    """Applies the records in order as sequential edits. The bar shows edits done and the running SR. A record
    the editor cannot take (another task, an error while editing it) fails alone with the reason, and the rest go
    on (they go to review, the batch is never blocked); running out of memory is the machine's failure, raised.
    `hold(record)`: a reason not to edit a record but leave it to a person (failed, "held for review: ...")."""
    outcomes: list[EditOutcome] = []
    bar = tqdm(records, desc="editing", unit="edit", disable=not progress, dynamic_ncols=True)
    for record in bar:
        held = hold(record) if hold is not None else None
        if record.task != editor.task.name:
            outcome = refused(record, f"task {record.task!r}, but the model does {editor.task.name}")
        elif held:
            outcome = refused(record, f"held for review: {held}")
        else:
            try:
                outcome = editor.edit(record.id, record.input, record.target, record.rephrases, record.phrasings,
                                      path=path, negatives=record.negatives)
            except (MemoryError, torch.OutOfMemoryError):
                raise
            except Exception as error:  # noqa: BLE001 (one record's failure must not block the others)
                outcome = refused(record, f"editing raised {type(error).__name__}: {error}")
        outcomes.append(outcome)
        attempted = [o for o in outcomes if o.status != "skipped"]
        if attempted:
            bar.set_postfix(SR=f"{sum(o.succeeded for o in attempted) / len(attempted):.3f}",
                            failed=sum(o.status == "failed" for o in attempted),
                            skipped=len(outcomes) - len(attempted), neurons=len(editor.neurons))
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes


def to_patchset(editor: Editor, outcomes: list[EditOutcome], base_name: str, model_dir: str | Path | None,
                earlier: PatchSet | None = None) -> PatchSet:
    """The editor's neurons as a patch set, with an entry for each kept edit (earlier ones first)."""
    owners = set(editor.owners)
    edits = [e for e in (earlier.edits if earlier else []) if e["error_id"] in owners]
    remembered = list(earlier.remembered) if earlier else []
    created = now()
    for o in outcomes:
        texts = editor.remembered.get(o.error_id, [o.input])
        if o.error_id in owners:
            edits.append({"error_id": o.error_id, "input": o.input, "target": o.target, "status": o.status,
                          "prediction_before": o.prediction_before, "prediction_after": o.prediction_after,
                          "neurons": o.neurons, "steps": o.steps, "seconds": round(o.seconds, 4),
                          "lead": o.lead, "generalization": o.generalization, "created_at": created,
                          "remembered": texts})
        elif o.error_id in editor.remembered:           # skipped, or failed and not kept: its prompts stay remembered
            remembered.append({"error_id": o.error_id, "input": o.input, "target": o.target, "status": o.status,
                               "created_at": created, "remembered": texts})
    base = {"name": base_name, "sha256": weights_sha256(model_dir) if model_dir else None}
    if earlier is not None:
        base = earlier.base_model
    return PatchSet(editor.neurons, list(editor.owners), base, editor.arch.name,
                    module_name(editor.model, editor.arch.ffn_out), edits, editor.cfg.to_dict(),
                    remembered=remembered)
