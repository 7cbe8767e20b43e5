"""The model catalog: the one place that says which models this project patches and with what data.

`catalog.yaml` (at the project root; `--catalog` or $PATCHER_CATALOG elsewhere) holds one entry per model:

  models:
    NAME:
      path: data/models/NAME        # a from_pretrained directory, or an s3://BUCKET/PREFIX it is downloaded from
      sha256: null                  # the weights' sha256 (*.safetensors): checked after an S3 download
      task: classification          # or generation; must be what the model's head does
      prompt_format: text           # generation: text (as is) or chat (the tokenizer's chat template)
      memory: FILE                  # representative production inputs, JSON lines {"input"[, "target"]}
      validation: null              # early-stopping memory; null: a seeded share of the memory
      locality: {SUITE: FILE}       # regression suites {"input"[, "target"]}; without targets: unchanged vs base
      errors: null                  # a file of logged error records for `dvc repro` (the Prefect pipeline reads S3)
      editor: {}                    # EditorConfig overrides (`patcher config`), over params.yaml train.editor
      gate: {}                      # GateThresholds overrides, over params.yaml gate

Relative paths are relative to the catalog file. Files may also be s3:// URIs (downloaded, their sha256 recorded)
or DVC-tracked files (`dvc pull` them). `patcher models add` writes an entry after `check` loaded the model,
found its last FFN, ran one forward pass and read every data file.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from patcher.engine.config import EditorConfig
from patcher.engine.files import cache_dir
from patcher.engine.prompt import PROMPT_FORMATS
from patcher.engine.records import TASKS

from .gate import GateThresholds

DEFAULT = "catalog.yaml"


def catalog_path(path: str | os.PathLike | None = None) -> Path:
    """The catalog file: `path`, else $PATCHER_CATALOG, else catalog.yaml here."""
    return Path(path or os.environ.get("PATCHER_CATALOG") or DEFAULT)


@dataclass
class ModelEntry:
    """One catalog entry (the module docstring says what each field means)."""

    name: str
    path: str
    task: str
    memory: str | None = None
    validation: str | None = None
    locality: dict[str, str] = field(default_factory=dict)
    prompt_format: str = "text"
    sha256: str | None = None
    errors: str | None = None
    editor: dict = field(default_factory=dict)
    gate: dict = field(default_factory=dict)
    validation_share: float = 0.1          # carved from the memory when `validation` is null
    description: str = ""
    home: Path = field(default=Path("."), repr=False, compare=False)      # the catalog file's folder

    def __post_init__(self):
        problems = []
        if self.task not in TASKS:
            problems.append(f"task must be one of {TASKS}, got {self.task!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            problems.append(f"prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}")
        if self.prompt_format == "chat" and self.task != "generation":
            problems.append("prompt_format chat is for generation models")
        unknown = set(self.editor) - set(EditorConfig.help())
        if unknown:
            problems.append(f"unknown editor settings {sorted(unknown)} (see `patcher config`)")
        unknown = set(self.gate) - {f.name for f in fields(GateThresholds)}
        if unknown:
            problems.append(f"unknown gate thresholds {sorted(unknown)}; known: "
                            f"{', '.join(f.name for f in fields(GateThresholds))}")
        if not isinstance(self.locality, dict):
            problems.append("locality must be a mapping SUITE: FILE")
        if problems:
            raise ValueError(f"catalog entry {self.name!r}: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, name: str, data: dict, home: Path = Path(".")) -> "ModelEntry":
        known = {f.name for f in fields(cls)} - {"name", "home"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"catalog entry {name!r}: unknown fields {sorted(unknown)}; known: {', '.join(sorted(known))}")
        for required in ("path", "task"):
            if not data.get(required):
                raise ValueError(f"catalog entry {name!r}: missing {required!r}")
        return cls(name=name, home=home, **{k: v for k, v in data.items() if v is not None})

    def to_dict(self) -> dict:
        """The entry as the catalog writes it: path, task, memory and every field that is not its default."""
        defaults = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("name", "home")}
        return {k: v for k, v in data.items()
                if k in ("path", "task", "memory") or (v != defaults.get(k) and v not in ({}, None))}

    # --- where things are ---------------------------------------------------------------------------
    def resolve(self, location: str) -> str:
        """A file or directory location as written in the catalog -> an s3:// URI or an absolute path."""
        if location.startswith("s3://"):
            return location
        path = Path(os.path.expanduser(location))
        return str(path if path.is_absolute() else (self.home / path).resolve())

    def model_dir(self) -> Path:
        """The model's local directory; an s3:// prefix is downloaded once into the cache and its weights checked
        against `sha256`."""
        where = self.resolve(self.path)
        if not where.startswith("s3://"):
            if not Path(where).is_dir():
                raise FileNotFoundError(f"catalog entry {self.name!r}: no model directory at {where}")
            return Path(where)
        from patcher.engine.patchset import weights_sha256

        from .store import download_dir

        local = cache_dir() / "catalog" / self.name / hashlib.sha256(where.encode()).hexdigest()[:16]
        if not (local / "config.json").exists():
            tmp = local.with_name(local.name + f".tmp-{os.getpid()}")
            download_dir(where, tmp)
            tmp.rename(local)
        if self.sha256 and weights_sha256(local) != self.sha256:
            raise ValueError(f"catalog entry {self.name!r}: the weights downloaded from {where} have sha256 "
                             f"{weights_sha256(local)}, the catalog says {self.sha256}")
        return local

    def local_file(self, location: str) -> Path:
        """A data file's local path: s3:// objects are downloaded into the cache (by content: sha256 names them);
        a DVC-tracked file that is not pulled says so."""
        where = self.resolve(location)
        if where.startswith("s3://"):
            from patcher.engine.files import sha256

            from .store import read_bytes

            data = read_bytes(where)
            local = cache_dir() / "catalog" / "files" / f"{hashlib.sha256(data).hexdigest()}.jsonl"
            local.parent.mkdir(parents=True, exist_ok=True)
            if not local.exists() or sha256(local) != hashlib.sha256(data).hexdigest():
                local.write_bytes(data)
            return local
        path = Path(where)
        if not path.exists() and Path(f"{where}.dvc").exists():
            raise FileNotFoundError(f"catalog entry {self.name!r}: {where} is DVC-tracked but not here: "
                                    f"`dvc pull {location}`")
        return path

    # --- the data -------------------------------------------------------------------------------------
    def data(self, seed: int = 0, no_memory: bool = False):
        """-> (memory Rows, validation Rows, {suite: Rows}); raises naming the entry, file and line on a bad one.
        Without a memory it refuses; `no_memory` asks for none (both memories are then None)."""
        from patcher.engine.suites import read_rows, split_rows

        suites = {name: read_rows(self.local_file(f), f) for name, f in self.locality.items()}
        if no_memory:
            return None, None, suites
        if not self.memory:
            raise ValueError(f"model {self.name!r} has no memory: edits trained without one change unrelated "
                             f"answers. Give it a file of representative inputs (JSON lines with `input`; catalog "
                             f"`memory:`, or --memory FILE), or pass --no-memory to edit without one anyway")
        memory = read_rows(self.local_file(self.memory), self.memory)
        if self.validation:
            validation = read_rows(self.local_file(self.validation), self.validation)
        else:
            memory, validation = split_rows(memory, self.validation_share, seed)
        return memory, validation, suites

    def editor_config(self, base: dict | None = None, overrides: dict | None = None) -> EditorConfig:
        """`base` (params.yaml `train.editor`), this entry's `editor`, then `overrides` (command-line flags), with
        the entry's prompt format."""
        return EditorConfig.from_dict({**(base or {}), **self.editor, **(overrides or {}),
                                       "prompt_format": self.prompt_format})

    def gate_thresholds(self, base: GateThresholds | None = None) -> GateThresholds:
        return GateThresholds.from_dict({**asdict(base or GateThresholds()), **self.gate})


class Catalog:
    """The catalog file: one `models` mapping, NAME -> entry."""

    def __init__(self, path: str | os.PathLike | None = None):
        import yaml

        self.path = catalog_path(path)
        data = yaml.safe_load(self.path.read_text()) if self.path.exists() else None
        data = data or {}
        if not isinstance(data, dict) or not isinstance(data.get("models", {}) or {}, dict):
            raise ValueError(f"{self.path}: expected a mapping `models: {{NAME: entry}}`")
        home = self.path.resolve().parent
        self.entries = {name: ModelEntry.from_dict(name, dict(entry or {}), home)
                        for name, entry in (data.get("models") or {}).items()}

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    def entry(self, name: str) -> ModelEntry:
        if name not in self.entries:
            known = ", ".join(self.entries) or "none"
            raise KeyError(f"model {name!r} is not in the catalog {self.path} (models: {known}); add it with "
                           f"`patcher models add {name} --path DIR --task TASK --memory FILE ...`")
        return self.entries[name]

    def put(self, entry: ModelEntry) -> None:
        """Adds or replaces an entry and writes the file, its comments and other entries kept."""
        from ruamel.yaml import YAML

        yaml = YAML()
        data = (yaml.load(self.path) if self.path.exists() else None) or {}
        if data.get("models") is None:
            data["models"] = {}
        data["models"][entry.name] = entry.to_dict()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w") as fh:
            yaml.dump(data, fh)
        tmp.replace(self.path)
        self.entries[entry.name] = entry


def labels_of(model_dir: str | Path) -> list[str] | None:
    """A classifier's labels from its config.json `id2label` (in id order); None for a generation model."""
    import json

    config = json.loads((Path(model_dir) / "config.json").read_text())
    if not (config.get("architectures") or [""])[0].endswith("ForSequenceClassification"):
        return None
    id2label = config.get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)]


def check(entry: ModelEntry, seed: int = 0) -> dict:
    """Loads the entry's model, finds its last FFN, runs one forward pass on its first memory input and reads
    every data file; raises naming what is wrong. -> what it found (architecture, FFN, labels, files)."""
    from patcher.engine.editor import Editor
    from patcher.engine.files import load_pretrained
    from patcher.engine.patchset import module_name
    from patcher.engine.suites import Rows, examples

    model_dir = entry.model_dir()
    try:
        model, tokenizer = load_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise ValueError(f"catalog entry {entry.name!r}: {model_dir} does not load with from_pretrained: {e}") from e
    editor = Editor(model, tokenizer, entry.editor_config())      # the adapter refuses unsupported architectures
    if editor.task.name != entry.task:
        raise ValueError(f"catalog entry {entry.name!r}: task {entry.task!r}, but {type(model).__name__} does "
                         f"{editor.task.name}")
    memory, validation, suites = entry.data(seed)
    probe, _ = examples(editor, Rows(memory.path, memory.sha256, memory.rows[:8]))
    if not probe:
        raise ValueError(f"catalog entry {entry.name!r}: the model answers nothing to the first memory inputs "
                         f"({memory.rows[0]['input']!r}, ...)")
    probe = probe[:1]
    editor.cache(probe)                                              # the forward pass the editor's caching makes
    return {"name": entry.name, "model_dir": str(model_dir), "architecture": type(model).__name__,
            "adapter": editor.arch.name, "ffn": module_name(model, editor.arch.ffn_out),
            "hidden_size": editor.arch.hidden_size, "task": editor.task.name,
            "labels": getattr(editor.task, "labels", None), "prompt_format": entry.prompt_format,
            "probe": {"input": probe[0].input, "answer": probe[0].target},
            "memory": memory.describe(), "validation": validation.describe(),
            "locality": {name: rows.describe() for name, rows in suites.items()}}
