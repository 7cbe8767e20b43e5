"""Real mistakes: run a model over facts and log the ones it gets wrong as error records, as a serving
system would (the prediction is the model's own greedy output)."""
from __future__ import annotations

from datetime import datetime, timezone

import torch

from ..editor import Editor
from ..records import ErrorRecord
from ..tasks import Example
from .bank import Fact


def examples(facts: list[Fact], phrasings: str = "prompt") -> list[Example]:
    """'prompt': one example per fact (its edit prompt); 'all': every phrasing of every fact."""
    if phrasings == "prompt":
        return [Example(f.prompt, f.answer) for f in facts]
    return [Example(p, f.answer) for f in facts for p in [f.prompt, *f.rephrases]]


@torch.no_grad()
def greedy_answer(editor: Editor, prompt: str, max_new_tokens: int) -> str:
    tok = editor.tokenizer
    ids = tok(prompt, return_tensors="pt").to(editor.device)
    out = editor.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tok.pad_token_id or tok.eos_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def find_mistakes(editor: Editor, facts: list[Fact], model_name: str, limit: int | None = None) -> list[ErrorRecord]:
    """Error records for the facts whose prompt the (unpatched) model gets wrong, in fact order."""
    cached = editor.cache(examples(facts))
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    records = []
    for fact, c in zip(facts, cached):
        if limit is not None and len(records) >= limit:
            break
        right, _, decoded = editor.judge(c)
        if right:
            continue
        prediction = greedy_answer(editor, fact.prompt, len(c.targets)) if editor.task.name == "generation" \
            else decoded
        records.append(ErrorRecord(id=fact.id, model=model_name, task=editor.task.name, input=fact.prompt,
                                   prediction=prediction or "(empty)", target=fact.answer, logged_at=stamp,
                                   rephrases=fact.rephrases))
    return records
