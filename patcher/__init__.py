"""Transformer-Patcher: sequential model editing by training one extra FFN neuron per mistake. The engine's
public names; the pipeline (`patcher.pipeline`) and serving (`patcher.serving`) are imported on their own."""
from .engine.config import EditorConfig
from .engine.editor import Editor, EditOutcome
from .engine.examples import Example
from .engine.memory import Memory
from .engine.patch import PatchBranch, PatchNeurons, merge_into
from .engine.patchset import PatchSet

__all__ = ["EditorConfig", "Editor", "EditOutcome", "Memory", "PatchBranch", "PatchNeurons", "PatchSet",
           "merge_into", "Example"]
__version__ = "0.1.0"
