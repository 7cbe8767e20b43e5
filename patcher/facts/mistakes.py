"""Real mistakes: run a production model over facts and log the ones it gets wrong as error records, as a
serving system would (the prediction is the model's own output: greedy for generation)."""
from __future__ import annotations

from datetime import datetime, timezone

import torch

from patcher.engine.editor import Editor
from patcher.engine.examples import Example
from patcher.engine.records import ErrorRecord

from .bank import Fact, all_facts, negative_prompts
from .claims import claims


def examples(facts: list[Fact], phrasings: str = "prompt", training_wordings: int | None = None) -> list[Example]:
    """'prompt': one example per fact (its edit prompt); 'all': every wording of every fact, with the first
    `training_wordings` training phrasings (all when None): a memory must cover every prompt shape an edit
    trains on (EditorConfig.phrasings), or a new neuron learns to tell the shapes apart instead of the facts."""
    if phrasings == "prompt":
        return [Example(f.prompt, f.answer) for f in facts]
    return [Example(p, f.answer) for f in facts for p in [f.prompt, *f.rephrases, *f.phrasings[:training_wordings]]]


def task_examples(task: str, facts: list[Fact], phrasings: str = "prompt", seed: int = 0,
                  training_wordings: int | None = None) -> list[Example]:
    """The examples of a task over facts: answers (generation) or true/false claims (classification), in
    the same wordings as `examples`."""
    if task == "classification":
        out = [Example(c.text, c.label) for c in claims(facts, seed, phrasings)]
        if phrasings == "all":
            out += [Example(p, c.label) for c in claims(facts, seed) for p in c.phrasings[:training_wordings]]
        return out
    return examples(facts, phrasings, training_wordings)


@torch.no_grad()
def greedy_answer(editor: Editor, prompt: str, max_new_tokens: int) -> str:
    tok = editor.tokenizer
    ids = tok(prompt, return_tensors="pt").to(editor.device)
    out = editor.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tok.pad_token_id or tok.eos_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def find_mistakes(editor: Editor, facts: list[Fact], model_name: str, limit: int | None = None,
                  seed: int = 0, negatives: int = 3, bank: list[Fact] | None = None,
                  logged_at: str | None = None) -> list[ErrorRecord]:
    """Error records for what the (unpatched) model gets wrong, in fact order: generation, each fact's
    prompt, with `negatives`: its subject in the `negatives` training templates most like its prompt of each
    other relation `bank` (default: the whole fact bank) has for it, and the same question about its name twins
    (negative_prompts; what a subject-keyed edit must leave alone);
    classification, each fact's true claim and two false ones. Every record is stamped `logged_at` (RFC 3339;
    default: now), so that a pipeline that passes one rebuilds the same stream byte for byte."""
    if logged_at is not None:
        try:
            datetime.fromisoformat(logged_at.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"logged_at is not an RFC 3339 timestamp: {logged_at!r}") from None
    stamp = logged_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
    if editor.task.name == "classification":
        items = [(c.id, c.text, c.label, c.rephrases, c.phrasings, []) for c in claims(facts, seed, false_per_fact=2)]
    else:
        bank = all_facts() if bank is None else bank
        items = [(f.id, f.prompt, f.answer, f.rephrases, f.phrasings,
                  negative_prompts(f, bank, negatives) if negatives else []) for f in facts]
    cached = editor.cache([Example(item[1], item[2]) for item in items])
    records = []
    for (rid, text, target, rephrases, phrasings, siblings), c in zip(items, cached):
        if limit is not None and len(records) >= limit:
            break
        right, _, decoded = editor.judge(c)
        if right:
            continue
        prediction = greedy_answer(editor, text, len(c.targets)) if editor.task.name == "generation" else decoded
        records.append(ErrorRecord(id=rid, model=model_name, task=editor.task.name, input=text,
                                   prediction=prediction or "(empty)", target=target, logged_at=stamp,
                                   rephrases=rephrases, phrasings=phrasings, negatives=siblings))
    return records
