"""Transformer-Patcher: sequential model editing by training one extra FFN neuron per mistake."""
from .config import EditorConfig
from .editor import Editor, EditOutcome
from .memory import Memory
from .patch import PatchBranch, PatchNeurons, merge_into
from .tasks import Example

__all__ = ["EditorConfig", "Editor", "EditOutcome", "Memory", "PatchBranch", "PatchNeurons", "merge_into", "Example"]
__version__ = "0.1.0"
