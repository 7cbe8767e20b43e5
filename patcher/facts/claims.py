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
    variant: int = 0     # which false answer (0 for the true claim)

    @property
    def text(self) -> str:
        return f"{self.fact.phrase(self.template)} {self.answer}."

    @property
    def id(self) -> str:
        return f"{self.fact.id}:{'true' if self.label == 'SUPPORTED' else f'false{self.variant}'}"

    @property
    def phrasings(self) -> list[str]:
        """The same claim in the relation's training phrasings (never the rephrases)."""
        return [f"{p} {self.answer}." for p in self.fact.phrasings]

    @property
    def rephrases(self) -> list[str]:
        return [Claim(self.fact, self.answer, self.label, t, self.variant).text
                for t in range(len(TEMPLATES[self.fact.relation])) if t != self.template]


def claims(facts: list[Fact], seed: int = 0, phrasings: str = "prompt", false_per_fact: int = 1) -> list[Claim]:
    """Per fact, its true claim and `false_per_fact` false ones (distinct wrong answers of the same relation,
    drawn with the seed). 'prompt': in the first phrasing only; 'all': in every phrasing."""
    rng = random.Random(seed)
    answers: dict[str, set[str]] = {}
    for f in facts:
        answers.setdefault(f.relation, set()).add(f.answer)
    out = []
    for f in facts:
        wrong = sorted(answers[f.relation] - {f.answer})
        if not wrong:
            continue
        false_answers = rng.sample(wrong, min(false_per_fact, len(wrong)))
        templates = range(len(TEMPLATES[f.relation])) if phrasings == "all" else [0]
        for t in templates:
            out.append(Claim(f, f.answer, "SUPPORTED", t))
            out += [Claim(f, a, "REFUTED", t, i + 1) for i, a in enumerate(false_answers)]
    return out
