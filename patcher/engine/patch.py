"""Patch neurons: extra FFN neurons, each a key k, a bias b and a value v. For an FFN input q the patch adds
sum_i act(q . k_i + b_i) v_i to the FFN output, at every position. With a subject key (patcher/subject.py)
the pre-activation also adds max_{p <= t} u_i . z[p], z an earlier layer's FFN input.

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
from .subject import running_max, subject_part


class Knee(nn.Module):
    """ReLU up to pre-activation 1, slope 0.1 beyond: a neuron firing weakly on a wording it was not trained on
    acts almost as fully as on its trained ones (ReLU scales its output with the pre-activation), and a hard
    edit can still grow its output past 1 (a hard cap at 1 left 2 of SmolLM2's first 100 mistakes unfixable)."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a.clamp(0, 1) + 0.1 * torch.relu(a - 1)


def activation_fn(name: str) -> nn.Module:
    """A patch activation by name: 'knee' (above) or any transformers activation name."""
    return Knee() if name == "knee" else ACT2FN[name]


class PatchNeurons(nn.Module):
    """N patch neurons over hidden size H.  keys (N, H), biases (N,), values (N, H); with a subject key
    subject_keys (N, H) on the FFN input of layer `subject_layer`. shifts (N,): the part of each bias that is a
    bias shift added once the neuron was trained (EditorConfig.bias_shift), so it can be taken back."""

    def __init__(self, keys: torch.Tensor, biases: torch.Tensor, values: torch.Tensor, activation: str,
                 subject_keys: torch.Tensor | None = None, subject_layer: int | None = None,
                 shifts: torch.Tensor | None = None):
        super().__init__()
        if (subject_keys is None) != (subject_layer is None):
            raise ValueError("subject keys and their layer come together")
        self.register_buffer("keys", keys)
        self.register_buffer("biases", biases)
        self.register_buffer("values", values)
        self.register_buffer("subject_keys", subject_keys)
        self.register_buffer("shifts", torch.zeros_like(biases) if shifts is None else shifts.to(biases))
        self.subject_layer = subject_layer
        self.activation = activation
        self.act = activation_fn(activation)

    @classmethod
    def empty(cls, hidden_size: int, activation: str, dtype=torch.float32, device="cpu",
              subject_layer: int | None = None) -> "PatchNeurons":
        z = lambda *s: torch.zeros(*s, dtype=dtype, device=device)
        return cls(z(0, hidden_size), z(0), z(0, hidden_size), activation,
                   None if subject_layer is None else z(0, hidden_size), subject_layer)

    def __len__(self) -> int:
        return self.keys.shape[0]

    def preactivation(self, q: torch.Tensor, z: torch.Tensor | None = None, at: torch.Tensor | None = None):
        """q (..., P, H) -> (..., P, N). With a subject key also z (..., T, H), the subject layer's input at every
        position, and `at` (..., P) q's positions in it (None: q is at every position, P = T)."""
        a = q @ self.keys.t() + self.biases
        if self.subject_keys is not None:
            if z is None:
                raise ValueError(f"these patch neurons read layer {self.subject_layer} too: pass its FFN input z")
            a = a + subject_part(z, self.subject_keys, at)
        return a

    def forward(self, q: torch.Tensor, z: torch.Tensor | None = None, at: torch.Tensor | None = None):
        if len(self) == 0:
            return torch.zeros_like(q)
        return self.act(self.preactivation(q, z, at)) @ self.values   # (..., N) @ (N, H) -> (..., H)

    def select(self, index: torch.Tensor) -> "PatchNeurons":
        """The neurons at `index` (a LongTensor or bool mask), as a new module."""
        subject = None if self.subject_keys is None else self.subject_keys[index]
        return PatchNeurons(self.keys[index], self.biases[index], self.values[index], self.activation, subject,
                            self.subject_layer, self.shifts[index])

    def extend(self, keys, biases, values, subject_keys=None, shifts=None) -> "PatchNeurons":
        """These neurons and n more (shifts: the part of their biases that is a bias shift; default none)."""
        if (subject_keys is None) != (self.subject_keys is None):
            raise ValueError("new neurons must have a subject key exactly when the patch set's neurons do")
        subject = None if subject_keys is None else torch.cat([self.subject_keys, subject_keys.to(self.keys)])
        shifts = torch.zeros(len(biases)) if shifts is None else shifts
        return PatchNeurons(
            torch.cat([self.keys, keys.to(self.keys)]),
            torch.cat([self.biases, biases.to(self.biases)]),
            torch.cat([self.values, values.to(self.values)]),
            self.activation, subject, self.subject_layer,
            torch.cat([self.shifts, shifts.to(self.biases)]),
        )

    def with_shifts(self, shifts: torch.Tensor) -> "PatchNeurons":
        """The same neurons with each bias shift replaced by `shifts` (N,)."""
        return PatchNeurons(self.keys, self.biases - self.shifts + shifts.to(self.biases), self.values,
                            self.activation, self.subject_keys, self.subject_layer, shifts)


class PatchBranch:
    """Attaches PatchNeurons to a model as a parallel branch of its last FFN (two forward hooks). Neurons with
    a subject key take two more: the subject layer's FFN input, and the model call itself, so that the running
    max carries on over a KV cache (generation one token at a time) and skips left padding."""

    def __init__(self, arch: Arch, neurons: PatchNeurons):
        self.arch = arch
        self.neurons = neurons
        self._q = None
        self._subject = None            # (B, T, N) running max of the subject part in this call
        self._carry = None              # (B, N) the running max at the last position so far (KV-cached calls)
        self._call = {}
        self._handles = [
            arch.ffn_in.register_forward_pre_hook(self._read_q),
            arch.ffn_out.register_forward_hook(self._add_patch),
        ]
        self.reads_subject = getattr(neurons, "subject_layer", None) is not None   # any q -> output module works
        if self.reads_subject:
            self._handles += [
                arch.ffn_in_at(neurons.subject_layer).register_forward_pre_hook(self._read_z),
                arch.model.register_forward_pre_hook(self._read_call, with_kwargs=True),
            ]

    def _read_q(self, module, args):
        self._q = args[0]

    def _read_call(self, module, args, kwargs):
        past = kwargs.get("cache", kwargs.get("past_key_values"))    # transformers 5.24 renamed it `cache`
        cached = past.get_seq_length() if hasattr(past, "get_seq_length") else 0
        self._call = {"continues": cached > 0, "mask": kwargs.get("attention_mask")}

    def _read_z(self, module, args):
        z = args[0]                                                                 # (B, T, H)
        scores = z @ self.neurons.subject_keys.t()                                  # (B, T, N)
        mask = self._call.get("mask")
        if mask is not None and mask.dim() == 2:     # left padding (batched generation) must not fire
            real = mask[:, -z.shape[1]:].bool().unsqueeze(-1)                       # (B, T, 1)
            scores = scores.masked_fill(~real, -1e4)
        running = running_max(scores)
        if self._call.get("continues") and self._carry is not None:
            running = torch.maximum(running, self._carry.unsqueeze(1))
        self._carry = running[:, -1]
        self._subject = running

    def _add_patch(self, module, args, output):
        q, self._q = self._q, None
        if not self.reads_subject:
            return output + self.neurons(q)
        if len(self.neurons) == 0:
            return output
        a = q @ self.neurons.keys.t() + self.neurons.biases + self._subject          # (B, T, N)
        return output + self.neurons.act(a) @ self.neurons.values

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []


def can_merge(arch: Arch, neurons: PatchNeurons) -> bool:
    return arch.mergeable and neurons.activation == arch.ffn_act_name and neurons.subject_keys is None


def merge_into(arch: Arch, neurons: PatchNeurons) -> None:
    """Concatenate the neurons into the last FFN's weights (in place). Raises where that is not exact."""
    if not can_merge(arch, neurons):
        raise ValueError(
            f"patch neurons ({neurons.activation}) cannot be merged exactly into a {arch.name} FFN "
            f"({arch.ffn_act_name}{', SwiGLU' if not arch.mergeable else ''})"
            f"{' and read a subject key' if neurons.subject_keys is not None else ''}; attach them as a PatchBranch"
        )
    w_in, b_in, w_out = arch.ffn_weights()       # (I, H), (I,), (H, I)
    with torch.no_grad():
        arch.set_ffn_weights(
            torch.cat([w_in, neurons.keys.to(w_in)]),
            torch.cat([b_in, neurons.biases.to(b_in)]),
            torch.cat([w_out, neurons.values.t().to(w_out)], dim=1),
        )
