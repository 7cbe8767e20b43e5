"""Frames: the wordings, the subject and the negatives an error record does not bring, read from the prompts the
editor has seen (its memory set and earlier edits), for any model and any relation nobody wrote templates for.

Production prompts come in frames: "The capital of France is" and "The capital of Peru is" share the frame
"The capital of {} is"; the span where they differ (the slot) is the subject. For a new input:
  match      the seen prompts that share the most words with it and differ from it in one or two spans: its
             frame, its slot values (the subject: the longest) and those neighbours' own values
  wordings   other seen prompts that hold all of a neighbour's values and have its target (the same question in
             another wording), as frames; a frame seen so with at least `min_support` neighbours gives the input
             a new wording, its own values in that frame
  negatives  frames that hold neighbours' values with another target and never with theirs: other questions about
             such subjects, asked about the input's; and its question about name twins: other subjects seen in any of
             those frames that share a rare word with its subject (New Hampshire: New Jersey, New Mexico)
Text only: no model runs, so the cost per edit is a few milliseconds over a memory of tens of thousands.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from difflib import SequenceMatcher

TOKEN = re.compile(r"\w+|[^\w\s]")
SLOT = "\x00{}\x00"                 # a slot in a frame's text (no prompt holds a NUL: records.text_problem)


def tokens(text: str) -> list[tuple[str, int, int]]:
    """(lower-cased token, start, end) of each word and punctuation mark."""
    return [(m.group().lower(), m.start(), m.end()) for m in TOKEN.finditer(text)]


def whole(text: str, flags: int = 0) -> re.Pattern:
    """`text` as whole words: not inside a longer word."""
    return re.compile(r"(?<!\w)" + re.escape(text) + r"(?!\w)", flags)


def words(text: str) -> list[str]:
    """The distinct lower-cased words of a text (no punctuation), in order: what the index is keyed by."""
    return list(dict.fromkeys(t for t, _, _ in tokens(text) if t[0].isalnum() or t[0] == "_"))


def glued(ops: list[tuple], glue: int) -> list[tuple]:
    """The differing spans of difflib opcodes, those separated by fewer than `glue` equal tokens joined into one."""
    slots = []
    for op in ops:
        if op[0] == "equal":
            continue
        if slots and op[1] - slots[-1][2] < glue:
            _, i1, _, j1, _ = slots[-1]
            slots[-1] = ("replace", i1, op[2], j1, op[4])
        else:
            slots.append(("replace", *op[1:]))
    return slots


def each_question(frames: list[str], question: dict[str, tuple]) -> list[str]:
    """Frames in turns over the questions they ask (the first of each question, then the second...): a few
    negatives then cover every other question about the subject, not one question in many wordings."""
    groups: dict[tuple, list[str]] = {}
    for f in frames:
        groups.setdefault(question[f], []).append(f)
    return [group[k] for k in range(max(map(len, groups.values()), default=0)) for group in groups.values()
            if k < len(group)]


@dataclass
class Match:
    """An input's frame among the seen prompts: its slot values and its neighbours (prompt index, their values)."""

    input: str
    frame: str
    values: list[str]
    neighbours: list[tuple[int, list[str]]] = field(default_factory=list)

    @property
    def subject(self) -> str:
        """The longest value: a claim's subject comes first, a question split in two has its noun phrase longer."""
        return max(self.values, key=len)


def fill(frame: str, values: list[str]) -> str:
    for i, value in enumerate(values):
        frame = frame.replace(SLOT.format(i), value)
    return frame


class FrameIndex:
    """The seen prompts with their targets, indexed by word, growing as the editor sees more."""

    def __init__(self, max_slots: int = 2, candidates: int = 128, neighbours: int = 16, min_support: int = 2,
                 min_share: float = 0.5, glue: int = 3):
        self.max_slots, self.candidates = max_slots, candidates          # slots per frame; prompts aligned per input
        self.neighbours, self.min_support = neighbours, min_support      # prompts in its frame; subjects per wording
        self.min_share = min_share           # share of the neighbours a wording needs (at least min_support)
        self.rare_share = 0.05               # name twins: a shared word held by at most this share of the prompts
        self.glue = glue                     # shared runs shorter than this inside a slot join it, if slots are many
        self.texts: list[str] = []
        self.targets: list[str] = []
        self.words: dict[str, list[int]] = {}          # word -> prompts holding it
        self.seen: set[tuple[str, str]] = set()

    def add(self, text: str, target: str) -> None:
        if (text, target) in self.seen:
            return
        self.seen.add((text, target))
        i = len(self.texts)
        self.texts.append(text)
        self.targets.append(target)
        for word in words(text):
            self.words.setdefault(word, []).append(i)

    def __len__(self) -> int:
        return len(self.texts)

    def match(self, text: str) -> Match | None:
        """The input's frame: of its alignments with the seen prompts most like it (each differing in 1..max_slots
        spans), one that at least min_support prompts share, with the most tokens matched; its neighbours are the
        seen prompts in that frame."""
        mine = tokens(text)
        shared = Counter(i for w in words(text) for i in self.words.get(w, ()))
        best: dict[str, list] = {}                    # frame -> [matched tokens, values, neighbours]
        for i, _ in shared.most_common(self.candidates):
            if self.texts[i] == text:
                continue
            for frame, values, theirs, matched in self._align(mine, text, self.texts[i]):
                entry = best.setdefault(frame, [matched, values, []])
                entry[2].append((i, theirs))
        if not best:
            return None
        # a frame other prompts share beats a closer alignment with one prompt; then the most tokens matched
        rank = lambda kv: (len(kv[1][2]) >= self.min_support, kv[1][0], len(kv[1][2]))   # noqa: E731
        frame, (_, values, neighbours) = max(best.items(), key=rank)
        return Match(text, frame, values, neighbours[: self.neighbours])

    def _align(self, mine, text: str, other: str) -> list[tuple[str, list[str], list[str], int]]:
        """The ways `other` shares a frame with the input: its differing spans as slots, and those spans joined
        across short shared runs (two questions share "the" and "?"), where each is 1..max_slots spans that are
        non-empty on both sides. -> [(frame, the input's values, other's values, tokens matched)]."""
        theirs = tokens(other)
        ops = SequenceMatcher(None, [t for t, _, _ in mine], [t for t, _, _ in theirs], autojunk=False).get_opcodes()
        out, apart, joined = [], [op for op in ops if op[0] != "equal"], glued(ops, self.glue)
        for slots in [apart] + ([joined] if [op[1:] for op in joined] != [op[1:] for op in apart] else []):
            if not 1 <= len(slots) <= self.max_slots or any(i1 == i2 or j1 == j2 for _, i1, i2, j1, j2 in slots):
                continue
            frame, values, other_values, last = [], [], [], 0
            for k, (_, i1, i2, j1, j2) in enumerate(slots):
                start, end = mine[i1][1], mine[i2 - 1][2]
                frame += [text[last:start], SLOT.format(k)]
                values.append(text[start:end])
                other_values.append(other[theirs[j1][1]:theirs[j2 - 1][2]])
                last = end
            frame.append(text[last:])
            out.append(("".join(frame), values, other_values, len(mine) - sum(i2 - i1 for _, i1, i2, _, _ in slots)))
        return out

    def _frames_holding(self, values: list[str]) -> list[tuple[str, int]]:
        """(frame, prompt index) of every seen prompt that holds all `values` as whole words, each once."""
        posting = None
        for value in values:
            for word in words(value):
                ids = set(self.words.get(word, ()))
                posting = ids if posting is None else posting & ids
        out = []
        for i in sorted(posting or ()):
            frame = self.texts[i]
            for k, value in enumerate(values):
                found = list(whole(value).finditer(frame))
                if len(found) != 1:
                    break
                frame = frame[:found[0].start()] + SLOT.format(k) + frame[found[0].end():]
            else:
                out.append((frame, i))
        return out

    def frames_of(self, match: Match) -> tuple[list[str], list[str]]:
        """-> (frames asking the neighbours' question in other wordings, frames asking them other questions),
        most neighbours first, each seen with at least min_support neighbours."""
        same, other, question = Counter(), Counter(), {}
        for n, values in match.neighbours:
            found = [(f, i) for f, i in self._frames_holding(values) if f != match.frame]
            # once per neighbour, in the order seen (ties keep it: the same wordings every run)
            same.update(list(dict.fromkeys(f for f, i in found if self.targets[i] == self.targets[n])))
            other.update(list(dict.fromkeys(f for f, i in found if self.targets[i] != self.targets[n])))
            for f, i in found:          # frames with one answer for the first neighbour seen in them: one question
                question.setdefault(f, (n, self.targets[i]))
        # a wording most neighbours were asked in: with few labels (classifiers) other questions agree by chance
        needed = max(self.min_support, self.min_share * len(match.neighbours))
        wordings = [f for f, c in same.most_common() if c >= needed and c > other[f]]
        return wordings, each_question([f for f, c in other.most_common() if c >= self.min_support and same[f] == 0],
                                       question)

    def twins(self, match: Match, frames: list[str], limit: int = 4) -> list[str]:
        """Other subjects seen in one of `frames` (one slot each) that share a word with the input's subject, a word
        held by few seen prompts (at most max(8, rare_share of them): not "the" or "of"), at most `limit`."""
        patterns = [re.compile("(.+?)".join(map(re.escape, parts)) + "$") for f in frames
                    if len(parts := re.split("\x00\\d+\x00", f)) == 2]
        out = []
        for word in words(match.subject):
            holding = self.words.get(word, ())
            if len(holding) > max(8, self.rare_share * len(self)):
                continue
            for i in holding:
                for pattern in patterns:
                    found = pattern.match(self.texts[i])
                    if found and found.group(1) != match.subject and \
                            whole(word, re.IGNORECASE).search(found.group(1)):
                        out.append(found.group(1))
        return list(dict.fromkeys(out))[:limit]

    def derive(self, text: str, wordings: int, negatives: int) -> tuple[Match | None, list[str], list[str]]:
        """-> (the input's match, up to `wordings` other wordings of it, up to `negatives` other questions about
        its subject), from the seen prompts' frames; (None, [], []) when no seen prompt shares its frame."""
        match = self.match(text)
        if match is None:
            return None, [], []
        same, other = self.frames_of(match)
        filled = [p for p in dict.fromkeys(fill(f, match.values) for f in same) if p != text][:wordings]
        questions = [p for p in dict.fromkeys(fill(f, match.values) for f in other) if p != text][:negatives]
        twins = self.twins(match, [match.frame, *same, *other]) if len(match.values) == 1 else []
        return match, filled, questions + [fill(match.frame, [t]) for t in twins]
