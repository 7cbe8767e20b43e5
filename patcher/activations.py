"""An on-disk cache of Task.cache results for large example sets.

The memory, validation memory and locality sets are the same example sets on every run against the same
model, and running the model over them was most of a pipeline run's fixed cost (about a minute for MiniLM,
two for SmolLM2 on 2 cores). They are stored once per (model, examples) under $PATCHER_CACHE/activations as
safetensors; PATCHER_ACTIVATION_CACHE=off turns the cache off.

The model is identified by what it computes, not by a path: a fingerprint of the captured FFN input and
stream on a fixed probe sentence (rounded), plus the probe's token ids. Any change to the weights or the
tokenizer changes it; a miss only costs the computation.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .models.base import cache_dir

MIN_EXAMPLES = 256           # smaller sets are cheaper to compute than to look up
PROBE = "The quick brown fox jumps over the lazy dog near the river bank"


def directory() -> Path | None:
    if os.environ.get("PATCHER_ACTIVATION_CACHE", "").lower() in ("off", "0", "false"):
        return None
    return cache_dir() / "activations"


def key(task, examples, fingerprint: str) -> str:
    content = json.dumps([task.name, task.max_length, fingerprint, [[e.input, e.target] for e in examples]])
    return hashlib.sha256(content.encode()).hexdigest()[:32]


def fingerprint(task, probe_cached) -> str:
    """probe_cached: Task.cache of the probe example, computed by the caller."""
    ids = task.tokenizer(PROBE)["input_ids"]
    parts = [type(task.arch.model).__name__, str(ids)]
    parts += [str(torch.round(t.float(), decimals=3).tolist()) for t in (probe_cached.q, probe_cached.h)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def load(path: Path, device) -> list | None:
    from .tasks import Cached

    if not path.exists():
        return None
    t = load_file(str(path), device=str(device))
    p, m = t["position_offsets"].tolist(), t["memory_offsets"].tolist()
    return [Cached(q=t["q"][p[i]:p[i + 1]], h=t["h"][p[i]:p[i + 1]], targets=t["targets"][p[i]:p[i + 1]],
                   q_memory=t["q_memory"][m[i]:m[i + 1]]) for i in range(len(p) - 1)]


def save(path: Path, cached: list) -> None:
    """Written to a temporary name and renamed: a concurrent reader sees the whole file or none."""
    def offsets(tensors):
        return torch.tensor([0] + [len(x) for x in tensors]).cumsum(0)

    tensors = {"q": torch.cat([c.q for c in cached]), "h": torch.cat([c.h for c in cached]),
               "targets": torch.cat([c.targets for c in cached]),
               "q_memory": torch.cat([c.q_memory for c in cached]),
               "position_offsets": offsets([c.q for c in cached]),
               "memory_offsets": offsets([c.q_memory for c in cached])}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(partial))
    os.replace(partial, path)
