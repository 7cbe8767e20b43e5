"""Rule rewordings: other wordings of an English prompt about a known subject, for a record whose frame no seen
prompt was asked in any other wording (engine/frames.py found none). Three rules of English syntax, none about a
relation: "the Y of S" <-> "S's Y", a statement "The Y of S is" as a question ("What is the Y of S? It is") and
as a label ("Y of S:"), a question "What is the Y of S?" as a statement. The editor keeps a candidate only where
the unpatched model's answer to it starts as its answer to the input does (the same question asked), and puts
the same rewordings of the input's neighbours (other subjects in its frame) into the memory, so that a neuron
cannot learn the new shape instead of the fact.
"""
from __future__ import annotations

import re

WORDS = r"(?:(?!of\b)[\w-]+ ){0,3}(?!of\b)[\w-]+"          # a short noun phrase without "of"


def rewordings(text: str, subject: str) -> list[str]:
    """Other wordings of `text` about `subject` (a span of it) by the rules above; [] when none applies."""
    s = re.escape(subject)
    out = []
    of = re.search(rf"\b([Tt]he) ({WORDS}) of {s}(?!\w)", text)
    if of:                                                             # the Y of S -> S's Y
        start = of.start()
        possessive = f"{subject}'s {of.group(2)}"
        out.append(text[:start] + (possessive if start else possessive[0].upper() + possessive[1:])
                   + text[of.end():])
        statement = re.fullmatch(rf"The ({WORDS}) of {s} (is|are|was)", text)
        if statement:                                                  # The Y of S is -> question, label
            y, verb = statement.group(1), statement.group(2)
            out += [f"What {verb} the {y} of {subject}? It {verb}", f"{y[0].upper()}{y[1:]} of {subject}:"]
    owned = re.search(rf"(?<!\w){s}'s ((?:[\w-]+ ){{0,3}}?[\w-]+)(?= (?:is|are|was|has|have)\b|[?.:,!]|$)", text)
    if owned:                                                          # S's Y -> the Y of S
        phrase = f"the {owned.group(1)} of {subject}"
        start = owned.start()
        out.append(text[:start] + (phrase if start else phrase[0].upper() + phrase[1:]) + text[owned.end():])
    question = re.fullmatch(rf"What (is|are|was) the ({WORDS}) of {s}\?", text)
    if question:                                                       # What is the Y of S? -> The Y of S is
        out.append(f"The {question.group(2)} of {subject} {question.group(1)}")
    return [t for t in dict.fromkeys(out) if t != text]
