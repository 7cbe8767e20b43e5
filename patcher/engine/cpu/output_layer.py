"""A frozen output layer's product on a CPU, in the orientation that reads the large matrix fastest, and its
gradient through an int8 copy; `matrix_times`, the memory pass's product with one key or a few."""
from __future__ import annotations

import torch

from .int8 import Int8Rows


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

    `grad` "int8" (float32 on a CPU): the gradient g (m, V) -> g @ W goes through an int8 copy of W.t() (int8.py,
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
