"""A generation model's own greedy answers, put to it in a prompt format (prompt.py): the targets of examples that
have none (a locality row stays right while the patched model still gives the unpatched model's answer)."""
from __future__ import annotations

import torch

from .prompt import prompt_ids


@torch.no_grad()
def greedy_answers(model, tokenizer, texts: list[str], prompt_format: str = "text",
                   max_new_tokens: int = 16) -> list[str]:
    """Each text's greedy answer from `model` as given (pass the unpatched one): up to EOS or max_new_tokens,
    special tokens left out, cut at the first newline, stripped ("" when the model ends at once). One text at a
    time: padding would move the logits of near ties away from the unpadded prompts the editor judges."""
    device = next(model.parameters()).device
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    pad = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    answers = []
    for text in texts:
        ids = torch.tensor([prompt_ids(tokenizer, text, prompt_format)], device=device)          # (1, T)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos, pad_token_id=pad)                # (1, T + new)
        answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        answers.append(answer.strip().split("\n", 1)[0].strip())
    return answers
