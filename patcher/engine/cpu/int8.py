"""An int8 copy of a large float matrix for products that only need to be close: on a CPU a product with a
few rows is bound by reading the matrix, and int8 reads 4x fewer bytes. Used for the memory pass (patcher/engine/memory.py:
the rows it ranks highest are then scored exactly) and the gradient through a language model's output layer
(patcher/engine/arch.py)."""
from __future__ import annotations

import hashlib
import warnings

import torch
import torch.nn.functional as F

# FBGEMM's int8 product (torch's dynamic-quantized linear, x86 CPUs), where this torch build has it
_FBGEMM = "fbgemm" in torch.backends.quantized.supported_engines


class Int8Rows:
    """An int8 copy of a growing (N, H) matrix, for an approximate product with a few keys. Each column is first
    divided by the square root of its largest magnitude (the last FFN input has outlier dimensions: SmolLM2's
    largest is 32, the median 1; per-row scales alone were off by 0.2 on average, by 0.04 this way), each row
    then scaled to +-127.

    `unique`: a row whose int8 copy and scale equal an earlier row's is stored once, with an index (N,) into the
    stored rows, so the product reads each distinct row once and is the same as without. A memory of prompts
    sharing their first words repeats rows (a causal model's FFN input at "The capital of" is the same in
    every prompt that starts so): a third of SmolLM2's 40k memory rows.

    `packed` (x86 CPUs): the stored rows in whole blocks of BLOCK go through FBGEMM, whose int8 x int8 product
    (the keys quantized to 7 bits on the fly, one scale for all) reads the rows at memory speed: 160k SmolLM2
    memory rows, 3 keys, 1 thread: 4.8 ms against 18 for torch's int8-weight product, which converts every
    weight to bfloat16 first; off by a mean 0.0022 against 0.0016 (keys quantized more coarsely), the same top
    1000 rows but for 2-3%. The rows past the last whole block (and `select`'s copies) use torch's product.
    Not for a gradient: one scale for all of a softmax gradient's entries would round its tail to zero."""

    BLOCK = 8192                # rows per FBGEMM block: packing one takes ~35 ms, done once

    def __init__(self, rows: torch.Tensor, unique: bool = False, packed: bool = False):
        self.columns = rows.abs().amax(0).clamp_min(1e-6).sqrt()                    # (H,)
        # the int8 product reads H in blocks of 16 (other widths gave wrong sums or a crash): zero columns pad it
        self._pad = -rows.shape[1] % 16
        self._q = torch.empty(0, rows.shape[1] + self._pad, dtype=torch.int8, device=rows.device)   # stored rows
        self._scale = torch.empty(0, dtype=torch.bfloat16, device=rows.device)
        self._stored, self._n = 0, 0
        self._index = torch.empty(0, dtype=torch.long, device=rows.device) if unique else None   # (N,) row -> stored
        self._ids: dict[bytes, int] = {}                                            # digest of a stored row -> its place
        self._packed = packed and _FBGEMM and rows.device.type == "cpu"
        self._blocks: list = []                                                     # FBGEMM's copies of whole blocks
        self.append(rows)

    def __len__(self) -> int:
        return self._n

    def append(self, rows: torch.Tensor) -> None:
        x = rows / self.columns
        scale = x.abs().amax(1).clamp_min(1e-12) / 127                              # (m,)
        q = F.pad((x / scale.unsqueeze(-1)).round().clamp(-127, 127), (0, self._pad)).to(torch.int8)   # (m, H + pad)
        scale = scale.to(torch.bfloat16)
        if self._index is not None:
            q, scale = self._new_rows(q, scale)
        end = self._stored + len(q)
        self._q, self._scale = room(self._q, self._stored, end), room(self._scale, self._stored, end)
        self._q[self._stored:end], self._scale[self._stored:end] = q, scale
        self._stored, self._n = end, self._n + len(rows)
        while self._packed and (len(self._blocks) + 1) * self.BLOCK <= self._stored:
            self._blocks.append(self._pack(len(self._blocks) * self.BLOCK, (len(self._blocks) + 1) * self.BLOCK))

    def _pack(self, start: int, end: int):
        """FBGEMM's packed copy of stored rows [start, end): the same int8 values and scales."""
        with warnings.catch_warnings():          # torch deprecates its quantized tensors; 2.13 (pinned) has them
            warnings.simplefilter("ignore")
            rows = torch._make_per_channel_quantized_tensor(
                self._q[start:end], self._scale[start:end].double(), torch.zeros(end - start, dtype=torch.long), 0)
            return torch.ops.quantized.linear_prepack(rows, None)

    def _new_rows(self, q: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Indexes rows (m, H + pad) as stored ones; -> those not stored yet."""
        keys = torch.cat([q, scale.view(torch.int8).view(-1, 2)], 1).cpu().numpy()  # a row's int8 copy and scale
        index, new = [], []
        for i, row in enumerate(keys):
            digest = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
            if digest not in self._ids:
                self._ids[digest] = self._stored + len(new)
                new.append(i)
            index.append(self._ids[digest])
        self._index = room(self._index, self._n, self._n + len(q))
        self._index[self._n:self._n + len(q)] = torch.tensor(index, device=q.device)
        picked = torch.tensor(new, dtype=torch.long, device=q.device)
        return q[picked], scale[picked]

    def select(self, rows: torch.Tensor) -> "Int8Rows":
        """The copy of the given rows (R,) only, in that order (each distinct stored row still once), without
        quantizing them again."""
        stored = rows if self._index is None else self._index[rows]
        kept, index = torch.unique(stored, return_inverse=True)
        picked = Int8Rows.__new__(Int8Rows)
        picked.columns, picked._pad, picked._ids = self.columns, self._pad, {}
        picked._q, picked._scale, picked._index = self._q[kept], self._scale[kept], index
        picked._packed, picked._blocks = False, []
        picked._stored, picked._n = len(kept), len(rows)
        return picked

    def times(self, keys: torch.Tensor) -> torch.Tensor:
        """keys (n, H) -> approximately keys @ rows.t() (n, N)."""
        scaled = F.pad(keys * self.columns, (0, self._pad))                                  # (n, H + pad)
        # reduce_range: 7-bit keys, so no pair of products can overflow FBGEMM's 16-bit sums on CPUs without VNNI
        parts = [torch.ops.quantized.linear_dynamic(scaled, block, True) for block in self._blocks]   # (n, BLOCK)
        done = len(self._blocks) * self.BLOCK
        if done < self._stored or not parts:
            parts.append(torch._weight_int8pack_mm(scaled.to(torch.bfloat16), self._q[done:self._stored],
                                                   self._scale[done:self._stored]).float())
        out = parts[0] if len(parts) == 1 else torch.cat(parts, 1)                            # (n, stored)
        if self._index is not None:
            out = out.index_select(1, self._index[: self._n])                                # (n, N)
        return out


def room(buffer: torch.Tensor, used: int, needed: int) -> torch.Tensor:
    """`buffer` if it has `needed` rows, else a buffer of twice that with its first `used` rows."""
    if needed <= len(buffer):
        return buffer
    grown = buffer.new_empty((2 * needed, *buffer.shape[1:]))
    grown[:used] = buffer[:used]
    return grown
