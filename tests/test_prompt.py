"""Prompt formats (engine/prompt.py): text prompts tokenised exactly as before, chat prompts as the tokenizer's chat
template gives them, and the same ids in training (GenerationTask), the subject key, export parity and serving."""
import hashlib
import json
from types import SimpleNamespace

import pytest
import torch
from conftest import FACTS, MEMORY

from patcher import Editor, EditorConfig, Memory
from patcher.engine.activations import key
from patcher.engine.answers import greedy_answers
from patcher.engine.examples import Example
from patcher.engine.prompt import answer_text, prompt_ids, prompt_offsets
from patcher.engine.sequential import to_patchset
from patcher.engine.subject import subject_position
from patcher.models.base import load_model, smollm2_dir
from patcher.models.tiny import tiny_tokenizer
from patcher.serving.export import export
from patcher.serving.onnx_model import OnnxModel, greedy

# a template of the usual shape for the tiny (WordPiece) tokenizer: role headers, the generation prompt last
TINY_CHAT = ("{% for m in messages %}[CLS] {{ m['role'] }} : {{ m['content'] }} [SEP] {% endfor %}"
             "{% if add_generation_prompt %}assistant :{% endif %}")


def chat(tokenizer, text: str) -> list[int]:
    """The ids the tokenizer's own chat API gives."""
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)["input_ids"]


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizer = tiny_tokenizer()          # not the session's: that one has no template
    tokenizer.chat_template = TINY_CHAT
    return tokenizer


@pytest.fixture(scope="module")
def smollm2():
    return load_model(smollm2_dir())


def test_text_prompts_are_the_tokenizers_ids_as_before(tokenizer):
    for text in ["the capital of france is", "  spaces, Capitals and punctuation!", ""]:
        assert prompt_ids(tokenizer, text, "text") == tokenizer(text)["input_ids"]
        assert prompt_ids(tokenizer, text, "text", 4) == tokenizer(text, truncation=True, max_length=4)["input_ids"]
    assert answer_text("paris", "text") == " paris" and answer_text(" paris", "text") == " paris"
    assert answer_text("paris", "chat") == "paris"


def test_unknown_formats_and_chat_without_a_template_are_refused(tokenizer, chat_tokenizer, make_model):
    with pytest.raises(ValueError, match="unknown prompt_format 'json'"):
        prompt_ids(tokenizer, "x", "json")
    with pytest.raises(ValueError, match="unknown prompt_format 'json'"):
        answer_text("x", "json")
    with pytest.raises(ValueError, match="unknown prompt_format 'json'"):
        Editor(make_model("llama"), tokenizer, EditorConfig(prompt_format="json"))
    with pytest.raises(ValueError, match="needs a chat template"):
        Editor(make_model("llama"), tokenizer, EditorConfig(prompt_format="chat"))
    for arch in ("bert", "bart"):                                   # a classifier, an encoder-decoder
        with pytest.raises(ValueError, match="needs a decoder-only language model"):
            Editor(make_model(arch), chat_tokenizer, EditorConfig(prompt_format="chat"))


def test_chat_prompts_keep_their_end_and_place_the_subject(chat_tokenizer):
    text = "the capital of france is"
    ids = prompt_ids(chat_tokenizer, text, "chat")
    assert ids == chat(chat_tokenizer, text)
    assert chat_tokenizer.decode(ids) == f"[CLS] user : {text} [SEP] assistant :"
    assert prompt_ids(chat_tokenizer, text, "chat", 4) == ids[-4:]              # the generation prompt stays
    offsets = prompt_offsets(chat_tokenizer, text, "chat")
    assert len(offsets) == len(ids)
    assert [text[a:b] for a, b in offsets if b > a] == text.split()             # the template's own tokens: (0, 0)
    tokens = chat_tokenizer.convert_ids_to_tokens(ids)
    assert tokens[subject_position(chat_tokenizer, text, "france", "chat")] == "france"
    cut = prompt_ids(chat_tokenizer, text, "chat", 6)
    assert chat_tokenizer.convert_ids_to_tokens(cut)[subject_position(chat_tokenizer, text, "france", "chat", 6)] \
        == "france"


def test_activation_keys_of_text_prompts_are_unchanged_and_chat_has_its_own():
    examples = [Example("the capital of france is", "paris")]
    task = SimpleNamespace(name="generation", max_length=128, subject_layer=None, prompt_format="text")
    before = json.dumps(["generation", 128, "fp", [["the capital of france is", "paris"]]])
    assert key(task, examples, "fp") == hashlib.sha256(before.encode()).hexdigest()[:32]
    assert key(SimpleNamespace(**{**vars(task), "prompt_format": "chat"}), examples, "fp") != key(task, examples, "fp")


def test_an_edit_trained_through_the_chat_template_is_served_through_it(tmp_path, make_model, chat_tokenizer):
    """Training, the export's parity check and OnnxModel put the input to the model as the same ids."""
    model_dir = tmp_path / "model"
    make_model("llama").save_pretrained(model_dir)
    chat_tokenizer.save_pretrained(model_dir)
    model, tok = load_model(model_dir)
    assert tok.chat_template == TINY_CHAT                                       # saved with the model
    editor = Editor(model, tok, EditorConfig(prompt_format="chat"))
    editor.memory = Memory.from_examples(editor.task, MEMORY)
    fact = FACTS[0]
    _, positions, targets, _ = editor.task.encode([fact])
    start = len(chat(tok, fact.input))                                          # the answer right after the header
    assert positions[0].tolist() == list(range(start - 1, start - 1 + len(targets[0])))
    assert targets[0].tolist() == tok(fact.target, add_special_tokens=False)["input_ids"]
    outcome = editor.edit("e0", fact.input, fact.target)
    assert outcome.succeeded
    patches = to_patchset(editor, [outcome], "tiny", model_dir).save(tmp_path / "patches")

    texts = [fact.input, MEMORY[0].input]
    manifest = export(model_dir, patches, tmp_path / "onnx", [Example(MEMORY[0].input, "-")])   # the patch set's
    assert manifest["prompt_format"] == "chat" and manifest["parity"]["examples"] == 2
    served = OnnxModel(tmp_path / "onnx")
    assert served.prompt_format == "chat"
    answers = [p["answer"] for p in served(texts, max_new_tokens=len(targets[0]))]
    assert answers[0] == fact.target
    from patcher.engine.patchset import load_patched

    patched, _, _ = load_patched(model_dir, patches)
    with torch.no_grad():
        step = lambda ids: patched(input_ids=torch.from_numpy(ids), use_cache=False).logits  # noqa: E731
        assert answers == [greedy(step, tok, t, len(targets[0]), stop="\n", prompt_format="chat").strip()
                           for t in texts]

    # an export from before prompt formats (no key) is served as text
    path = tmp_path / "onnx" / "export.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "prompt_format"}))
    assert OnnxModel(tmp_path / "onnx").prompt_format == "text"


@pytest.mark.real
def test_smollm2_chat_prompts_are_its_chat_templates_ids(smollm2):
    _, tok = smollm2
    for text in ["What is the capital of France?", "  leading spaces\nand a newline", "<|im_end|> in the input"]:
        ids = prompt_ids(tok, text, "chat")
        assert ids == chat(tok, text)
        assert ids == tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                              return_dict=False)
        assert prompt_ids(tok, text, "text") == tok(text)["input_ids"]


@pytest.mark.real
def test_smollm2_judges_its_own_chat_answer_right_after_the_assistant_header(smollm2):
    model, tok = smollm2
    question = "What is the capital of France?"
    (answer,) = greedy_answers(model, tok, [question], "chat")
    assert answer == "The capital of France is Paris."              # what SmolLM2-135M-Instruct says
    editor = Editor(model, tok, EditorConfig(prompt_format="chat"))
    inputs, positions, targets, _ = editor.task.encode([Example(question, answer)])
    prompt = chat(tok, question)
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
    assert inputs["input_ids"][0, :len(prompt)].tolist() == prompt
    assert positions[0].tolist() == list(range(len(prompt) - 1, len(prompt) - 1 + len(targets[0])))
    assert tok.decode(targets[0]) == answer                           # no leading space
    right, _, decoded = editor.judge(editor.cache([Example(question, answer)])[0])
    assert right and decoded == answer


@pytest.mark.real
def test_smollm2_exported_with_its_chat_template_answers_as_pytorch_does(tmp_path, smollm2):
    """About 45 s on 2 cores: a 540 MB graph."""
    model, tok = smollm2
    question = "What is the capital of France?"
    manifest = export(smollm2_dir(), None, tmp_path / "onnx", [Example(question, "-")], prompt_format="chat")
    assert manifest["prompt_format"] == "chat"
    (served,) = OnnxModel(tmp_path / "onnx")([question], max_new_tokens=16)
    assert served["answer"] == greedy_answers(model, tok, [question], "chat")[0] == "The capital of France is Paris."
