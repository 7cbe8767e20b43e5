"""Frames (EditorConfig.frames): a record with nothing but its input gets its subject, other wordings and
negatives from the prompts the editor has seen, never a wording nobody logged, and the editor trains on them."""
from conftest import MEMORY

from patcher import EditorConfig
from patcher.engine.examples import Example
from patcher.engine.frames import FrameIndex
from patcher.engine.rewording import rewordings
from patcher.engine.sequential import build_editor

SEEN = [  # two subjects asked the capital in three wordings, their region in two; one unrelated prompt
    ("The capital of Spain is", "Madrid"), ("Spain has its capital in", "Madrid"), ("Capital of Spain:", "Madrid"),
    ("The capital of Peru is", "Lima"), ("Peru has its capital in", "Lima"), ("Capital of Peru:", "Lima"),
    ("Spain lies in the region of", "Europe"), ("Where is Spain? It is in", "Europe"),
    ("Peru lies in the region of", "Americas"), ("Where is Peru? It is in", "Americas"),
    ("The capital of South Korea is", "Seoul"), ("A red house stands by the river", "yes")]


def index(pairs=SEEN) -> FrameIndex:
    frames = FrameIndex()
    for text, target in pairs:
        frames.add(text, target)
    return frames


def test_the_subject_is_the_span_where_the_input_differs_from_its_frame():
    match = index().match("The capital of New Zealand is")
    assert match.subject == "New Zealand" and match.values == ["New Zealand"]
    assert {n for n, _ in match.neighbours} == {0, 3, 10}          # the three prompts in its frame
    assert index().match("Something nobody asked before") is None


def test_wordings_are_the_frames_other_subjects_were_asked_in_with_the_same_answer():
    match, wordings, negatives = index().derive("The capital of New Zealand is", 15, 6)
    assert wordings == ["New Zealand has its capital in", "Capital of New Zealand:"]
    # other questions about such subjects (other answers), never a wording of this one
    assert negatives == ["New Zealand lies in the region of", "Where is New Zealand? It is in"]


def test_a_frame_needs_two_subjects_and_a_lone_wording_is_not_trusted():
    lone = [p for p in SEEN if p[0] != "Peru has its capital in"]
    _, wordings, _ = index(lone).derive("The capital of Chile is", 15, 6)
    assert wordings == ["Capital of Chile:"]                         # "has its capital in": one subject only
    _, wordings, negatives = index(SEEN[:1]).derive("The capital of Chile is", 15, 6)
    assert wordings == [] and negatives == []


def test_claims_align_on_two_slots():
    claims = [("The capital of Spain is Madrid.", "SUPPORTED"), ("Spain has its capital in Madrid.", "SUPPORTED"),
              ("The capital of Peru is Lima.", "SUPPORTED"), ("Peru has its capital in Lima.", "SUPPORTED")]
    match, wordings, _ = index(claims).derive("The capital of France is Lyon.", 15, 6)
    assert match.values == ["France", "Lyon"] and wordings == ["France has its capital in Lyon."]


def test_an_editor_with_frames_trains_on_the_found_wordings_and_remembers_them(tokenizer, make_model):
    lower = [(t.lower(), a.lower()) for t, a in SEEN]                 # the tiny tokenizer's vocabulary is lower case
    memory = [Example(t, a) for t, a in lower] + MEMORY
    editor = build_editor(make_model("llama"), tokenizer, EditorConfig(frames=True, subject_layer=0), memory)
    outcome = editor.edit("e0", "the capital of france is", "paris")
    assert outcome.status == "edited"
    assert editor.remembered["e0"][:3] == ["france lies in the region of", "where is france? it is in",
                                           "the capital of france is"]
    assert "france has its capital in" in editor.remembered["e0"]
    # the edit itself joins the frames: the next subject in its frame finds it as a neighbour
    assert editor.frames.match("the capital of chile is").subject == "chile"
    off = build_editor(make_model("llama"), tokenizer, EditorConfig(frames=False, subject_layer=0), memory)
    off.edit("e0", "the capital of france is", "paris")
    assert off.frames is None and off.remembered["e0"] == ["the capital of france is"]


def test_rule_rewordings_keep_the_subject_and_the_question():
    assert rewordings("The capital of France is", "France") == [
        "France's capital is", "What is the capital of France? It is", "Capital of France:"]
    assert rewordings("What is the calling code of France?", "France") == [
        "What is France's calling code?", "The calling code of France is"]
    assert rewordings("France's capital city is", "France") == ["The capital city of France is"]
    assert rewordings("The ISO code of the currency of Mali is", "Mali") == ["The ISO code of Mali's currency is"]
    assert rewordings("A person from Peru is called", "Peru") == []        # no rule: nothing made up


def test_rewordings_are_kept_where_the_unpatched_model_answers_alike(tokenizer, make_model):
    strict = [(t.lower(), a.lower()) for t, a in SEEN if t.startswith("The capital of")]   # one wording per frame
    memory = [Example(t, a) for t, a in strict] + MEMORY
    editor = build_editor(make_model("llama"), tokenizer, EditorConfig(reword=True, subject_layer=0), memory)
    text, target = "the capital of france is", "paris"
    candidates = rewordings(text, "france")
    first = [int(editor.arch.tail(c.h[:1]).argmax(-1)) for c in editor.cache([Example(t, target)
                                                                             for t in [text, *candidates]])]
    agreeing = [c for c, f in zip(candidates, first[1:]) if f == first[0]]
    editor.edit("e0", text, target)
    assert [t for t in editor.remembered["e0"] if t in candidates] == agreeing
    if agreeing:        # the neighbours' same rewordings joined the memory as negatives
        assert "spain's capital is" in [t.lower() for t in editor.remembered["e0"]]


def test_name_twins_seen_in_any_frame_join_the_negatives():
    frames = index(SEEN + [("Sudan lies in the region of", "Africa")])
    _, _, negatives = frames.derive("The capital of South Sudan is", 15, 6)
    # its question about other subjects sharing a word with it: South Korea (its frame), Sudan (another frame)
    assert negatives[-2:] == ["The capital of South Korea is", "The capital of Sudan is"]
    _, _, negatives = frames.derive("The capital of Chile is", 15, 6)
    assert not any("Korea" in n or "Sudan" in n for n in negatives)
