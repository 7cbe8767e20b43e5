"""The consumer side of an export directory (patcher/serving/export.py): an onnxruntime session, its tokenizer and
labels, and predictions as a serving system makes them, with inputs put to the model as in training (export.json's
prompt_format): labels, or greedy answers decoded with the graph's KV cache (decoder.py's layout), many prompts
at once (left-padded). Exports without a cache (older versions) recompute the prefix for each token. Needs
onnxruntime, numpy and the tokenizer only."""
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


def cache_inputs(sess) -> list:
    """The graph's past_key_values.* inputs (decoder.py's layout); [] for a graph without a cache."""
    return [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]


def empty_cache(sess, rows: int) -> dict[str, np.ndarray]:
    """The first step's past: (rows, kv_heads, 0, head_dim) of each cache input's own dtype."""
    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
    return {i.name: np.zeros((rows, i.shape[1], 0, i.shape[3]), dtype=dtypes.get(i.type, np.float32))
            for i in cache_inputs(sess)}


def end_ids(generation_config: dict | None, tokenizer) -> set[int]:
    """The tokens that end an answer: the generation config's eos_token_id (one or a list), and the tokenizer's."""
    given = (generation_config or {}).get("eos_token_id")
    ids = set(given if isinstance(given, list) else [] if given is None else [given])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def mask_positions(mask):
    """Each token's position counted over its row's real tokens (0 on padding), the rule every caller gives the cached
    graph its position_ids by: (B, T) numpy array or torch tensor -> the same."""
    return (mask.cumsum(-1) - 1).clip(0)


def generate(sess, prompts: list[list[int]], max_new_tokens: int, pad_id: int, eos_ids: set[int] = frozenset(),
             stop=None, keep_logits: bool = False) -> tuple[list[list[int]], list[list[np.ndarray]]]:
    """Greedy continuations of `prompts` (token ids) with a KV-cached graph, one left-padded batch: a prefill, then
    one token per step for every row. A row ends at one of `eos_ids` (not kept), after max_new_tokens, or once
    `stop(ids)` says so. -> (each row's new ids, and with keep_logits each step's last-position logits (V,))."""
    past_inputs = cache_inputs(sess)
    names = ["logits", *(i.name.replace("past_key_values.", "present.", 1) for i in past_inputs)]
    rows, width = len(prompts), max(map(len, prompts))
    ids = np.full((rows, width), pad_id, dtype=np.int64)                                  # (B, T)
    mask = np.zeros((rows, width), dtype=np.int64)                                       # (B, T), 0 on padding
    for b, prompt in enumerate(prompts):
        ids[b, width - len(prompt):], mask[b, width - len(prompt):] = prompt, 1
    positions = mask_positions(mask)                                                     # (B, T)
    past = empty_cache(sess, rows)
    new, logits_kept, active = [[] for _ in prompts], [[] for _ in prompts], np.ones(rows, dtype=bool)
    for _ in range(max_new_tokens):
        logits, *present = sess.run(names, {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                                            **past})
        last = logits[:, -1]                                                             # (B, V)
        token = last.argmax(-1)                                                          # (B,)
        for b in np.flatnonzero(active):
            if keep_logits:
                logits_kept[b].append(last[b])
            if token[b] in eos_ids:
                active[b] = False
                continue
            new[b].append(int(token[b]))
            if stop is not None and stop(new[b]):
                active[b] = False
        if not active.any():
            break
        past = dict(zip(past, present))                                                  # (B, kv, P + T, hd) each
        ids, positions = token[:, None].astype(np.int64), positions[:, -1:] + 1           # (B, 1)
        mask = np.concatenate([mask, np.ones((rows, 1), dtype=np.int64)], axis=1)        # (B, P + 1)
    return new, logits_kept


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


def token_groups(lengths: list[int], budget: int = TOKENS_PER_RUN) -> list[list[int]]:
    """Indices of `lengths` in groups of similar length whose padded size (rows x longest) stays within `budget`."""
    groups, group = [], []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if group and (len(group) + 1) * lengths[i] > budget:
            groups.append(group)
            group = []
        group.append(i)
    return groups + [group] if group else groups


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
        self.cached = bool(cache_inputs(self.session))                # decoder.py's layout (generation)
        generation = self.directory / "generation_config.json"
        self.end_ids = end_ids(json.loads(generation.read_text()) if generation.exists() else None, self.tokenizer)
        self.max_length = max_tokens(self.config, self.tokenizer)     # inputs are truncated to it

    def forward(self, texts: list[str], max_new_tokens: int = 8) -> list[dict]:
        if self.task == "classification":
            return self._classify(texts)
        room = max(1, self.max_length - max_new_tokens)            # the prompt and the answer fit the positions
        if self.cached:
            return self._generate(texts, max_new_tokens, room)
        step = lambda ids: onnx_logits(self.session, {"input_ids": ids, "attention_mask": np.ones_like(ids)})  # noqa: E731
        return [{"answer": greedy(step, self.tokenizer, text, max_new_tokens, stop="\n",
                                  prompt_format=self.prompt_format, max_length=room).strip()} for text in texts]

    def _generate(self, texts: list[str], max_new_tokens: int, room: int) -> list[dict]:
        prompts = [prompt_ids(self.tokenizer, t, self.prompt_format, room) for t in texts]
        stop = lambda ids: "\n" in self.tokenizer.decode(ids)                          # noqa: E731
        answers = [""] * len(texts)
        for group in token_groups([len(p) for p in prompts]):      # similar lengths together: little padding
            new, _ = generate(self.session, [prompts[i] for i in group], max_new_tokens, self.tokenizer.pad_token_id,
                              self.end_ids, stop)
            for i, ids in zip(group, new):
                answers[i] = self.tokenizer.decode(ids).strip()
        return [{"answer": a} for a in answers]

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
