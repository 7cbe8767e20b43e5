"""Claims for fact checking: each fact's true claim (SUPPORTED), and a false one that swaps the answer for
another fact's answer of the same relation (REFUTED), in any of the relation's phrasings."""
from __future__ import annotations

import random
from dataclasses import dataclass

from .bank import TEMPLATES, Fact

LABELS = ("SUPPORTED", "REFUTED")


@dataclass(frozen=True)
class Claim:
    fact: Fact
    answer: str          # the answer the claim states (the fact's own, or a wrong one)
    label: str
    template: int = 0

    @property
    def text(self) -> str:
        return f"{self.fact.phrase(self.template)} {self.answer}."

    @property
    def id(self) -> str:
        return f"{self.fact.id}:{'true' if self.label == 'SUPPORTED' else 'false'}"

    @property
    def rephrases(self) -> list[str]:
        return [Claim(self.fact, self.answer, self.label, t).text
                for t in range(len(TEMPLATES[self.fact.relation])) if t != self.template]


def claims(facts: list[Fact], seed: int = 0, phrasings: str = "prompt") -> list[Claim]:
    """A true and a false claim per fact (false answers drawn with the seed). 'prompt': in the first
    phrasing only; 'all': in every phrasing."""
    rng = random.Random(seed)
    answers: dict[str, set[str]] = {}
    for f in facts:
        answers.setdefault(f.relation, set()).add(f.answer)
    out = []
    for f in facts:
        wrong = sorted(answers[f.relation] - {f.answer})
        if not wrong:
            continue
        false_answer = rng.choice(wrong)
        templates = range(len(TEMPLATES[f.relation])) if phrasings == "all" else [0]
        for t in templates:
            out += [Claim(f, f.answer, "SUPPORTED", t), Claim(f, false_answer, "REFUTED", t)]
    return out
