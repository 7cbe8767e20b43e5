"""A user's example files: memory sets and locality suites as JSON lines with an `input` and an optional
`target`. Rows without a target take the UNPATCHED model's own answer: a memory needs only inputs, and a
suite without targets measures whether the patched model still answers as the base model did."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from .examples import Example
from .files import sha256
from .records import RecordError, text_problem


@dataclass
class Rows:
    """One file's rows, with where they came from."""

    path: str
    sha256: str
    rows: list[dict]                     # {"input": str, "target": str | None}

    @property
    def has_targets(self) -> bool:
        return bool(self.rows) and all(r["target"] is not None for r in self.rows)

    def describe(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "rows": len(self.rows), "targets": self.has_targets}


def read_rows(path: str | Path, where: str | None = None) -> Rows:
    """Every line of a JSON-lines file as a row, or RecordError naming the first bad line and its problems
    (`where`: the name the error uses for the file, default its path)."""
    path = Path(path)
    where = where or str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such file")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{where}:{number}", None, [f"not valid JSON ({e.msg})"]) from None
            if not isinstance(row, dict):
                raise RecordError(f"{where}:{number}", None, [f"expected a JSON object, got {type(row).__name__}"])
            problems = [p for p in [text_problem("input", row.get("input"))] if p]
            if row.get("target") is not None and (p := text_problem("target", row["target"])):
                problems.append(p)
            if problems:
                raise RecordError(f"{where}:{number}", row.get("id"), problems)
            rows.append({"input": row["input"], "target": row.get("target")})
    if not rows:
        raise RecordError(where, None, ["no rows"])
    return Rows(str(path), sha256(path), rows)


def split_rows(rows: Rows, share: float, seed: int) -> tuple[Rows, Rows]:
    """A seeded split: (the rest, `share` of the rows) — a validation memory carved from a memory file."""
    order = list(range(len(rows.rows)))
    random.Random(seed).shuffle(order)
    n = max(1, round(len(order) * share))
    held = set(order[:n])
    return (Rows(rows.path, rows.sha256, [r for i, r in enumerate(rows.rows) if i not in held]),
            Rows(f"{rows.path} (seeded {share} of it)", rows.sha256, [r for i, r in enumerate(rows.rows) if i in held]))


def examples(editor, rows: Rows, max_new_tokens: int = 16, model_sha256: str | None = None) -> tuple[list[Example], int]:
    """The rows as examples; a missing target is the unpatched model's own answer (its label, or its greedy
    answer; kept on disk by the model's weights and the file's sha256 when `model_sha256` is given: every run
    asks the same). -> (examples, rows left out: a generation model that answers nothing gives no example)."""
    missing = [r["input"] for r in rows.rows if r["target"] is None]
    answers = iter(_cached_answers(editor, missing, max_new_tokens, model_sha256, rows.sha256) if missing else [])
    out, dropped = [], 0
    for r in rows.rows:
        target = r["target"] if r["target"] is not None else next(answers)
        if target:
            out.append(Example(r["input"], target))
        else:
            dropped += 1
    return out, dropped


def _cached_answers(editor, texts: list[str], max_new_tokens: int, model_sha256: str | None,
                    file_sha256: str) -> list[str]:
    if model_sha256 is None:
        return base_answers(editor, texts, max_new_tokens)
    import hashlib

    from .files import cache_dir

    key = json.dumps([model_sha256, file_sha256, editor.task.name, editor.cfg.prompt_format, max_new_tokens, texts])
    path = cache_dir() / "answers" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    if path.exists():
        return json.loads(path.read_text())
    answers = base_answers(editor, texts, max_new_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(answers, ensure_ascii=False))
    tmp.replace(path)
    return answers


def base_answers(editor, texts: list[str], max_new_tokens: int = 16) -> list[str]:
    """The unpatched model's answers: a classifier's label at its judged position, an LM's greedy answer."""
    if editor.task.name == "classification":
        from .patch import PatchNeurons

        cached = editor.cache([Example(t, editor.task.probe_target()) for t in texts])
        base = PatchNeurons.empty(editor.arch.hidden_size, editor.neurons.activation, editor.neurons.keys.dtype,
                                  editor.device)
        return editor.predictions(cached, base)
    from .answers import greedy_answers

    return greedy_answers(editor.model, editor.tokenizer, texts, editor.cfg.prompt_format, max_new_tokens)
