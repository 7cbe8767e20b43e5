"""Writes the fact bank's seeded splits as JSON lines, with a data card (`patcher facts build`)."""
from __future__ import annotations

import json
from collections import Counter
from importlib.metadata import version
from pathlib import Path

from . import bank

SOURCES = ("countryinfo", "us", "periodictable", "chatterbot-corpus")


def write_splits(out_dir: str | Path, seed: int = 0) -> dict:
    """{split}.jsonl per split plus CARD.md and stats.json; the same seed writes the same bytes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = bank.all_facts()
    splits = bank.split_facts(facts, seed=seed)
    for name, part in splits.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for fact in part:
                fh.write(json.dumps(fact.to_dict(), ensure_ascii=False) + "\n")
    counts = {name: dict(sorted(Counter(f.relation for f in part).items())) for name, part in splits.items()}
    stats = {"seed": seed, "facts": len(facts), "relations": len(bank.RELATIONS),
             "per_split": {name: len(part) for name, part in splits.items()}, "per_relation": counts,
             "sources": {s: version(s) for s in SOURCES}}
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    (out / "CARD.md").write_text(card(stats))
    return stats


def decisions() -> str:
    """The bank's documented decisions on stale and ambiguous entries, as Markdown bullets."""
    text = bank.__doc__.split("Stale or ambiguous entries, decided once here:")[1]
    return "\n".join(("" if line.lstrip().startswith("-") else "  ") + line.strip()
                     for line in text.strip().splitlines())


def card(stats: dict) -> str:
    rows = "\n".join(
        f"| {r} | " + " | ".join(str(stats["per_relation"][s].get(r, 0)) for s in bank.SPLITS) + " | "
        + " / ".join(f"`{t}`" for t in bank.TEMPLATES[r]) + " |"
        for r in bank.RELATIONS)
    sources = ", ".join(f"{k} {v}" for k, v in stats["sources"].items())
    return f"""# Data card: the fact bank

{stats['facts']} real facts over {stats['relations']} relations, from installed PyPI packages ({sources}).
Built by `patcher facts build` with seed {stats['seed']}; the same seed writes the same files.

## Splits (by fact, stratified by relation)
A fact and all its phrasings live in exactly one split, so a rephrasing of an edited fact is never
locality data.

- `train.jsonl` ({stats['per_split']['train']}): the memory a patch must not fire on, and the TrainR subset
- `validation.jsonl` ({stats['per_split']['validation']}): the validation memory that decides early stopping
- `test.jsonl` ({stats['per_split']['test']}): held-out facts for TestR
- `edit.jsonl` ({stats['per_split']['edit']}): the stream a production model is run over; its mistakes are the edits

Each line: `id`, `relation`, `subject`, `answer`, `prompt` (first template), `rephrases` (the others).

| relation | train | validation | test | edit | templates (first: edited and evaluated; others: rephrasings for GR) |
|---|---|---|---|---|---|
{rows}

## Decisions
{decisions()}

## Uses
- `facts-smollm2` answers `prompt` (generation); an answer is right when its greedy continuation equals
  the answer's tokens.
- `factcheck-minilm` labels claims built from these facts: `prompt + " " + answer` is SUPPORTED, the
  same prompt with another fact's answer of the same relation is REFUTED.
"""
