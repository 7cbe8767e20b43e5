"""The consumer side of an export directory (patcher/serving/export.py): an onnxruntime session, its tokenizer and
labels, and predictions as a serving system makes them, with inputs put to the model as in training (export.json's
prompt_format). Needs onnxruntime, numpy and the tokenizer only."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from patcher.engine.prompt import prompt_ids

ONNX = "model.onnx"
MAX_TOKENS = 2048        # a CPU service's ceiling on one input: attention costs the square of the length
TOKENS_PER_RUN = 2048    # padded tokens per onnxruntime run: its activations (what its memory arena keeps) are
                         # bounded, 4 inputs of 512 tokens or a whole batch of short ones


def max_tokens(config: dict, tokenizer) -> int:
    """The longest input the model takes, in tokens: its position embeddings', the tokenizer's where it names
    one (a tokenizer without a limit says ~1e30), at most MAX_TOKENS."""
    positions = [config[k] for k in ("max_position_embeddings", "n_positions") if config.get(k)]
    if "roberta" in config.get("model_type", ""):      # RoBERTa's positions start after the padding index
        positions = [n - (config.get("pad_token_id") or 1) - 1 for n in positions]
    named = [int(tokenizer.model_max_length)] if (tokenizer.model_max_length or 0) < 1e6 else []
    return min([MAX_TOKENS, *positions, *named])


def session(onnx_path: str | Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


def onnx_logits(sess, inputs: dict) -> np.ndarray:
    """`inputs`: {name: (B, T) int64 array or tensor}; the ones the graph does not take are left out."""
    names = {i.name for i in sess.get_inputs()}
    return sess.run(["logits"], {k: np.asarray(v, dtype=np.int64) for k, v in inputs.items() if k in names})[0]


def greedy(step, tokenizer, prompt: str, max_new_tokens: int, stop: str | None = None,
           prompt_format: str = "text", max_length: int | None = None) -> str:
    """Greedy answer with `step(input_ids (1, T) int64 array) -> logits (1, T, V)`, full recompute per token;
    ends at EOS, after max_new_tokens, or once the answer contains `stop`. A prompt over `max_length` tokens is
    truncated (prompt_ids)."""
    ids = np.asarray(prompt_ids(tokenizer, prompt, prompt_format, max_length), dtype=np.int64)[None]    # (1, T)
    start = ids.shape[1]
    for _ in range(max_new_tokens):
        nxt = int(np.asarray(step(ids))[0, -1].argmax())
        if nxt == tokenizer.eos_token_id:
            break
        ids = np.concatenate([ids, [[nxt]]], axis=1)
        if stop and stop in tokenizer.decode(ids[0, start:]):
            break
    return tokenizer.decode(ids[0, start:])


class OnnxModel:
    """One export directory loaded for predictions: labels and scores, or greedy answers."""

    def __init__(self, directory: str | Path, version: str | None = None):
        from transformers import AutoTokenizer

        self.directory = Path(directory)
        self.manifest = json.loads((self.directory / "export.json").read_text())
        self.version = version or (self.manifest["patch_set"] or {}).get("version") or "unpatched"
        self.config = json.loads((self.directory / "config.json").read_text())
        self.task = "classification" if self.config["architectures"][0].endswith("Classification") else "generation"
        self.labels = {int(k): v for k, v in self.config.get("id2label", {}).items()}
        self.prompt_format = self.manifest.get("prompt_format", "text")      # exports before it: text
        self.tokenizer = AutoTokenizer.from_pretrained(self.directory)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.session = session(self.directory / ONNX)
        self.max_length = max_tokens(self.config, self.tokenizer)     # inputs are truncated to it

    def forward(self, texts: list[str], max_new_tokens: int = 8) -> list[dict]:
        if self.task == "classification":
            return self._classify(texts)
        step = lambda ids: onnx_logits(self.session, {"input_ids": ids, "attention_mask": np.ones_like(ids)})  # noqa: E731
        room = max(1, self.max_length - max_new_tokens)            # the prompt and the answer fit the positions
        return [{"answer": greedy(step, self.tokenizer, text, max_new_tokens, stop="\n",
                                  prompt_format=self.prompt_format, max_length=room).strip()} for text in texts]

    def _classify(self, texts: list[str]) -> list[dict]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        rows = max(1, TOKENS_PER_RUN // enc["input_ids"].shape[1])
        logits = np.concatenate([onnx_logits(self.session, {k: v[i:i + rows] for k, v in enc.items()})
                                 for i in range(0, len(texts), rows)])                         # (B, C)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return [{"label": self.labels[int(p.argmax())],
                 "scores": {self.labels[i]: round(float(s), 6) for i, s in enumerate(p)}} for p in probs]

    __call__ = forward
