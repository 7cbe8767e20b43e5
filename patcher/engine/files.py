"""Where the project keeps its files, how it checks them and how it loads a model from them, offline."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir() -> Path:
    """Converted models, activations, downloads and S3 keys live here: $PATCHER_CACHE, else ~/.cache/patcher."""
    root = Path(os.environ.get("PATCHER_CACHE", Path.home() / ".cache" / "patcher"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256(*paths: str | Path) -> str:
    """One digest over the files' bytes, in the order given, streamed (weights and ONNX graphs are large)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_pretrained(model_dir: str | os.PathLike, dtype=None):
    """-> (model in eval mode, tokenizer) from a from_pretrained directory, offline. The head follows the
    config's architectures entry."""
    import torch
    import transformers as tf

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = tf.AutoConfig.from_pretrained(model_dir)
    arch = (config.architectures or [""])[0]
    if arch.endswith("ForSequenceClassification"):
        auto = tf.AutoModelForSequenceClassification
    elif arch.endswith("ForConditionalGeneration"):
        auto = tf.AutoModelForSeq2SeqLM
    else:
        auto = tf.AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, dtype=dtype or torch.float32)
    tokenizer = tf.AutoTokenizer.from_pretrained(model_dir)
    return model.eval(), tokenizer
