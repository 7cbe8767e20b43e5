"""How an input is put to a generation model, the same way in training, export parity and serving:

  text   the input as is; the answer follows it after one space (a base model's continuation)
  chat   the tokenizer's chat template, the input as the single user turn and the generation prompt after
         it; the answer is what the assistant turn begins with (an instruct model, which ends it with EOS)

The chat prompt is the template rendered to a string and tokenized without added special tokens: that is
what apply_chat_template(tokenize=True) does itself, and the string also gives each token's place in the
input (prompt_offsets, for the subject key).
"""
from __future__ import annotations

PROMPT_FORMATS = ("text", "chat")


def _known(prompt_format: str) -> None:
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt_format {prompt_format!r}: one of {', '.join(PROMPT_FORMATS)}")


def check_prompt_format(tokenizer, prompt_format: str) -> None:
    """Raises ValueError unless `tokenizer` can put inputs in `prompt_format`."""
    _known(prompt_format)
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"prompt_format 'chat' needs a chat template, and the {type(tokenizer).__name__} "
                         f"tokenizer ({tokenizer.name_or_path}) has none")


def prompt_ids(tokenizer, text: str, prompt_format: str, max_length: int | None = None) -> list[int]:
    """The token ids of `text` as put to the model. A chat prompt over `max_length` keeps its end: the
    generation prompt must stay right before the answer."""
    return _encode(tokenizer, text, prompt_format, max_length)["input_ids"]


def prompt_offsets(tokenizer, text: str, prompt_format: str, max_length: int | None = None) -> list[tuple[int, int]]:
    """Each token of prompt_ids(...)'s (start, end) characters in `text`; (0, 0) for tokens not from it
    (special tokens, the template's own)."""
    return _encode(tokenizer, text, prompt_format, max_length, offsets=True)["offset_mapping"]


def _encode(tokenizer, text: str, prompt_format: str, max_length: int | None, offsets: bool = False) -> dict:
    check_prompt_format(tokenizer, prompt_format)
    if prompt_format == "text":
        return tokenizer(text, truncation=max_length is not None, max_length=max_length,
                         return_offsets_mapping=offsets)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)
    enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=offsets)
    keep = slice(-max_length if max_length is not None else None, None)
    out = {"input_ids": enc["input_ids"][keep]}
    if offsets:
        # the user turn is the last place the input appears in the rendered chat (only the template follows it)
        start = rendered.rfind(text)
        if start < 0:
            raise ValueError(f"the chat template does not render the input as is: {text!r} not in {rendered!r}")
        end = start + len(text)
        out["offset_mapping"] = [(a - start, b - start) if start <= a < b <= end else (0, 0)
                                 for a, b in enc["offset_mapping"][keep]]
    return out


def answer_text(target: str, prompt_format: str) -> str:
    """The text whose tokens follow the prompt: after a text prompt, one space unless the target starts with
    whitespace; after a chat prompt's assistant header, the target as is."""
    _known(prompt_format)
    if prompt_format == "chat" or target[:1].isspace():
        return target
    return " " + target
