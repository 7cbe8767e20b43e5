"""The patch layer: extra FFN neurons, each a key k, a bias b and a value v. For an FFN input q the patch adds
sum_i act(q . k_i + b_i) v_i to the FFN output, at every position. With a subject key (subject.py) the
pre-activation also adds max_{p <= t} u_i . z[p], z an earlier layer's FFN input.

`Neurons` computes that once for both views of it: `NewNeurons`, one edit's trainable neurons, and
`PatchNeurons`, a patch set's frozen ones (what `NewNeurons.frozen` gives). Two ways to put them into a model:
  - `PatchBranch`: a parallel branch, hooked onto the adapter's ffn_in (reads q) and ffn_out (adds the
    patch). Works for every architecture and every activation; removing it restores the model exactly.
  - `merge_into`: concatenate the neurons into the FFN's two Linear layers (one row and one column each),
    exact when the patch uses the FFN's own activation and the FFN has biases (BERT, GPT-2, BART). The
    merged model costs the same as a plain model one neuron wider per patch.
"""
from __future__ import annotations

import math

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


class Neurons(nn.Module):
    """What every set of n patch neurons computes, trainable or frozen: act(q . k_i + b_i [+ subject_i]) v_i.
    Subclasses hold keys (n, H), biases (n,), subject_keys (n, H) or None, and give value_rows() (n, H)."""

    act: nn.Module
    subject_keys: torch.Tensor | None

    def __len__(self) -> int:
        return self.keys.shape[0]

    def value_rows(self) -> torch.Tensor:
        raise NotImplementedError

    def preactivation(self, q: torch.Tensor, z: torch.Tensor | None = None, at: torch.Tensor | None = None,
                      subject: torch.Tensor | None = None) -> torch.Tensor:
        """q (..., P, H) -> (..., P, n). With a subject key also z (..., T, H), the subject layer's input at every
        position, and `at` (..., P) q's positions in it (None: q is at every position, P = T); or the subject
        part itself, `subject` (..., P, n), where the caller keeps its running max (PatchBranch)."""
        a = q @ self.keys.t() + self.biases
        if self.subject_keys is None:
            return a
        if subject is None:
            if z is None:
                raise ValueError(f"these patch neurons read layer {self.subject_layer} too: pass its FFN input z")
            subject = subject_part(z, self.subject_keys, at)
        return a + subject

    def output(self, a: torch.Tensor) -> torch.Tensor:
        """Pre-activations (..., n) -> what the neurons add to the FFN output (..., H)."""
        return self.act(a) @ self.value_rows()

    def forward(self, q: torch.Tensor, z: torch.Tensor | None = None, at: torch.Tensor | None = None,
                subject: torch.Tensor | None = None) -> torch.Tensor:
        if len(self) == 0:
            return torch.zeros_like(q)
        return self.output(self.preactivation(q, z, at, subject))                      # (..., H)


class PatchNeurons(Neurons):
    """A patch set's N frozen neurons over hidden size H.  keys (N, H), biases (N,), values (N, H); with a subject
    key subject_keys (N, H) on the FFN input of layer `subject_layer`. shifts (N,): the part of each bias that is
    a bias shift added once the neuron was trained (EditorConfig.bias_shift), so it can be taken back."""

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

    def value_rows(self) -> torch.Tensor:
        return self.values

    def select(self, index: torch.Tensor) -> "PatchNeurons":
        """The neurons at `index` (a LongTensor or bool mask), as a new module."""
        subject = None if self.subject_keys is None else self.subject_keys[index]
        return PatchNeurons(self.keys[index], self.biases[index], self.values[index], self.activation, subject,
                            self.subject_layer, self.shifts[index])

    def extend(self, more: "PatchNeurons") -> "PatchNeurons":
        """These neurons followed by `more` (same activation; a subject key exactly when these have one)."""
        if (more.subject_keys is None) != (self.subject_keys is None):
            raise ValueError("new neurons must have a subject key exactly when the patch set's neurons do")
        subject = None if more.subject_keys is None else torch.cat([self.subject_keys, more.subject_keys.to(self.keys)])
        return PatchNeurons(
            torch.cat([self.keys, more.keys.to(self.keys)]),
            torch.cat([self.biases, more.biases.to(self.biases)]),
            torch.cat([self.values, more.values.to(self.values)]),
            self.activation, subject, self.subject_layer,
            torch.cat([self.shifts, more.shifts.to(self.biases)]),
        )

    def with_shifts(self, shifts: torch.Tensor) -> "PatchNeurons":
        """The same neurons with each bias shift replaced by `shifts` (N,)."""
        return PatchNeurons(self.keys, self.biases - self.shifts + shifts.to(self.biases), self.values,
                            self.activation, self.subject_keys, self.subject_layer, shifts)


class NewNeurons(Neurons):
    """The n trainable neurons of one edit. Key k_i = q_i / ||q_i||^2 (pre-activation 1 on its own edit
    position), bias 0, value = a random direction (unit norm in expectation) times a trainable scale. With a
    subject key (z_subject (H,): the subject layer's input at the subject's last token) each part starts at half:
    k_i = q_i / 2||q_i||^2, u_i = z / 2||z||^2."""

    def __init__(self, q_edit: torch.Tensor, activation: str, scale_init: float, generator: torch.Generator,
                 z_subject: torch.Tensor | None = None, subject_layer: int | None = None):
        super().__init__()
        n, hidden = q_edit.shape                                                    # q_edit: (n, H)
        share = 1.0 if z_subject is None else 0.5
        self.keys = nn.Parameter(share * q_edit / q_edit.pow(2).sum(-1, keepdim=True))   # (n, H)
        self.subject_keys = None if z_subject is None else nn.Parameter(
            (share * z_subject / z_subject.pow(2).sum()).expand(n, hidden).clone())      # (n, H)
        self.subject_layer = subject_layer
        self.biases = nn.Parameter(torch.zeros(n, dtype=q_edit.dtype, device=q_edit.device))
        directions = torch.randn(n, hidden, generator=generator, dtype=q_edit.dtype) / math.sqrt(hidden)
        self.directions = nn.Parameter(directions.to(q_edit.device))                # (n, H)
        self.scales = nn.Parameter(torch.full((n,), scale_init, dtype=q_edit.dtype, device=q_edit.device))
        self.activation = activation
        self.act = activation_fn(activation)

    def value_rows(self) -> torch.Tensor:
        return self.scales.unsqueeze(-1) * self.directions                           # (n, H)

    def frozen(self, bias_shift: float | torch.Tensor = 0.0, value_gain: float = 1.0) -> PatchNeurons:
        """The trained neurons as patch-set neurons: biases raised by bias_shift (a number or one per neuron,
        (n,), kept as their shifts) and values multiplied by value_gain."""
        with torch.no_grad():
            subject = None if self.subject_keys is None else self.subject_keys.clone()
            shifts = torch.zeros_like(self.biases) + bias_shift                          # (n,)
            return PatchNeurons(self.keys.clone(), self.biases + shifts, self.value_rows() * value_gain,
                                self.activation, subject, None if subject is None else self.subject_layer, shifts)


class PatchBranch:
    """Attaches PatchNeurons to a model as a parallel branch of its last FFN (two forward hooks). Neurons with
    a subject key take two more: the subject layer's FFN input, and the model call itself, so that the running
    max carries on over a KV cache (generation one token at a time) and skips left padding. An exported decoder
    (serving/export.py) carries the earlier positions' subject scores in its cache instead: it sets
    `past_scores` before a call and reads `present_scores` after it."""

    def __init__(self, arch: Arch, neurons: PatchNeurons):
        self.arch = arch
        self.neurons = neurons
        self._q = None
        self._subject = None            # (B, T, N) running max of the subject part in this call
        self._carry = None              # (B, N) the running max at the last position so far (KV-cached calls)
        self._call = {}
        self.past_scores = None         # (B, P, N) earlier positions' subject scores, given by an exported cache
        self.present_scores = None      # (B, P + T, N) those and this call's, for the cache's next step
        self._handles = [
            arch.ffn_in.register_forward_pre_hook(self._read_q),
            arch.ffn_out.register_forward_hook(self._add_patch),
        ]
        self.reads_subject = getattr(neurons, "subject_layer", None) is not None
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
        if self.past_scores is not None:            # the max over the cached positions (none: running's own first)
            earlier = torch.cat([self.past_scores, running[:, :1]], 1).amax(1, keepdim=True)    # (B, 1, N)
            running = torch.maximum(running, earlier)
            self.present_scores = torch.cat([self.past_scores, scores], 1)           # (B, P + T, N)
        elif self._call.get("continues") and self._carry is not None:
            running = torch.maximum(running, self._carry.unsqueeze(1))
        self._carry = running[:, -1]
        self._subject = running

    def _add_patch(self, module, args, output):
        q, self._q = self._q, None
        if not self.reads_subject:                  # any q -> output module (the reference path's branch)
            return output + self.neurons(q)
        return output + self.neurons(q, subject=self._subject)                     # (B, T, H)

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
