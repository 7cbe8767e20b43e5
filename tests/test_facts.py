"""The fact bank: enough real facts over enough relations, phrasings for every relation, splits by fact
that never share a fact, deterministic files, safe ids, and claims for fact checking."""
import json
from collections import Counter

from patcher.engine.records import ID_PATTERN, parse_record
from patcher.facts.bank import (
    RELATIONS,
    TEMPLATES,
    TRAINING_TEMPLATES,
    all_facts,
    closest_templates,
    load_split,
    negative_prompts,
    sibling_prompts,
    split_facts,
    twin_prompts,
)
from patcher.facts.build import write_splits
from patcher.facts.claims import claims


def test_counts_relations_and_phrasings():
    facts = all_facts()
    per_relation = Counter(f.relation for f in facts)
    assert len(facts) >= 1000 and len(per_relation) >= 6
    assert set(per_relation) == set(RELATIONS) and min(per_relation.values()) >= 50
    assert all(len(TEMPLATES[r]) >= 3 for r in RELATIONS)
    assert all(len(f.rephrases) >= 2 and f.prompt not in f.rephrases for f in facts)
    # training phrasings never include a phrasing that measures Generality (or the edited prompt)
    assert all(len(f.phrasings) == 15 and not set(f.phrasings) & {f.prompt, *f.rephrases} for f in facts)
    assert len({f.id for f in facts}) == len(facts) and all(ID_PATTERN.match(f.id) for f in facts)
    # every phrasing passes the error-record text checks (no control characters, bounded)
    record = {"id": "x", "model": "m", "task": "generation", "prediction": "p", "logged_at": "2026-11-24T00:00:00Z"}
    for f in facts:
        parse_record({**record, "input": f.prompt, "target": f.answer, "rephrases": f.rephrases,
                      "phrasings": f.phrasings})


def test_known_facts_are_there():
    facts = {(f.relation, f.subject): f.answer for f in all_facts()}
    assert facts[("capital", "France")] == "Paris"
    assert facts[("element_symbol", "Iron")] == "Fe" and facts[("element_number", "Iron")] == "26"
    assert facts[("state_capital", "Texas")] == "Austin"
    assert facts[("currency_code", "Japan")] == "JPY"


def test_splits_are_by_fact_and_disjoint():
    facts = all_facts()
    splits = split_facts(facts, seed=0)
    ids = {name: {f.id for f in part} for name, part in splits.items()}
    assert sum(len(v) for v in ids.values()) == len(facts)
    names = list(ids)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not ids[a] & ids[b], f"{a} and {b} share facts"
    for part in splits.values():                                 # stratified: every relation in every split
        assert {f.relation for f in part} == set(RELATIONS)
    assert split_facts(facts, seed=1)["edit"] != splits["edit"]


def test_written_splits_are_deterministic_and_reload(tmp_path):
    a = write_splits(tmp_path / "a", seed=0)
    write_splits(tmp_path / "b", seed=0)
    for name in ("train", "validation", "test", "edit", "CARD"):
        ext = "md" if name == "CARD" else "jsonl"
        assert (tmp_path / "a" / f"{name}.{ext}").read_bytes() == (tmp_path / "b" / f"{name}.{ext}").read_bytes()
    edit = load_split(tmp_path / "a" / "edit.jsonl")
    assert len(edit) == a["per_split"]["edit"] and edit == split_facts(all_facts(), seed=0)["edit"]
    row = json.loads((tmp_path / "a" / "edit.jsonl").read_text().splitlines()[0])
    assert set(row) == {"id", "relation", "subject", "answer", "prompt", "rephrases"}
    assert f"{a['facts']} real facts over {len(RELATIONS)} relations" in (tmp_path / "a" / "CARD.md").read_text()


def test_claims_true_and_false_of_the_same_relation():
    facts = split_facts(all_facts(), seed=0)["test"]
    cs = claims(facts, seed=0)
    assert len(cs) == 2 * len(facts)
    answers = {}
    for f in facts:
        answers.setdefault(f.relation, set()).add(f.answer)
    for c in cs:
        assert c.text.startswith(c.fact.prompt) and c.text.endswith(f" {c.answer}.")
        assert (c.label == "SUPPORTED") == (c.answer == c.fact.answer)
        assert c.answer in answers[c.fact.relation]
        assert len(c.rephrases) == 2 and all(r.endswith(f" {c.answer}.") for r in c.rephrases)
    assert len(claims(facts, seed=0, phrasings="all")) == 6 * len(facts)
    two = claims(facts, seed=0, false_per_fact=2)
    assert len(two) == 3 * len(facts) and len({c.id for c in two}) == len(two)
    assert len({c.text for c in two}) == len(two)                       # two distinct wrong answers


def test_the_memory_covers_the_training_wordings_an_edit_uses():
    from patcher.facts.sets import fact_examples

    split = split_facts(all_facts(), seed=0)
    for task in ("generation", "classification"):
        sets = {n: fact_examples(task, split, 0, training_wordings=n)["memory"] for n in (0, 7, None)}
        texts = {n: {e.input for e in examples} for n, examples in sets.items()}
        fact = split["train"][-1]                                       # a memory fact (the first 20% are TrainR)
        seventh, eighth = fact.phrasings[6], fact.phrasings[7]
        assert not any(t.startswith(seventh) for t in texts[0])         # prompt and held-out wordings only
        assert any(t.startswith(seventh) for t in texts[7]) and not any(t.startswith(eighth) for t in texts[7])
        assert any(t.startswith(eighth) for t in texts[None])
        assert len(sets[0]) < len(sets[7]) < len(sets[None])


def test_negatives_are_the_subjects_other_questions_and_the_same_question_about_name_twins():
    facts = all_facts()
    fact = {f.id.split("-")[0]: f for f in facts}
    sudan, guinea, niger = fact["demonym:Sudan"], fact["capital:Guinea"], fact["capital:Niger"]
    demonym = closest_templates(sudan, "demonym", 2)
    assert demonym[0] == "A citizen of {s} is called" and set(demonym) <= set(TRAINING_TEMPLATES["demonym"])
    assert twin_prompts(sudan, facts, 2) == [t.format(s="South Sudan") for t in demonym]
    assert twin_prompts(fact["demonym:South_Sudan"], facts, 2) == [t.format(s="Sudan") for t in demonym]
    (closest,) = closest_templates(guinea, "capital", 1)
    assert twin_prompts(guinea, facts, 1) == [closest.format(s=s) for s in
                                              ("Equatorial Guinea", "Guinea-Bissau", "Papua New Guinea")]
    assert twin_prompts(niger, facts) == [] and twin_prompts(fact["capital:France"], facts) == []   # not Nigeria
    assert twin_prompts(fact["state_capital:Virginia"], facts, 1) == [
        "The capital of the American state of West Virginia is"]
    negatives = negative_prompts(sudan, facts, 3)
    assert negatives == sibling_prompts(sudan, facts, 3) + twin_prompts(sudan, facts, 3)
    assert not any(t.format(s="South Sudan") in negatives for t in TEMPLATES["demonym"])   # measured wordings: never
    # the siblings most like the prompt: the country's capital gets the state capital's "The capital of the ..."
    georgia = fact["capital:Georgia"]
    assert "The capital of the American state of Georgia is" in sibling_prompts(georgia, facts, 3)
    assert "The capital of the American state of Georgia is" not in [
        t.format(s="Georgia") for t in TRAINING_TEMPLATES["state_capital"][:3]]
    negatives = negative_prompts(georgia, facts, 6)               # relations share a wording: not a negative
    shared = "Which city is the capital of Georgia? The answer is"
    assert shared in georgia.phrasings and shared in sibling_prompts(georgia, facts, 6)
    assert georgia.prompt not in negatives and not set(negatives) & set(georgia.phrasings)
