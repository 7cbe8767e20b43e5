"""An on-disk cache of Task.cache results for large example sets.

The memory, validation memory and locality sets are the same example sets on every run against the same
model, and running the model over them was most of a pipeline run's fixed cost (about a minute for MiniLM,
two for SmolLM2 on 2 cores). They are stored once per (model, examples) under $PATCHER_CACHE/activations as
safetensors; PATCHER_ACTIVATION_CACHE=off turns the cache off. The folder is kept under
PATCHER_ACTIVATION_CACHE_MB (default 2048): after each write the least recently used entries go first (a read
counts as a use), so model upgrades and changed example sets do not pile up.

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

from .examples import Cached
from .files import cache_dir

MIN_EXAMPLES = 256           # smaller sets are cheaper to compute than to look up
DEFAULT_BUDGET_MB = 2048     # SmolLM2's memory, validation and locality sets take ~1 GB together
PROBE = "The quick brown fox jumps over the lazy dog near the river bank"


def budget_bytes() -> int:
    raw = os.environ.get("PATCHER_ACTIVATION_CACHE_MB", str(DEFAULT_BUDGET_MB))
    try:
        megabytes = float(raw)
    except ValueError:
        raise ValueError(f"PATCHER_ACTIVATION_CACHE_MB must be a number of megabytes, got {raw!r}") from None
    return int(megabytes * 2**20)


def directory() -> Path | None:
    if os.environ.get("PATCHER_ACTIVATION_CACHE", "").lower() in ("off", "0", "false"):
        return None
    return cache_dir() / "activations"


def key(task, examples, fingerprint: str) -> str:
    subject = [] if task.subject_layer is None else [task.subject_layer]     # keys without one stay as they were
    prompt_format = [] if task.prompt_format == "text" else [task.prompt_format]   # so do keys of text prompts
    content = json.dumps([task.name, task.max_length, fingerprint, [[e.input, e.target] for e in examples],
                          *subject, *prompt_format])
    return hashlib.sha256(content.encode()).hexdigest()[:32]


def fingerprint(task, probe_cached) -> str:
    """probe_cached: Task.cache of the probe example, computed by the caller."""
    ids = task.tokenizer(PROBE)["input_ids"]
    parts = [type(task.arch.model).__name__, str(ids)]
    parts += [str(torch.round(t.float(), decimals=3).tolist()) for t in (probe_cached.q, probe_cached.h)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def load(path: Path, device) -> list | None:
    try:
        os.utime(path)                                   # a use: the least recently used entries are evicted first
    except FileNotFoundError:
        return None
    t = load_file(str(path), device=str(device))
    p, m = t["position_offsets"].tolist(), t["memory_offsets"].tolist()
    subject = lambda i: {} if "z" not in t else {"z": t["z"][m[i]:m[i + 1]], "at": t["at"][p[i]:p[i + 1]]}  # noqa: E731
    return [Cached(q=t["q"][p[i]:p[i + 1]], h=t["h"][p[i]:p[i + 1]], targets=t["targets"][p[i]:p[i + 1]],
                   q_memory=t["q_memory"][m[i]:m[i + 1]], **subject(i)) for i in range(len(p) - 1)]


def save(path: Path, cached: list) -> None:
    """Written to a temporary name and renamed: a concurrent reader sees the whole file or none."""
    def offsets(tensors):
        return torch.tensor([0] + [len(x) for x in tensors]).cumsum(0)

    tensors = {"q": torch.cat([c.q for c in cached]), "h": torch.cat([c.h for c in cached]),
               "targets": torch.cat([c.targets for c in cached]),
               "q_memory": torch.cat([c.q_memory for c in cached]),
               "position_offsets": offsets([c.q for c in cached]),
               "memory_offsets": offsets([c.q_memory for c in cached])}
    if cached[0].z is not None:                          # a subject key: z has the memory's positions
        tensors.update(z=torch.cat([c.z for c in cached]), at=torch.cat([c.at for c in cached]))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(partial))
    os.replace(partial, path)
    evict(path.parent, budget_bytes(), keep=path)


def evict(folder: Path, budget: int, keep: Path) -> list[Path]:
    """Deletes the least recently used entries until the folder fits the budget (`keep`, just written, stays
    even when it alone is over). Another process may be evicting too: an entry already gone is skipped."""
    entries = []
    for p in folder.glob("*.safetensors"):
        try:
            stat = p.stat()
        except FileNotFoundError:
            continue
        entries.append((stat.st_mtime, stat.st_size, p))
    total, removed = sum(size for _, size, _ in entries), []
    for _, size, p in sorted(entries):
        if total <= budget:
            break
        if p == keep:
            continue
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        total -= size
        removed.append(p)
    return removed
