"""Patch neurons: extra FFN neurons, each a key k, a bias b and a value v. For an FFN input q the patch adds
sum_i act(q . k_i + b_i) v_i to the FFN output, at every position.

Two ways to put them into a model:
  - `PatchBranch`: a parallel branch, hooked onto the adapter's ffn_in (reads q) and ffn_out (adds the
    patch). Works for every architecture and every activation; removing it restores the model exactly.
  - `merge_into`: concatenate the neurons into the FFN's two Linear layers (one row and one column each),
    exact when the patch uses the FFN's own activation and the FFN has biases (BERT, GPT-2, BART). The
    merged model costs the same as a plain model one neuron wider per patch.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers.activations import ACT2FN

from .arch import Arch


class PatchNeurons(nn.Module):
    """N patch neurons over hidden size H.  keys (N, H), biases (N,), values (N, H)."""

    def __init__(self, keys: torch.Tensor, biases: torch.Tensor, values: torch.Tensor, activation: str):
        super().__init__()
        self.register_buffer("keys", keys)
        self.register_buffer("biases", biases)
        self.register_buffer("values", values)
        self.activation = activation
        self.act = ACT2FN[activation]

    @classmethod
    def empty(cls, hidden_size: int, activation: str, dtype=torch.float32, device="cpu") -> "PatchNeurons":
        z = lambda *s: torch.zeros(*s, dtype=dtype, device=device)
        return cls(z(0, hidden_size), z(0), z(0, hidden_size), activation)

    def __len__(self) -> int:
        return self.keys.shape[0]

    def preactivation(self, q: torch.Tensor) -> torch.Tensor:
        return q @ self.keys.t() + self.biases            # (..., H) -> (..., N)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if len(self) == 0:
            return torch.zeros_like(q)
        return self.act(self.preactivation(q)) @ self.values   # (..., N) @ (N, H) -> (..., H)

    def select(self, index: torch.Tensor) -> "PatchNeurons":
        """The neurons at `index` (a LongTensor or bool mask), as a new module."""
        return PatchNeurons(self.keys[index], self.biases[index], self.values[index], self.activation)

    def extend(self, keys, biases, values) -> "PatchNeurons":
        return PatchNeurons(
            torch.cat([self.keys, keys.to(self.keys)]),
            torch.cat([self.biases, biases.to(self.biases)]),
            torch.cat([self.values, values.to(self.values)]),
            self.activation,
        )


class PatchBranch:
    """Attaches PatchNeurons to a model as a parallel branch of its last FFN (two forward hooks)."""

    def __init__(self, arch: Arch, neurons: PatchNeurons):
        self.arch = arch
        self.neurons = neurons
        self._q = None
        self._handles = [
            arch.ffn_in.register_forward_pre_hook(self._read_q),
            arch.ffn_out.register_forward_hook(self._add_patch),
        ]

    def _read_q(self, module, args):
        self._q = args[0]

    def _add_patch(self, module, args, output):
        q, self._q = self._q, None
        return output + self.neurons(q)

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []


def can_merge(arch: Arch, neurons: PatchNeurons) -> bool:
    return arch.mergeable and neurons.activation == arch.ffn_act_name


def merge_into(arch: Arch, neurons: PatchNeurons) -> None:
    """Concatenate the neurons into the last FFN's weights (in place). Raises where that is not exact."""
    if not can_merge(arch, neurons):
        raise ValueError(
            f"patch neurons ({neurons.activation}) cannot be merged exactly into a {arch.name} FFN "
            f"({arch.ffn_act_name}{', SwiGLU' if not arch.mergeable else ''}); attach them as a PatchBranch"
        )
    w_in, b_in, w_out = arch.ffn_weights()       # (I, H), (I,), (H, I)
    with torch.no_grad():
        arch.set_ffn_weights(
            torch.cat([w_in, neurons.keys.to(w_in)]),
            torch.cat([b_in, neurons.biases.to(b_in)]),
            torch.cat([w_out, neurons.values.t().to(w_out)], dim=1),
        )
