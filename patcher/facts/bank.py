"""The fact bank: real facts from installed packages (countryinfo, periodictable, us), each with several
phrasings. The first template of a relation is the edit/eval prompt; the others are rephrasings that
measure Generality and are never used to train a patch.

Stale or ambiguous entries: countries whose capital entry is not one string (several capitals) or empty
are left out, not guessed; the packages' values are taken as the ground truth otherwise (a stale value,
e.g. Nur-Sultan, is still what the bank asks for: edits teach the bank's answer).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

TEMPLATES = {
    "capital": ["The capital of {s} is", "{s}'s capital city is", "The capital city of {s} is called"],
    "region": ["{s} is a country in the region of", "The country {s} is located in", "{s} lies in the region of"],
    "state_capital": ["The capital of the state of {s} is", "The capital city of the US state {s} is",
                      "{s}'s state capital is"],
    "element_symbol": ["The chemical symbol of {s} is", "The symbol for the element {s} is",
                       "{s} has the chemical symbol"],
    "element_number": ["The atomic number of {s} is", "The element {s} has atomic number",
                       "{s} has the atomic number"],
}


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    answer: str

    @property
    def id(self) -> str:
        return f"{self.relation}:{self.subject}".replace(" ", "_")

    @property
    def prompt(self) -> str:
        return TEMPLATES[self.relation][0].format(s=self.subject)

    @property
    def rephrases(self) -> list[str]:
        return [t.format(s=self.subject) for t in TEMPLATES[self.relation][1:]]


def _countries():
    import countryinfo

    for country in countryinfo.all_countries():
        try:
            yield country.name(), country.capital(), country.region()
        except Exception:            # a few entries lack fields: leave them out rather than guess
            continue


def all_facts() -> list[Fact]:
    """Every fact, in a fixed order."""
    import periodictable
    import us

    facts = []
    for name, capital, region in _countries():
        if isinstance(capital, str) and capital.strip():
            facts.append(Fact("capital", name, capital.strip()))
        if isinstance(region, str) and region.strip():
            facts.append(Fact("region", name, region.strip()))
    for state in us.states.STATES:
        facts.append(Fact("state_capital", state.name, state.capital))
    for element in periodictable.elements:
        if element.number == 0:      # periodictable's neutron placeholder
            continue
        name = element.name.capitalize()
        facts.append(Fact("element_symbol", name, element.symbol))
        facts.append(Fact("element_number", name, str(element.number)))
    return facts


def split_facts(facts: list[Fact], seed: int = 0, fractions=(0.4, 0.1, 0.1)) -> dict[str, list[Fact]]:
    """Splits by fact (so no phrasing of an edited fact is locality data): train (memory, TrainR),
    validation (validation memory), test (TestR) and the rest, the edit stream."""
    shuffled = list(facts)
    random.Random(seed).shuffle(shuffled)
    n = len(shuffled)
    a = int(n * fractions[0])
    b = a + int(n * fractions[1])
    c = b + int(n * fractions[2])
    return {"train": shuffled[:a], "validation": shuffled[a:b], "test": shuffled[b:c], "edit": shuffled[c:]}
