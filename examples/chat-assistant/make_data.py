"""The user's side of a chat assistant: their deployed model's answers to users' short questions, and their logs.

A team serves SmolLM2-135M-Instruct, as shipped, through its own chat template. Users ask short factual
questions; the team knows the right answers (from the `periodictable`, `us` and `countryinfo` packages) and
logs each wrong answer as an error record. This script plays that, offline and deterministically for a seed:

  1. builds questions with a known short answer for relations the project's fact bank does NOT have (the bank
     has capital, region, currency code, demonym, state capital, element symbol, element number, trivia):
     the element with a given symbol or atomic number, a US state's postal abbreviation (and the state an
     abbreviation stands for), the state or country a capital belongs to (the bank only asks the other way),
     a state's statehood year, a country's calling code, internet domain and ISO alpha-3 code;
     each relation has several question templates: the first is what the user asked, the others are the
     same question in other words (an error record's `rephrases`);
  2. splits each relation's subjects, seeded, into asked questions and memory questions;
  3. asks the model every asked question the way it is deployed: apply_chat_template([user message],
     add_generation_prompt=True), greedy decoding, stop at EOS; the answer is the new tokens decoded, cut at
     the first newline, stripped;
  4. judges each answer (the rule is `is_right` below) and writes OUT/errors.jsonl (the wrong answers, as
     error records), OUT/memory.jsonl (the memory questions, inputs only), OUT/regression.jsonl (questions it
     answers right, target = its own answer) and OUT/card.json (counts, accuracy, seconds).

    python examples/chat-assistant/make_data.py --out /tmp/chat               # full run, a few minutes
    python examples/chat-assistant/make_data.py --out /tmp/chat --limit 4     # test-sized run

It uses nothing from the patcher package except patcher.models.base.smollm2_dir (where the model is).
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

MODEL_NAME = "chat-assistant"
TASK = "generation"

TEMPLATES = {
    "element_by_symbol": ["Which chemical element has the symbol {s}?",
                          "What element does the chemical symbol {s} stand for?",
                          "The symbol {s} on the periodic table stands for which element?"],
    "element_by_number": ["Which chemical element has atomic number {s}?",
                          "What is the element with atomic number {s}?",
                          "Name the element whose atomic number is {s}."],
    "state_abbreviation": ["What is the postal abbreviation for {s}?",
                           "What is the two-letter USPS code for {s}?",
                           "How is {s} abbreviated in a mailing address?"],
    "state_by_abbreviation": ["What does the US state abbreviation {s} stand for?",
                              "Which US state has the postal abbreviation {s}?",
                              "The two-letter code {s} refers to which US state?"],
    "state_by_capital": ["{s} is the capital of which US state?",
                         "Which US state has {s} as its capital?",
                         "Of which US state is {s} the capital city?"],
    "statehood_year": ["In what year did {s} become a US state?",
                       "When was {s} admitted to the Union?",
                       "What year did {s} join the United States?"],
    "country_by_capital": ["{s} is the capital of which country?",
                           "Which country has {s} as its capital?",
                           "Of which country is {s} the capital city?"],
    "calling_code": ["What is the international calling code of {s}?",
                     "What is the telephone country code for {s}?",
                     "Which dialing code do you use to phone {s}?"],
    "internet_domain": ["What is the internet country code domain of {s}?",
                        "Which top-level domain do websites from {s} use?",
                        "What is the web address ending for {s}?"],
    "iso_alpha3": ["What is the three-letter ISO country code of {s}?",
                   "What is the ISO 3166 alpha-3 code for {s}?",
                   "Which three-letter code does ISO assign to {s}?"],
}
RELATIONS = tuple(TEMPLATES)
# How many subjects of each relation are asked in a full run. The model gets about half of the state
# abbreviation and state capital questions right, a third of the abbreviation-to-state ones, a quarter of the
# country capital ones, a tenth of the element-by-symbol ones and next to none of the others: those are asked
# less, so that a run has both enough right answers (the regression suite) and a reviewable number of mistakes.
ASKED = {"element_by_symbol": 20, "element_by_number": 8, "state_abbreviation": 50, "state_by_abbreviation": 30,
         "state_by_capital": 50, "statehood_year": 8, "country_by_capital": 20, "calling_code": 6,
         "internet_domain": 6, "iso_alpha3": 6}


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    answer: str

    @property
    def id(self) -> str:
        return f"{self.relation}:{slug(self.subject)}"

    def question(self, template: int = 0) -> str:
        return TEMPLATES[self.relation][template].format(s=self.subject)

    @property
    def rephrases(self) -> list[str]:
        return [self.question(i) for i in range(1, len(TEMPLATES[self.relation]))]


def slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9.-]+", "-", ascii_text).strip("-")[:64] or "x"


def facts() -> dict[str, list[Fact]]:
    """relation -> its facts, in the packages' order; entries that are missing or not a single answer are left
    out (a country with several calling codes or domains, a name with a comma or brackets, a repeated ISO
    code). The packages' values are the ground truth, stale ones included."""
    import countryinfo
    import periodictable
    import us

    out = {r: [] for r in RELATIONS}
    for element in periodictable.elements:
        if element.number == 0:                      # the neutron placeholder
            continue
        name = element.name.capitalize()
        out["element_by_symbol"].append(Fact("element_by_symbol", element.symbol, name))
        out["element_by_number"].append(Fact("element_by_number", str(element.number), name))
    for state in us.states.STATES:
        out["state_abbreviation"].append(Fact("state_abbreviation", state.name, state.abbr))
        out["state_by_abbreviation"].append(Fact("state_by_abbreviation", state.abbr, state.name))
        out["state_by_capital"].append(Fact("state_by_capital", state.capital, state.name))
        if state.statehood_year:
            out["statehood_year"].append(Fact("statehood_year", state.name, str(state.statehood_year)))
    seen_iso, capitals = set(), {}
    for country in countryinfo.all_countries():
        try:
            info = country.info()
        except Exception:                            # an entry without its fields: left out, not guessed
            continue
        name = (info.get("name") or "").strip()
        iso3 = ((info.get("ISO") or {}).get("alpha3") or "").strip()
        if not name or any(ch in name for ch in ",()") or not iso3 or iso3 in seen_iso:
            continue
        seen_iso.add(iso3)
        out["iso_alpha3"].append(Fact("iso_alpha3", name, iso3))
        codes = [c for c in info.get("callingCodes") or [] if c]
        if len(codes) == 1 and codes[0].isdigit():
            out["calling_code"].append(Fact("calling_code", name, "+" + codes[0]))
        capital = info.get("capital")
        if isinstance(capital, str) and capital.strip():
            capitals.setdefault(capital.strip(), []).append(name)
        domains = [d for d in info.get("tld") or [] if d]
        if len(domains) == 1 and re.fullmatch(r"\.[a-z]{2}", domains[0]):
            out["internet_domain"].append(Fact("internet_domain", name, domains[0]))
    for capital, names in capitals.items():      # a capital of several entries, or one named like its country
        name = names[0]                          # (Monaco, Mexico City, Tunis), is left out
        if len(names) == 1 and capital.casefold() not in name.casefold() and name.casefold() not in capital.casefold():
            out["country_by_capital"].append(Fact("country_by_capital", capital, name))
    return out


def normalise(text: str) -> str:
    """Lower case, accents and punctuation dropped, whitespace collapsed ("+33" -> "33", ".fr" -> "fr")."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def _occurs(target: str, answer: str) -> bool:
    """`target` is a whole-word run of `answer`: case-sensitively for a target in capitals (TX, FRA: "or" in a
    sentence is not OR), otherwise after normalise() ("+33" and "33", ".fr" and "fr", "Réunion" and "reunion")."""
    if target.isupper():
        words = re.findall(r"[A-Za-z0-9]+", unicodedata.normalize("NFKD", answer))
        needle = re.findall(r"[A-Za-z0-9]+", target)
        return any(words[i:i + len(needle)] == needle for i in range(len(words) - len(needle) + 1))
    needle = normalise(target)
    return bool(needle) and f" {needle} " in f" {normalise(answer)} "


def is_right(answer: str, target: str, others: Iterable[str] = ()) -> bool:
    """The rule: an answer is right when it names the target and no other answer of the same relation.
    Names: the target is the whole answer or a whole-word run in it, after normalising (see _occurs), so
    "Iron", "iron." and "The chemical element with the symbol Fe is Iron." are right for Fe; "The US states
    with the postal abbreviation AK are Alaska, Arizona, Colorado" is wrong (it names other states too);
    another answer that is part of the target (Virginia in West Virginia) does not count against it.
    This model answers in a sentence that restates the question: insisting on the bare answer would log
    nearly every answer as a mistake whatever it said. `others`: the relation's other answers."""
    if not _occurs(target, answer):
        return False
    return not any(other != target and not _occurs(other, target) and _occurs(other, answer) for other in others)


def clean(text: str) -> str:
    text = text.split("\n", 1)[0]
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


def write_jsonl(path: Path, rows) -> int:
    rows = list(rows)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output directory (its four files are replaced)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None,
                    help="ask at most this many questions per relation (tests); memory likewise")
    ap.add_argument("--memory", type=int, default=25, help="memory questions per relation")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 is as fast as 2 for one short answer on 2 cores and far faster when "
                         "the cores are busy")
    ap.add_argument("--logged-at", default="2026-01-01T00:00:00Z", help="logged_at of every error record")
    args = ap.parse_args(argv)

    import torch
    import transformers as tf

    from patcher.models.base import smollm2_dir

    started = time.perf_counter()
    tf.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    rng = random.Random(args.seed)
    asked, memory, answers = [], [], {}
    for relation, group in facts().items():
        answers[relation] = sorted({f.answer for f in group})
        group = list(group)
        rng.shuffle(group)
        # at most 60% of a relation's subjects are asked: the rest are other users' questions of the same shape,
        # what a memory of production inputs holds (a relation missing from it is one edits may spill into)
        n_asked = min(ASKED[relation], args.limit or ASKED[relation], int(len(group) * 0.6))
        n_memory = min(args.memory, args.limit or args.memory)
        asked += group[:n_asked]
        memory += group[n_asked:n_asked + n_memory]
    rng.shuffle(asked)
    rng.shuffle(memory)

    directory = smollm2_dir()
    tokenizer = tf.AutoTokenizer.from_pretrained(directory)
    model = tf.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    load_seconds = time.perf_counter() - started

    @torch.inference_mode()
    def answer(question: str) -> str:
        enc = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        out = model.generate(**enc, do_sample=False, max_new_tokens=args.max_new_tokens,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
                             stop_strings=["\n"], tokenizer=tokenizer)    # the answer is cut there anyway
        return clean(tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))

    ask_started = time.perf_counter()
    results = []
    for n, fact in enumerate(asked, 1):
        results.append((fact, answer(fact.question())))
        if n % 50 == 0 or n == len(asked):
            print(f"asked {n}/{len(asked)} in {time.perf_counter() - ask_started:.0f} s", file=sys.stderr, flush=True)
    ask_seconds = time.perf_counter() - ask_started

    errors, regression, empty = [], [], 0
    per_relation = {r: {"asked": 0, "right": 0} for r in RELATIONS}
    for fact, said in results:
        right = bool(said) and is_right(said, fact.answer, answers[fact.relation])
        per_relation[fact.relation]["asked"] += 1
        per_relation[fact.relation]["right"] += right
        if not said:
            empty += 1                               # nothing to log as a prediction
        elif right:
            regression.append({"input": fact.question(), "target": said})
        else:
            errors.append({"id": fact.id, "model": MODEL_NAME, "task": TASK, "input": fact.question(),
                           "prediction": said, "target": fact.answer, "rephrases": fact.rephrases,
                           "logged_at": args.logged_at})

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    counts = {
        "asked": len(results), "right": sum(p["right"] for p in per_relation.values()),
        "errors": write_jsonl(out / "errors.jsonl", errors),
        "memory": write_jsonl(out / "memory.jsonl", ({"input": f.question()} for f in memory)),
        "regression": write_jsonl(out / "regression.jsonl", regression),
        "empty_answers": empty,
    }
    card = {
        "model": MODEL_NAME, "task": TASK, "base_model": "SmolLM2-135M-Instruct (as shipped)",
        "prompt_format": "chat", "decoding": f"greedy, stop at EOS or {args.max_new_tokens} new tokens, "
                                             "cut at the first newline",
        "judge": "right when the answer names the target (a whole-word run after normalising; targets in "
                 "capitals case-sensitively) and no other answer of the same relation; see is_right",
        "data": "periodictable, us, countryinfo (relations not in the project's fact bank)",
        "settings": {"seed": args.seed, "limit": args.limit, "memory": args.memory,
                     "max_new_tokens": args.max_new_tokens, "threads": args.threads},
        "counts": counts,
        "accuracy": round(counts["right"] / max(1, counts["asked"]), 4),
        "per_relation": {r: {**p, "accuracy": round(p["right"] / p["asked"], 4) if p["asked"] else None}
                         for r, p in per_relation.items()},
        "seconds": {"load": round(load_seconds, 1), "answers": round(ask_seconds, 1),
                    "per_answer": round(ask_seconds / max(1, len(results)), 3),
                    "total": round(time.perf_counter() - started, 1)},
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"out": str(out), "counts": counts, "accuracy": card["accuracy"], "seconds": card["seconds"]}))
    return card


if __name__ == "__main__":
    main()
