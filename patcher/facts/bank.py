"""The fact bank: real facts from installed packages, each with several phrasings.

Sources: countryinfo (capital, region, currency code, demonym), us (state capitals), periodictable
(symbol, atomic number) and chatterbot-corpus (trivia question/answer pairs). The first template of a
relation is the prompt that is edited and evaluated; the others are rephrasings that measure Generality
and are never used to train a patch. TRAINING_TEMPLATES are other wordings an edit may train on.

Stale or ambiguous entries, decided once here:
  - a country whose capital is not a single name (several capitals, or none) has no capital fact;
  - a country with several currencies (or none) has no currency fact; neither has one without a demonym;
  - otherwise the packages' values are the ground truth, stale ones included (countryinfo still says
    Nur-Sultan for Kazakhstan): an edit teaches the bank's answer, which is what a reviewer sees;
  - trivia answers lose a trailing period, and pairs whose answer is longer than 6 words or whose
    question is longer than 200 characters are left out (they are explanations, not facts).
"""
from __future__ import annotations

import difflib
import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path

TEMPLATES = {
    "capital": ["The capital of {s} is", "{s}'s capital city is", "The capital city of {s} is called"],
    "region": ["{s} is a country in the region of", "The country {s} is located in", "{s} lies in the region of"],
    "currency_code": ["The ISO code of the currency of {s} is", "The currency used in {s} has the code",
                      "In {s}, prices are quoted in the currency with code"],
    "demonym": ["A person from {s} is called", "People from {s} are called", "Someone born in {s} is described as"],
    "state_capital": ["The capital of the state of {s} is", "The capital city of the US state {s} is",
                      "{s}'s state capital is"],
    "element_symbol": ["The chemical symbol of {s} is", "The symbol for the element {s} is",
                       "{s} has the chemical symbol"],
    "element_number": ["The atomic number of {s} is", "The element {s} has atomic number",
                       "{s} has the atomic number"],
    "trivia": ["Question: {s} Answer:", "Q: {s} A:", "{s} The answer is"],
}
RELATIONS = tuple(TEMPLATES)
# Training phrasings: other wordings an edit may train on (EditorConfig.phrasings), disjoint from TEMPLATES so
# that the rephrasings measuring Generality are never trained on. Each ends where the answer starts.
TRAINING_TEMPLATES = {
    "capital": ["{s} has its capital in", "The seat of government of {s} is in", "What is the capital of {s}? It is",
                "{s}'s seat of government is located in", "The government of {s} sits in the city of",
                "Name the capital of {s}:", "Capital of {s}:", "{s} chose as its capital the city of",
                "The city that serves as the capital of {s} is", "In {s}, the national government is based in",
                "Which city is the capital of {s}? The answer is", "The national capital of {s} is",
                "Tourists visiting the capital of {s} arrive in", "{s} is governed from its capital,",
                "Country: {s}. Capital:"],
    "region": ["{s} belongs to the region of", "On a world map, {s} is found in", "Which region is {s} in? It is in",
               "{s} is part of the region", "Geographically, {s} is in", "Region of {s}:",
               "{s} can be found in the region of", "{s} is situated in", "Country: {s}. Region:",
               "Which part of the world is {s} in? It is in", "{s} is a nation located in",
               "The world region that includes {s} is", "If you travel to {s}, you will be in",
               "{s} is geographically part of", "Where is {s}? It is in"],
    "currency_code": ["The currency code for {s} is", "Money in {s} uses the currency code",
                      "What is the currency code of {s}? It is", "The three-letter currency code of {s} is",
                      "Currency code of {s}:", "In {s}, the money's ISO code is",
                      "Bank notes in {s} carry the currency code", "Country: {s}. Currency code:",
                      "The official currency of {s} has the ISO 4217 code",
                      "Exchange offices list the money of {s} as", "What is the ISO currency code for {s}? It is",
                      "{s} uses money with the code", "Payment in {s} is made in the currency coded",
                      "Forex traders write the currency of {s} as", "{s}'s currency code is"],
    "demonym": ["A citizen of {s} is called", "The people of {s} are known as",
                "What is a person from {s} called? They are called", "Citizens of {s} are called",
                "A native of {s} is called", "Demonym for {s}:", "The inhabitants of {s} are called",
                "Country: {s}. Demonym:", "What do you call someone from {s}? They are",
                "{s} is home to people known as", "A resident of {s} is called",
                "The nationality of people from {s} is", "People who live in {s} are called",
                "The people of {s} call themselves", "The word for a person from {s} is"],
    "state_capital": ["The state capital of {s} is", "{s} has its state capital in",
                      "What is the capital of the US state of {s}? It is",
                      "The seat of government of the state of {s} is", "State capital of {s}:",
                      "The capital of the US state of {s} is called", "The state government of {s} sits in",
                      "State: {s}. Capital:", "Which city is the capital of {s}? The answer is",
                      "The capital of the American state of {s} is", "The state legislature of {s} meets in",
                      "The governor of {s} works in the capital,", "In the US state of {s}, the capital is",
                      "Visitors to the state capitol of {s} travel to", "{s} (US state) has its capital in"],
    "element_symbol": ["The element {s} is written with the symbol", "In the periodic table, {s} has the symbol",
                       "What is the chemical symbol for {s}? It is", "Symbol of {s}:",
                       "The periodic table lists {s} under the symbol", "Chemists write {s} as",
                       "The one- or two-letter symbol of {s} is", "Element: {s}. Symbol:",
                       "The symbol used for {s} is", "On the periodic table, {s} appears as",
                       "The abbreviation of the element {s} is", "What symbol stands for {s}? It is",
                       "In chemical formulas, {s} is written as", "{s}'s element symbol is",
                       "The atomic symbol of {s} is"],
    "element_number": ["{s} is the element with atomic number", "In the periodic table, {s} has atomic number",
                       "What is the atomic number of {s}? It is", "Atomic number of {s}:",
                       "The number of protons in an atom of {s} is", "{s} sits in the periodic table at number",
                       "The proton count of {s} is", "Element: {s}. Atomic number:",
                       "An atom of {s} has a number of protons equal to",
                       "{s} is listed in the periodic table as element",
                       "What is {s}'s atomic number? It is", "{s}'s atomic number is",
                       "On the periodic table, {s} is element number", "The nucleus of {s} holds this many protons:",
                       "{s} has the proton number"],
    "trivia": ["Trivia question: {s} Answer:", "Quiz: {s} The correct answer is", "{s} Answer:",
               "Answer this question: {s}", "{s} Reply:", "Q. {s} Ans:", "Question - {s} Answer -",
               "Quiz question: {s} Answer:", "{s} Correct answer:", "Here is a trivia question. {s} The answer:",
               "Trivia: {s} Solution:", "{s} Response:", "Test question: {s} Answer:", "Please answer: {s} Answer:",
               "{s} Here is the answer:"],
}


def slug(text: str, width: int = 48) -> str:
    """A safe, unique id part: letters, digits and _ from the text, plus a short hash of the full text."""
    base = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:width] or "x"
    return f"{base}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    answer: str

    @property
    def id(self) -> str:
        return f"{self.relation}:{slug(self.subject)}"

    def phrase(self, template: int = 0) -> str:
        return TEMPLATES[self.relation][template].format(s=self.subject)

    @property
    def phrasings(self) -> list[str]:
        """Training phrasings (TRAINING_TEMPLATES): never the rephrases."""
        return [t.format(s=self.subject) for t in TRAINING_TEMPLATES[self.relation]]

    @property
    def prompt(self) -> str:
        return self.phrase(0)

    @property
    def rephrases(self) -> list[str]:
        return [self.phrase(i) for i in range(1, len(TEMPLATES[self.relation]))]

    def to_dict(self) -> dict:
        return {"id": self.id, "relation": self.relation, "subject": self.subject, "answer": self.answer,
                "prompt": self.prompt, "rephrases": self.rephrases}


def _country_facts():
    import countryinfo

    for country in countryinfo.all_countries():
        try:
            name, capital, region = country.name(), country.capital(), country.region()
            currencies, demonym = country.currencies(), country.demonym()
        except Exception:            # a few entries lack fields: leave them out rather than guess
            continue
        if not name:
            continue
        if isinstance(capital, str) and capital.strip():
            yield Fact("capital", name, capital.strip())
        if isinstance(region, str) and region.strip():
            yield Fact("region", name, region.strip())
        if isinstance(currencies, list) and len(currencies) == 1:
            yield Fact("currency_code", name, currencies[0])
        if isinstance(demonym, str) and demonym.strip():
            yield Fact("demonym", name, demonym.strip())


def _trivia_facts():
    import yaml

    from patcher.models.base import package_dir

    path = package_dir("chatterbot_corpus") / "data" / "english" / "trivia.yml"
    for pair in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
        if len(pair) != 2:
            continue
        question, answer = (str(x).strip() for x in pair)
        answer = answer.rstrip(".").strip()
        if answer and len(answer.split()) <= 6 and len(question) <= 200:
            yield Fact("trivia", question, answer)


def all_facts() -> list[Fact]:
    """Every fact, in a fixed order, without duplicates (same relation and subject: the first is kept)."""
    import periodictable
    import us

    facts = list(_country_facts())
    facts += [Fact("state_capital", s.name, s.capital) for s in us.states.STATES]
    for element in periodictable.elements:
        if element.number == 0:      # periodictable's neutron placeholder
            continue
        facts.append(Fact("element_symbol", element.name.capitalize(), element.symbol))
        facts.append(Fact("element_number", element.name.capitalize(), str(element.number)))
    facts += list(_trivia_facts())
    seen, unique = set(), []
    for f in facts:
        if f.id not in seen:
            seen.add(f.id)
            unique.append(f)
    return unique


SPLITS = ("train", "validation", "test", "edit")


def closest_templates(fact: Fact, relation: str, n: int) -> list[str]:
    """The `n` training templates of `relation` most like the fact's prompt template (difflib's ratio; ties in
    template order): the wordings a neuron trained on the prompt is likeliest to fire on. Templates only."""
    prompt = TEMPLATES[fact.relation][0].lower()
    ratio = lambda t: difflib.SequenceMatcher(None, prompt, t.lower()).ratio()       # noqa: E731
    return sorted(TRAINING_TEMPLATES[relation], key=ratio, reverse=True)[:n]


def sibling_prompts(fact: Fact, facts: list[Fact], per_relation: int = 3) -> list[str]:
    """Other questions about the fact's subject: the subject in the `per_relation` training templates of each
    other relation the bank has for it that are most like the fact's prompt (closest_templates: "The capital of
    {s} is" gets "The capital of the American state of {s} is" among the state capital's first 3, which the
    first 3 in order missed; templates only, no other fact's answer is read). An edit's `negatives`
    (ErrorRecord): a subject-keyed neuron must not fire on them."""
    relations = sorted({f.relation for f in facts if f.subject == fact.subject} - {fact.relation})
    return [t.format(s=fact.subject) for r in relations for t in closest_templates(fact, r, per_relation)]


def twin_prompts(fact: Fact, facts: list[Fact], per_relation: int = 3) -> list[str]:
    """The same question about the subjects whose name holds the fact's subject as whole words, or is held in it
    (Sudan / South Sudan, Virginia / West Virginia, Guinea / Equatorial Guinea), in the `per_relation` training
    templates of the relation most like its prompt (closest_templates). A neuron keyed on "Sudan" fires on
    "South Sudan" unless told otherwise: such twins moved on every seed of SmolLM2's stream."""
    def holds(name: str, part: str) -> bool:
        return name != part and re.search(r"(?<!\w)" + re.escape(part) + r"(?!\w)", name) is not None

    twins = sorted({f.subject for f in facts if f.relation == fact.relation
                    and (holds(f.subject, fact.subject) or holds(fact.subject, f.subject))})
    return [t.format(s=s) for s in twins for t in closest_templates(fact, fact.relation, per_relation)]


def negative_prompts(fact: Fact, facts: list[Fact], per_relation: int = 3) -> list[str]:
    """An edit's `negatives` (ErrorRecord), the prompts its neurons must not fire on: the subject's other
    questions (sibling_prompts) and the same question about name twins (twin_prompts), but its own wordings
    (relations share some: "Which city is the capital of {s}? The answer is")."""
    own = {fact.prompt, *fact.phrasings}
    return [p for p in sibling_prompts(fact, facts, per_relation) + twin_prompts(fact, facts, per_relation)
            if p not in own]


def split_facts(facts: list[Fact], seed: int = 0, fractions=(0.4, 0.1, 0.1)) -> dict[str, list[Fact]]:
    """Splits by fact (so no phrasing of an edited fact is locality data), stratified by relation:
    train (memory, TrainR), validation (validation memory), test (TestR), the rest the edit stream."""
    out = {name: [] for name in SPLITS}
    rng = random.Random(seed)
    for relation in RELATIONS:
        group = [f for f in facts if f.relation == relation]
        rng.shuffle(group)
        n = len(group)
        a = round(n * fractions[0])
        b = a + round(n * fractions[1])
        c = b + round(n * fractions[2])
        for name, part in zip(SPLITS, (group[:a], group[a:b], group[b:c], group[c:])):
            out[name] += part
    for name in SPLITS:                 # interleave relations, so any prefix of a split mixes them
        rng.shuffle(out[name])
    return out


def load_split(path: str | Path) -> list[Fact]:
    """Facts from a split file written by `patcher facts build`."""
    import json

    with open(path, encoding="utf-8") as fh:
        return [Fact(r["relation"], r["subject"], r["answer"]) for r in map(json.loads, fh) if r]
