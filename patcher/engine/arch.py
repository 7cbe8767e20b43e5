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

from .cpu.int8 import Int8Rows


def matrix_times(rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(N, H), (n, H) -> rows @ keys.t() (N, n). One key is multiplied as two: on a CPU the BLAS's matrix-vector
    path read a 98k x 576 memory in 14.5 ms, its matrix-matrix path in 6.7 ms (2 cores); SmolLM2's output layer
    4.4 against 3.4 ms."""
    if len(keys) == 1 and rows.device.type == "cpu":
        return (rows @ keys.repeat(2, 1).t())[:, :1]
    return rows @ keys.t()


# oneDNN's linear (what torch.utils.mkldnn's deprecated MkldnnLinear calls), where this torch build has it
_ONEDNN = getattr(torch._C._nn, "mkldnn_linear", None) if torch.backends.mkldnn.is_available() else None


class _OutputProduct(torch.autograd.Function):
    """x (m, H) -> x @ W.t() (m, V) through an OutputLayer: its forward exact, its gradient as the layer says."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return layer.product(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.layer.grad_input(grad), None


class OutputLayer:
    """A frozen output layer W (V, H): x (..., H) -> x @ W.t() (..., V). On a CPU the product of a few rows with
    the large matrix is bound by reading it (SmolLM2's 49152 x 576: 113 MB), and the BLAS reads it several
    times slower in some orientations than in others, so the product takes the one measured fastest for its
    number of rows and threads (SmolLM2's head, this project's 2-core AMD EPYC, MKL; medians in ms):
        rows               1     2-6      8     12     48
        1 thread  x @ W.t() 5.1 | W @ x.t() 6.5-14 | oneDNN 14 / 16 / 35  (MKL's best: 16 / 27 / 50)
        2 threads W @ x.t() 4.0 | W @ x.t() 4.5-7.4 | oneDNN 9.4 / 9.6 / 22 (MKL's best: 9.5 / 18 / 26)
    (1 row as W @ [x; x].t(): the BLAS's matrix-vector path is slower.) oneDNN's product is float32 like the
    BLAS's, in another summation order. Every training step of the reference settings and the fine-tuning
    baselines, every full-vocabulary check of a patcher edit and every judgement multiplies rows by it.

    `grad` "int8" (float32 on a CPU): the gradient g (m, V) -> g @ W goes through an int8 copy of W.t() (patcher/int8.py,
    28 MB): 0.9-1.6 ms instead of 5-8.5 for 1-4 rows, within 1% of the exact gradient (SmolLM2, the gradient
    of a cross-entropy); the forward, and so every loss, check and judgement, stays exact. "exact": float32."""

    ONEDNN_FROM = 8                # rows from which oneDNN's product is the fastest (table above)

    def __init__(self, weight: torch.Tensor, grad: str = "exact"):
        if grad not in ("exact", "int8"):
            raise ValueError(f"unknown output_grad {grad!r}: 'exact' or 'int8'")
        self.weight = weight.detach()                                          # (V, H)
        self.weight_t = self.weight.t().contiguous()                           # (H, V)
        self.grad = grad
        self._int8_t: Int8Rows | None = None                                   # W.t() as int8, made at first use
        self._onednn: torch.Tensor | None = None                               # W in oneDNN's layout, at first use

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])                                      # (m, H)
        out = _OutputProduct.apply(flat, self) if flat.requires_grad else self.product(flat)
        return out.reshape(*x.shape[:-1], out.shape[-1])                       # (..., V)

    def product(self, flat: torch.Tensor) -> torch.Tensor:
        """(m, H) -> (m, V), float32 (the orientation as the class says)."""
        if flat.device.type != "cpu" or flat.dtype != torch.float32:
            return flat @ self.weight_t
        if len(flat) == 1 and torch.get_num_threads() == 1:
            return flat @ self.weight_t
        if len(flat) < self.ONEDNN_FROM or not _ONEDNN:
            return matrix_times(self.weight, flat).t().contiguous()
        if self._onednn is None:
            self._onednn = self.weight.to_mkldnn()
        return _ONEDNN(flat.detach().to_mkldnn(), self._onednn, None).to_dense()

    def grad_input(self, grad: torch.Tensor) -> torch.Tensor:
        """(m, V) -> (m, H): grad @ W."""
        if grad.device.type != "cpu":
            return grad @ self.weight
        if self.grad == "int8" and grad.dtype == torch.float32:      # float64 (exactness tests) stays exact
            if self._int8_t is None:
                self._int8_t = Int8Rows(self.weight_t)
            return self._int8_t.times(grad)
        return (self.weight_t @ grad.t()).t()


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
        """The module whose first input is layer `layer`'s FFN input (the subject key, patcher/subject.py);
        decoder-only models only: position t of that input has seen positions p <= t alone."""
        raise ValueError(f"{self.name} has no subject key: decoder-only models (llama, gpt2) only")

    def ffn_module(self) -> nn.Module:
        """The last FFN as a module, q (..., H) -> its output (..., H) before the residual add (for the
        fine-tuning baselines, patcher/finetune.py)."""
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


class LlamaArch(Arch):
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

    def tail(self, h):
        return self.output_layer(self.norm_in(h))

    def tail_rows(self, h, rows):
        return self.norm_in(h) @ self.head_rows(rows)              # (..., R)

    def backbone(self):
        return self.model.model

    def ffn_in_at(self, layer):
        return self.model.model.layers[layer].mlp

    def ffn_module(self):
        return self.ffn_in                       # the SwiGLU MLP


class GPT2Arch(Arch):
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

    def tail(self, h):
        return self.output_layer(self.norm_in(h))

    def tail_rows(self, h, rows):
        return self.norm_in(h) @ self.head_rows(rows)              # (..., R)

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
