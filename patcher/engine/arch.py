"""Per-architecture adapters: where the last feed-forward layer is, what its input is, and the position-wise
function from the residual stream after it to the logits.

Transformer-Patcher only touches the LAST FFN. Everything after that FFN (residual add, final norm, head) acts
on each position separately, so with the FFN input `q` and the pre-norm stream `h` cached per position, the
logits of a patched model are `tail(h + patch(q))` without running the rest of the model again.

Each adapter names three modules of the wrapped model:
  ffn_in   the module whose first input is q, the FFN input            (hooked to read q)
  ffn_out  the Linear whose output receives the patch neurons' output (hooked to add the patch)
  norm_in  the norm whose input is h = residual + FFN(q) + patch(q)    (hooked to read h)
and `tail(h)`: logits from h, per position.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers.activations import ACT2FN

from .cpu.output_layer import OutputLayer


class Arch:
    """Base adapter. Subclasses set the modules in __init__ and implement `tail`."""

    name = "base"
    task = "generation"          # what the model's head does: "classification" or "generation"
    mergeable = True             # patch neurons can be concatenated into the FFN weights exactly
    is_encoder_decoder = False

    def __init__(self, model: nn.Module):
        self.model = model
        self.ffn_in: nn.Module
        self.ffn_out: nn.Module
        self.norm_in: nn.Module
        self.hidden_size: int
        self.ffn_act_name: str   # transformers activation name of the FFN, a key of ACT2FN
        self._output: OutputLayer | None = None      # made at the first call, on the model's device
        self.output_grad = "exact"                   # OutputLayer's gradient: "exact" or "int8" (the editor's setting)
        self._head_rows: tuple[torch.Tensor, torch.Tensor] | None = None   # (rows, their weights): head_rows

    @property
    def ffn_act(self):
        return ACT2FN[self.ffn_act_name]

    def tail(self, h: torch.Tensor) -> torch.Tensor:
        """(..., H) pre-norm stream after the last FFN -> (..., V) logits."""
        raise NotImplementedError

    def output_layer(self, x: torch.Tensor) -> torch.Tensor:
        """(..., H) final-norm output -> (..., V): the LM head's product (no bias), made once per adapter."""
        if self._output is None:
            self._output = OutputLayer(self.model.lm_head.weight, self.output_grad)
        return self._output(x)

    def tail_rows(self, h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(..., H), (R,) output ids -> (..., R): the logits of those outputs only (LMs override this to skip
        the rest of the output layer)."""
        return self.tail(h)[..., rows]

    def head_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """(R,) output ids -> the LM head's weights of those outputs, transposed (H, R). Kept for the last `rows`
        tensor asked for: a patch trains on the same candidate outputs step after step (they change only at a
        check), and gathering them each step was a copy of thousands of rows."""
        if self._head_rows is None or self._head_rows[0] is not rows:
            self._head_rows = (rows, self.model.lm_head.weight[rows].t().contiguous())
        return self._head_rows[1]

    def backbone(self) -> nn.Module:
        """The model without its LM head: what caching q and h runs (the head's product at every position of a
        batch was a fifth of SmolLM2's forward pass, and the cache reads only h before it)."""
        return self.model

    def ffn_in_at(self, layer: int) -> nn.Module:
        """The module whose first input is layer `layer`'s FFN input (the subject key, patcher/engine/subject.py);
        decoder-only models only: position t of that input has seen positions p <= t alone."""
        raise ValueError(f"{self.name} has no subject key: decoder-only models (llama, gpt2) only")

    def ffn_module(self) -> nn.Module:
        """The last FFN as a module, q (..., H) -> its output (..., H) before the residual add (for the
        fine-tuning baselines, patcher/engine/finetune.py)."""
        raise NotImplementedError

    # merging: the FFN's two projections as (in_weight [I, H], in_bias [I], out_weight [H, I]) and back
    def ffn_weights(self):
        raise NotImplementedError

    def set_ffn_weights(self, w_in, b_in, w_out):
        raise NotImplementedError


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.to(dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


class BertArch(Arch):
    """BERT-family encoders for sequence classification (MiniLM). Post-LN: h = q + dense(gelu(W q + b)),
    then the last LayerNorm, the pooler on [CLS] and the classifier."""

    name = "bert"
    task = "classification"

    def __init__(self, model):
        super().__init__(model)
        layer = model.bert.encoder.layer[-1]
        self.layer = layer
        self.ffn_in = layer.intermediate
        self.ffn_out = layer.output.dense
        self.norm_in = layer.output.LayerNorm
        self.hidden_size = model.config.hidden_size
        self.ffn_act_name = model.config.hidden_act
        if model.bert.pooler is None:
            raise ValueError("BERT classification needs the pooler ([CLS] -> dense -> tanh)")

    def tail(self, h):
        # h: (..., H) taken at [CLS]; logits (..., n_labels)
        # eval semantics: the classifier's dropout is the identity here
        pooled = self.model.bert.pooler.activation(self.model.bert.pooler.dense(self.norm_in(h)))
        return self.model.classifier(pooled)

    def ffn_module(self):
        return nn.Sequential(self.layer.intermediate, self.layer.output.dense)

    def ffn_weights(self):
        d_in, d_out = self.layer.intermediate.dense, self.layer.output.dense
        return d_in.weight, d_in.bias, d_out.weight

    def set_ffn_weights(self, w_in, b_in, w_out):
        self.layer.intermediate.dense = _linear(w_in, b_in)
        self.layer.output.dense = _linear(w_out, self.layer.output.dense.bias)
        self.ffn_out = self.layer.output.dense


class DecoderArch(Arch):
    """A decoder-only LM: the final norm, then the LM head (no bias)."""

    def tail(self, h):
        return self.output_layer(self.norm_in(h))

    def tail_rows(self, h, rows):
        return self.norm_in(h) @ self.head_rows(rows)              # (..., R)


class LlamaArch(DecoderArch):
    """Llama-family decoders (SmolLM2): pre-norm, SwiGLU FFN without biases, final RMSNorm, lm_head.
    A patch neuron act(q.k + b) v is not a SwiGLU neuron, so patches stay a parallel branch."""

    name = "llama"
    mergeable = False

    def __init__(self, model):
        super().__init__(model)
        layer = model.model.layers[-1]
        self.ffn_in = layer.mlp
        self.ffn_out = layer.mlp.down_proj
        self.norm_in = model.model.norm
        self.hidden_size = model.config.hidden_size
        self.ffn_act_name = model.config.hidden_act

    def backbone(self):
        return self.model.model

    def ffn_in_at(self, layer):
        return self.model.model.layers[layer].mlp

    def ffn_module(self):
        return self.ffn_in                       # the SwiGLU MLP


class GPT2Arch(DecoderArch):
    """GPT-2: pre-LN blocks, MLP c_fc -> gelu_new -> c_proj (Conv1D, weights stored as [in, out]), ln_f, lm_head."""

    name = "gpt2"

    def __init__(self, model):
        super().__init__(model)
        block = model.transformer.h[-1]
        self.mlp = block.mlp
        self.ffn_in = block.mlp
        self.ffn_out = block.mlp.c_proj
        self.norm_in = model.transformer.ln_f
        self.hidden_size = model.config.hidden_size
        self.ffn_act_name = model.config.activation_function

    def backbone(self):
        return self.model.transformer

    def ffn_in_at(self, layer):
        return self.model.transformer.h[layer].mlp

    def ffn_module(self):
        return self.mlp

    def ffn_weights(self):
        return self.mlp.c_fc.weight.t(), self.mlp.c_fc.bias, self.mlp.c_proj.weight.t()

    def set_ffn_weights(self, w_in, b_in, w_out):
        from transformers.pytorch_utils import Conv1D

        c_fc = Conv1D(w_in.shape[0], w_in.shape[1]).to(w_in)
        c_proj = Conv1D(w_out.shape[0], w_out.shape[1]).to(w_out)
        with torch.no_grad():
            c_fc.weight.copy_(w_in.t())
            c_fc.bias.copy_(b_in)
            c_proj.weight.copy_(w_out.t())
            c_proj.bias.copy_(self.mlp.c_proj.bias)
        self.mlp.c_fc, self.mlp.c_proj = c_fc, c_proj
        self.ffn_out = c_proj


class BartArch(Arch):
    """BART encoder-decoder: the patch goes in the last DECODER layer. Post-LN: h = q + fc2(gelu(fc1 q)),
    then final_layer_norm, lm_head and final_logits_bias."""

    name = "bart"
    is_encoder_decoder = True

    def __init__(self, model):
        super().__init__(model)
        layer = model.model.decoder.layers[-1]
        self.layer = layer
        self.ffn_in = layer.fc1
        self.ffn_out = layer.fc2
        self.norm_in = layer.final_layer_norm
        self.hidden_size = model.config.d_model
        self.ffn_act_name = model.config.activation_function

    def tail(self, h):
        return self.output_layer(self.norm_in(h)) + self.model.final_logits_bias

    def tail_rows(self, h, rows):
        return self.norm_in(h) @ self.head_rows(rows) + self.model.final_logits_bias[0, rows]

    def backbone(self):
        return self.model.model

    def ffn_module(self):
        return nn.Sequential(self.layer.fc1, self.ffn_act, self.layer.fc2)

    def ffn_weights(self):
        return self.layer.fc1.weight, self.layer.fc1.bias, self.layer.fc2.weight

    def set_ffn_weights(self, w_in, b_in, w_out):
        self.layer.fc1 = _linear(w_in, b_in)
        self.layer.fc2 = _linear(w_out, self.layer.fc2.bias)
        self.ffn_in, self.ffn_out = self.layer.fc1, self.layer.fc2


ADAPTERS = {
    "BertForSequenceClassification": BertArch,
    "LlamaForCausalLM": LlamaArch,
    "GPT2LMHeadModel": GPT2Arch,
    "BartForConditionalGeneration": BartArch,
}


def adapter_for(model: nn.Module) -> Arch:
    """The adapter for a transformers model, by its class name."""
    cls = ADAPTERS.get(type(model).__name__)
    if cls is None:
        raise ValueError(f"unsupported architecture {type(model).__name__}; supported: {', '.join(ADAPTERS)}")
    return cls(model)
