"""Patch sets on disk: `patches.safetensors` (keys, biases, values; subject_keys with a subject key) plus
`manifest.json` (base model and its hash, the weights file's sha256, layer, activation, subject_layer, and per edit:
the error it fixes, its neurons, its input/target and metrics). Every load checks the weights against that sha256:
a patch set corrupted on disk, in a cache or a remote fails loudly (CorruptPatchSet) instead of serving noise.

A patch set only ever holds the delta; it loads onto the base model as a branch, or merges into the FFN
weights where that is exact. Rollback removes one edit's neurons and leaves every other output unchanged.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load, save_file

from .arch import Arch, adapter_for
from .files import cache_dir, load_pretrained, sha256
from .patch import PatchBranch, PatchNeurons, can_merge, merge_into

FORMAT = "patcher.engine.patchset/1"
WEIGHTS, MANIFEST = "patches.safetensors", "manifest.json"


class CorruptPatchSet(ValueError):
    """A patch set whose weights are not what its manifest recorded."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def weights_sha256(model_dir: str | os.PathLike) -> str:
    """sha256 over the model directory's weight files (*.safetensors, sorted by name), cached by size and
    mtime so a 500 MB model is hashed once."""
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir} holds no *.safetensors weights")
    stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    cache_file = cache_dir() / "weights_sha256.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    key = str(model_dir.resolve())
    if key in cache and cache[key]["stamp"] == [list(s) for s in stamp]:
        return cache[key]["sha256"]
    cache[key] = {"stamp": stamp, "sha256": sha256(*files)}
    tmp = cache_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1))
    tmp.replace(cache_file)
    return cache[key]["sha256"]


def module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


@dataclass
class PatchSet:
    """Neurons plus who owns them. `edits` keeps one entry per kept edit, in edit order."""

    neurons: PatchNeurons
    owners: list[str]                       # error id per neuron
    base_model: dict                        # name, sha256
    architecture: str
    layer: str                              # module path of the FFN output the neurons add to
    edits: list[dict] = field(default_factory=list)
    editor_config: dict = field(default_factory=dict)
    created_at: str = field(default_factory=now)
    # records that own no neuron but whose prompts joined the memory (already right: "skipped"; failed and not
    # kept), as edits' entries: error_id, input, target, status, remembered; a later run remembers them too
    remembered: list[dict] = field(default_factory=list)
    # what the last edits were made with: the model's sha256, the memory's and the suites' files and sha256, and
    # any safety opt-out (`no_memory`: edits made without a memory, free to change unrelated answers)
    data: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.neurons)

    @property
    def error_ids(self) -> list[str]:
        return [e["error_id"] for e in self.edits]

    # --- disk ---------------------------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike) -> Path:
        """Writes both files to a temporary directory first, then renames it into place, so a crash never
        leaves a half-written patch set under `out_dir`."""
        out = Path(out_dir)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{time.time_ns()}")
        tmp.mkdir(parents=True)
        tensors = {"keys": self.neurons.keys, "biases": self.neurons.biases, "values": self.neurons.values,
                   "bias_shifts": self.neurons.shifts}     # the part of each bias a later edit may take back
        if self.neurons.subject_keys is not None:
            tensors["subject_keys"] = self.neurons.subject_keys
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / WEIGHTS)
        manifest = {
            "format": FORMAT,
            "weights_sha256": sha256(tmp / WEIGHTS),
            "base_model": self.base_model,
            "architecture": self.architecture,
            "layer": self.layer,
            "hidden_size": int(self.neurons.keys.shape[1]),
            "activation": self.neurons.activation,
            "subject_layer": self.neurons.subject_layer,      # null: the last FFN's input alone
            "n_neurons": len(self),
            "neurons": [{"index": i, "error_id": o} for i, o in enumerate(self.owners)],
            "edits": self.edits,
            "remembered": self.remembered,
            "editor_config": self.editor_config,
            "data": self.data,
            "created_at": self.created_at,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.time_ns()}")
            out.rename(old)
            tmp.rename(out)
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(out)
        return out

    @classmethod
    def load(cls, patch_dir: str | os.PathLike) -> "PatchSet":
        patch_dir = Path(patch_dir)
        manifest_path = patch_dir / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(f"{patch_dir} is not a patch set (no {MANIFEST})")
        m = json.loads(manifest_path.read_text())
        if m.get("format") != FORMAT:
            raise ValueError(f"{manifest_path}: format {m.get('format')!r}, expected {FORMAT!r}")
        t = _checked_weights(patch_dir, m.get("weights_sha256"))
        owners = [n["error_id"] for n in m["neurons"]]
        if t["keys"].shape[0] != len(owners):
            raise ValueError(f"{patch_dir}: {t['keys'].shape[0]} neurons in {WEIGHTS}, {len(owners)} in {MANIFEST}")
        subject_layer = m.get("subject_layer")
        if (subject_layer is None) != ("subject_keys" not in t):
            raise ValueError(f"{patch_dir}: subject_layer {subject_layer} in {MANIFEST}, but "
                             f"{'no ' if 'subject_keys' not in t else ''}subject_keys in {WEIGHTS}")
        neurons = PatchNeurons(t["keys"], t["biases"], t["values"], m["activation"], t.get("subject_keys"),
                               subject_layer, t.get("bias_shifts"))       # older patch sets: none
        return cls(neurons, owners, m["base_model"],
                   m["architecture"], m["layer"], m["edits"], m.get("editor_config", {}), m["created_at"],
                   m.get("remembered", []), m.get("data", {}))              # older patch sets: none

    # --- edits ------------------------------------------------------------------------------------------------
    def without(self, error_id: str) -> "PatchSet":
        """A new patch set without the neurons (and the edit entry) of one error."""
        if error_id not in self.owners and error_id not in self.error_ids:
            raise KeyError(f"error {error_id!r} is not in this patch set")
        keep = torch.tensor([o != error_id for o in self.owners], dtype=torch.bool)
        return PatchSet(self.neurons.select(keep), [o for o in self.owners if o != error_id], self.base_model,
                        self.architecture, self.layer, [e for e in self.edits if e["error_id"] != error_id],
                        self.editor_config, now(), self.remembered, self.data)

    def own_kind(self, config) -> list[str]:
        """Sets an EditorConfig's kind of neuron (subject layer, activation) to this patch set's own, which wins over
        settings (one patch set holds one kind). -> a note per setting overruled."""
        if not len(self.neurons):
            return []
        notes = []
        if self.neurons.subject_layer != config.subject_layer:
            notes.append(f"subject_layer {self.neurons.subject_layer} (the patch set's own; the settings ask for "
                         f"{config.subject_layer})")
            config.subject_layer = self.neurons.subject_layer
        if config.activation not in ("auto", self.neurons.activation):
            notes.append(f"activation {self.neurons.activation} (the patch set's own; the settings ask for "
                         f"{config.activation})")
            config.activation = self.neurons.activation
        return notes

    # --- onto a model ---------------------------------------------------------------------------------------
    def check_base(self, arch: Arch, model_dir: str | os.PathLike | None) -> None:
        if arch.name != self.architecture:
            raise ValueError(f"patch set is for a {self.architecture} model, this one is {arch.name}")
        if model_dir is not None and self.base_model.get("sha256"):
            digest = weights_sha256(model_dir)
            if digest != self.base_model["sha256"]:
                raise ValueError(f"patch set was trained on base {self.base_model.get('name')} "
                                 f"(sha256 {self.base_model['sha256'][:12]}), {model_dir} has {digest[:12]}")

    def apply(self, model: torch.nn.Module, merge: bool = True, model_dir=None) -> PatchBranch | None:
        """Puts the neurons into `model`: merged into the FFN weights where exact (and `merge`), else as a
        branch (returned, so it can be removed)."""
        arch = adapter_for(model)
        self.check_base(arch, model_dir)
        neurons = self.neurons.to(next(model.parameters()).device)
        if merge and can_merge(arch, neurons):
            merge_into(arch, neurons)
            return None
        return PatchBranch(arch, neurons)


def _checked_weights(patch_dir: Path, expected: str | None) -> dict[str, torch.Tensor]:
    """The weights file's tensors, if its sha256 is the manifest's (older manifests have none: then finite values
    at least), else CorruptPatchSet naming the file. The file is read once."""
    path = patch_dir / WEIGHTS
    data = path.read_bytes() if path.exists() else None
    digest = hashlib.sha256(data).hexdigest() if data is not None else None
    if expected is not None and digest != expected:
        raise CorruptPatchSet(f"{path} is corrupt: sha256 {(digest or 'missing')[:12]}, its manifest says "
                              f"{expected[:12]}; fetch this version again (`patcher registry get`, `dvc pull`)")
    try:
        tensors = load(data)
    except Exception as error:  # noqa: BLE001 (safetensors' own error types vary by version)
        raise CorruptPatchSet(f"{path} is not a readable safetensors file: {error}") from None
    broken = [k for k, v in tensors.items() if expected is None and v.is_floating_point()
              and not bool(torch.isfinite(v).all())]
    if broken:
        raise CorruptPatchSet(f"{path} is corrupt: non-finite values in {', '.join(broken)}")
    return tensors


def load_patched(model_dir, patch_dir=None, merge: bool = True):
    """-> (model, tokenizer, patch set or None) with the patches applied (see PatchSet.apply)."""
    model, tokenizer = load_pretrained(model_dir)
    patches = None
    if patch_dir is not None:
        patches = PatchSet.load(patch_dir)
        branch = patches.apply(model, merge=merge, model_dir=model_dir)
        model._patch_branch = branch            # keeps the branch (and its hooks) alive with the model
    return model, tokenizer, patches
