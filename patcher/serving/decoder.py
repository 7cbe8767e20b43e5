"""A decoder-only model as one KV-cached ONNX graph, in the layout Hugging Face Optimum's ORTModelForCausalLM and
onnxruntime-genai (genai_config.json) read:

  inputs   input_ids (B, T), attention_mask (B, P + T), position_ids (B, T),
           past_key_values.{i}.key / .value (B, kv_heads, P, head_dim) for each cache layer i
  outputs  logits (B, T, V), present.{i}.key / .value (B, kv_heads, P + T, head_dim)

One merged graph: an empty past (P = 0) is the prefill, T = 1 a decode step. Patch neurons with a subject key
(engine/subject.py) need max_{p <= t} u . z[p] over every earlier position, which the attention cache does not
hold: the graph keeps each position's subject scores u . z[p] (masked where the attention mask is 0) in extra
cache layers after the model's own, packed into the same (B, kv_heads, P, head_dim) shape, and takes the max over
them at each step. That is exact (a max over the same numbers) and costs N numbers per position; a client that
feeds back every present.* as the next past.* (both libraries do) carries it without knowing it is there.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .onnx_model import mask_positions

SUBJECT_FILL = -1e4      # an empty or padded position's subject score: the neuron's subject part stays off


@dataclass
class CacheLayout:
    """The cache's shape: the model's attention layers, then `subject_layers` layers holding `neurons` scores."""

    layers: int
    kv_heads: int
    head_dim: int
    neurons: int = 0             # patch neurons with a subject key (0: no subject layers)

    @property
    def subject_layers(self) -> int:
        return math.ceil(self.neurons / (2 * self.kv_heads * self.head_dim))

    @property
    def cache_layers(self) -> int:
        return self.layers + self.subject_layers

    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kind}" for i in range(self.cache_layers) for kind in ("key", "value")]

    def present_names(self) -> list[str]:
        return [f"present.{i}.{kind}" for i in range(self.cache_layers) for kind in ("key", "value")]

    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "position_ids", *self.past_names()]

    def output_names(self) -> list[str]:
        return ["logits", *self.present_names()]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {"input_ids": {0: "batch_size", 1: "sequence_length"},
                "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
                "position_ids": {0: "batch_size", 1: "sequence_length"},
                "logits": {0: "batch_size", 1: "sequence_length"}}
        axes |= {name: {0: "batch_size", 2: "past_sequence_length"} for name in self.past_names()}
        return axes | {name: {0: "batch_size", 2: "total_sequence_length"} for name in self.present_names()}

    def pack(self, scores: torch.Tensor) -> list[torch.Tensor]:
        """Subject scores (B, P, N) -> 2 * subject_layers tensors (B, kv_heads, P, head_dim), padded with SUBJECT_FILL."""
        width = 2 * self.subject_layers * self.kv_heads * self.head_dim
        padded = F.pad(scores, (0, width - self.neurons), value=SUBJECT_FILL)            # (B, P, width)
        parts = padded.unflatten(-1, (2 * self.subject_layers, self.kv_heads, self.head_dim))  # (B, P, 2S, kv, hd)
        return list(parts.permute(2, 0, 3, 1, 4).unbind(0))

    def unpack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The inverse of pack: 2 * subject_layers tensors (B, kv_heads, P, head_dim) -> (B, P, N)."""
        parts = torch.stack(tensors, 0).permute(1, 3, 0, 2, 4)                          # (B, P, 2S, kv, hd)
        width = 2 * self.subject_layers * self.kv_heads * self.head_dim      # a number, not -1: P may be 0
        return parts.reshape(parts.shape[0], parts.shape[1], width)[..., : self.neurons]


def cache_layout(model, branch=None) -> CacheLayout:
    """The model's cache shape, read off one cached call (any architecture transformers caches with DynamicCache);
    with `branch` (a PatchBranch), room for its neurons' subject scores."""
    with torch.no_grad():
        out = model(input_ids=torch.zeros(1, 1, dtype=torch.long), use_cache=True)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    _, kv_heads, _, head_dim = cache.layers[0].keys.shape
    neurons = len(branch.neurons) if branch is not None and branch.reads_subject else 0
    return CacheLayout(len(cache.layers), kv_heads, head_dim, neurons)


class CachedDecoder(torch.nn.Module):
    """The model (patches inside: merged, or a PatchBranch's hooks) as a function of the layout's flat inputs to its
    flat outputs, for torch.onnx.export."""

    def __init__(self, model, layout: CacheLayout, branch=None):
        super().__init__()
        self.model, self.layout = model, layout
        self.branch = branch if layout.neurons else None
        accepts = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in accepts else "past_key_values"     # transformers 5.24 renamed it
        self.eval()          # a new Module is in training mode, and export restores that mode onto the model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        # input_ids (B, T), attention_mask (B, P + T), position_ids (B, T), past: 2 * cache_layers (B, kv, P, hd)
        n = self.layout.layers
        cache = DynamicCache(config=self.model.config)
        for i in range(n):
            cache.update(past[2 * i], past[2 * i + 1], i)
        if self.branch is not None:
            self.branch.past_scores = self.layout.unpack(list(past[2 * n:]))              # (B, P, N)
        try:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=True, **{self.cache_arg: cache})
            present = [t for layer in cache.layers for t in (layer.keys, layer.values)]       # updated in place
            if self.branch is not None:
                present += self.layout.pack(self.branch.present_scores)                  # (B, kv, P + T, hd) each
        finally:
            if self.branch is not None:
                self.branch.past_scores = self.branch.present_scores = None
        return (out.logits, *present)                                                   # (B, T, V), ...


def sample_inputs(layout: CacheLayout, vocab_size: int) -> tuple[torch.Tensor, ...]:
    """Inputs to trace with: batch 2, 3 new tokens after 2 cached, the first row left-padded (the trace must take
    the masked attention path that padded batches need)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (2, 3), generator=g)
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    positions = mask_positions(mask)[:, 2:]
    past = [torch.randn(2, layout.kv_heads, 2, layout.head_dim, generator=g) for _ in layout.past_names()]
    return (ids, mask, positions, *past)


def genai_config(config, generation_config, tokenizer, layout: CacheLayout, filename: str) -> dict:
    """onnxruntime-genai's genai_config.json for this graph (its 'decoder' model: names, the cache's shape); token
    ids the model does not name are left out."""
    eos = generation_config.eos_token_id if generation_config is not None else None
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    ids = {"bos_token_id": config.bos_token_id if config.bos_token_id is not None else tokenizer.bos_token_id,
           "eos_token_id": eos if eos is not None else tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    return {
        "model": {
            "type": config.model_type,
            **{k: v for k, v in ids.items() if v is not None},
            "vocab_size": config.vocab_size,
            "context_length": positions,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename,
                "head_size": layout.head_dim,
                "hidden_size": config.hidden_size,
                "num_attention_heads": config.num_attention_heads,
                "num_key_value_heads": layout.kv_heads,
                "num_hidden_layers": layout.cache_layers,       # the subject layers ride along as cache layers
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "max_length": positions, "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0, "early_stopping": True, "length_penalty": 1.0,
                   "no_repeat_ngram_size": 0, "diversity_penalty": 0.0},
    }
