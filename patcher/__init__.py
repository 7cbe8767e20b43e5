"""Transformer-Patcher: sequential model editing by training one extra FFN neuron per mistake."""
from .engine.config import EditorConfig
from .engine.editor import Editor, EditOutcome
from .engine.examples import Example
from .engine.memory import Memory
from .engine.patch import PatchBranch, PatchNeurons, merge_into

__all__ = ["EditorConfig", "Editor", "EditOutcome", "Memory", "PatchBranch", "PatchNeurons", "merge_into", "Example"]
__version__ = "0.1.0"
