"""ONNX export of a patched model, for onnxruntime consumers, with a parity check on every export.

The output is an Optimum-style directory: `model.onnx`, `config.json`, the tokenizer files, and `export.json`
(base model and its sha256, the patch set's edits and neurons, whether the patches were merged into the FFN
weights or exported as a branch, the prompt format its inputs are put to the model in (engine/prompt.py), the
cache's shape, sha256 of every file). Classifiers (and encoder-decoders): inputs `input_ids`, `attention_mask`
and, for BERT, `token_type_ids`, output `logits`, dynamic `batch_size` and `sequence_length` axes, as
ORTModelForSequenceClassification reads them. Decoder-only generation models: one KV-cached graph
(decoder.py: past_key_values.* in, present.* out, as ORTModelForCausalLM reads them) plus
`generation_config.json` and onnxruntime-genai's `genai_config.json`.

Patches are merged where that is exact (GELU FFNs with biases), so the patched model costs what the
unpatched one does; otherwise (Llama's SwiGLU) the branch's hooks run during tracing and are part of the
graph. Parity: onnxruntime against PyTorch on the edited inputs and a locality sample, logits within
|onnx - torch| <= tolerance + rtol * max|torch logits at that position| over real tokens (SmolLM2's logits
reach ~30, where fp32 kernels of the two runtimes differ by ~1.2e-4 with identical answers), and the same
predicted labels or greedy answers. A cached graph is checked twice: its prefill against the model's logits, and
its greedy decoding token by token (left-padded batches, the cache fed back) against the model's logits over
the same tokens, every step's logits and argmax; a miss raises ExportParityError and the directory is not left behind
as if it were good.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from patcher.engine.examples import Example
from patcher.engine.files import sha256
from patcher.engine.patchset import load_patched, weights_sha256
from patcher.engine.prompt import check_prompt_format, prompt_ids

from .decoder import CachedDecoder, cache_layout, genai_config, sample_inputs
from .onnx_model import ONNX, cache_inputs, empty_cache, end_ids, generate, greedy, mask_positions, onnx_logits, session


class ExportParityError(RuntimeError):
    """onnxruntime and PyTorch disagree beyond the tolerance on some input."""


class LogitsOnly(torch.nn.Module):
    """The model as a function of the standard inputs to logits (no cache, no dict outputs)."""

    def __init__(self, model, names: list[str]):
        super().__init__()
        self.model, self.names = model, names
        self.eval()      # a new Module is in training mode, and export restores that mode onto the model

    def forward(self, *inputs):                                   # each (B, T) int64
        kwargs = dict(zip(self.names, inputs))
        if not self.model.config.is_encoder_decoder and hasattr(self.model, "generation_config"):
            kwargs["use_cache"] = False
        return self.model(**kwargs).logits                        # (B, C) or (B, T, V)


@dataclass
class Parity:
    max_abs_diff: float
    examples: int
    mismatches: list[dict]


def _inputs(tokenizer, texts: list[str], prompt_format: str = "text") -> dict[str, torch.Tensor]:
    if prompt_format == "text":
        enc = tokenizer(texts, return_tensors="pt", padding=True)
    else:
        enc = tokenizer.pad({"input_ids": [prompt_ids(tokenizer, t, prompt_format) for t in texts]},
                            return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}


def export(model_dir: str | Path, patch_dir: str | Path | None, out: str | Path, check: list[Example] = (),
           tolerance: float = 1e-4, rtol: float = 1e-5, opset: int = 17, version: str | None = None,
           prompt_format: str | None = None) -> dict:
    """Writes the directory and checks parity on the patch set's edits plus `check`, their inputs put to the
    model in `prompt_format` (None: the patch set's editor config's, else 'text'). -> export.json's data."""
    model, tokenizer, patches = load_patched(model_dir, patch_dir, merge=True)
    if prompt_format is None:
        prompt_format = (patches.editor_config if patches else {}).get("prompt_format", "text")
    check_prompt_format(tokenizer, prompt_format)
    if prompt_format != "text" and model.config.architectures[0].endswith("Classification"):
        raise ValueError(f"prompt_format {prompt_format!r} is for generation models, not {model_dir}")
    out = Path(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    classification = model.config.architectures[0].endswith("Classification")
    branch = getattr(model, "_patch_branch", None)
    layout = None if classification or model.config.is_encoder_decoder else cache_layout(model, branch)
    if layout is not None:
        module, sample = CachedDecoder(model, layout, branch), sample_inputs(layout, model.config.vocab_size)
        names, outputs, axes = layout.input_names(), layout.output_names(), layout.dynamic_axes()
    else:
        inputs = _inputs(tokenizer, ["a short input", "a slightly longer input for the trace"])
        names, outputs, sample = list(inputs), ["logits"], tuple(inputs.values())
        module = LogitsOnly(model, names)
        axes = {name: {0: "batch_size", 1: "sequence_length"} for name in names}
        axes["logits"] = {0: "batch_size"} if classification else {0: "batch_size", 1: "sequence_length"}
    with torch.no_grad():
        torch.onnx.export(module, sample, str(staging / ONNX), dynamo=False, opset_version=opset,
                          input_names=names, output_names=outputs, dynamic_axes=axes)
    model.config.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    _portable_tokenizer_config(staging / "tokenizer_config.json", decoder=layout is not None)
    if layout is not None:
        model.generation_config.save_pretrained(staging)
        config = genai_config(model.config, model.generation_config, tokenizer, layout, ONNX)
        (staging / "genai_config.json").write_text(json.dumps(config, indent=1) + "\n")
    edits = patches.edits if patches else []
    examples = [Example(e["input"], e["target"]) for e in edits] + list(check)
    # and the first row each edit protected in the memory (its nearest neighbour; all of them: thousands)
    texts = list(dict.fromkeys([e.input for e in examples] + [e["remembered"][0] for e in edits
                                                                 if e.get("remembered")]))
    parity = check_parity(model, tokenizer, staging / ONNX, texts, tolerance, rtol, prompt_format=prompt_format)
    manifest = {
        "format": "patcher.onnx/1",
        "base_model": patches.base_model if patches else {"name": str(model_dir), "sha256": weights_sha256(model_dir)},
        "patch_set": None if patches is None else {
            "version": version, "edits": len(patches.edits), "neurons": len(patches),
            "error_ids": patches.error_ids, "layer": patches.layer,
            "how": "branch in the graph" if branch is not None else "merged"},
        "inputs": names[:3] if layout is not None else names, "output": "logits", "opset": opset,
        "prompt_format": prompt_format,
        "cache": None if layout is None else {
            "layers": layout.layers, "kv_heads": layout.kv_heads, "head_dim": layout.head_dim,
            "subject_layers": layout.subject_layers, "subject_neurons": layout.neurons},
        "parity": {"max_abs_diff": parity.max_abs_diff, "tolerance": tolerance, "rtol": rtol,
                   "examples": parity.examples},
    }
    manifest["files"] = {p.name: sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
    (staging / "export.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)                      # readers never see a half-written directory here
    return manifest


def _portable_tokenizer_config(path: Path, decoder: bool) -> None:
    """transformers 5 names its tokenizer class 'TokenizersBackend', which 4.x clients (Optimum's) cannot load: the
    class both know for a tokenizer.json, and for a decoder no token_type_ids (generate() refuses them)."""
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if decoder:
        config["model_input_names"] = ["input_ids", "attention_mask"]
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def check_parity(model, tokenizer, onnx_path: Path, texts: list[str], tolerance: float = 1e-4, rtol: float = 1e-5,
                 batch_size: int = 16, max_new_tokens: int = 8, prompt_format: str = "text") -> Parity:
    """Raises ExportParityError if logits differ beyond `tolerance` or a prediction differs, on `texts` put to
    the model in `prompt_format`."""
    sess = session(onnx_path)
    cached = bool(cache_inputs(sess))
    worst, mismatches = 0.0, []
    classification = model.config.architectures[0].endswith("Classification")
    for i in range(0, len(texts), batch_size):
        batch = texts[i:i + batch_size]
        inputs = _inputs(tokenizer, batch, prompt_format)
        if cached:                          # the graph takes no token_type_ids (a BERT tokenizer on a decoder)
            inputs = {k: inputs[k] for k in ("input_ids", "attention_mask")}
            ours, _ = _cached_logits(sess, inputs)
        else:
            ours = onnx_logits(sess, inputs)
        with torch.no_grad():
            if cached:                      # at the positions the graph was given: counted from the mask
                positions = mask_positions(inputs["attention_mask"])
                theirs = model(**inputs, position_ids=positions, use_cache=False).logits.numpy()
            else:
                theirs = LogitsOnly(model, list(inputs))(*inputs.values()).numpy()
        diff, over = _gaps(ours, theirs, None if classification else inputs["attention_mask"].numpy(), rtol)
        worst = max(worst, float(diff.max()))
        if cached:
            steps = _check_decoding(model, tokenizer, sess, batch, max_new_tokens, prompt_format, rtol)
        for j, text in enumerate(batch):
            if classification:
                a, b = int(ours[j].argmax()), int(theirs[j].argmax())
            elif cached:
                a, b, step_diff, step_over = steps[j]
                diff[j], over[j] = max(diff[j], step_diff), max(over[j], step_over)
                worst = max(worst, step_diff)
            else:
                a = greedy(lambda ids: onnx_logits(sess, {"input_ids": ids, "attention_mask": np.ones_like(ids)}),
                           tokenizer, text, max_new_tokens, prompt_format=prompt_format)
                with torch.no_grad():
                    b = greedy(lambda ids: model(input_ids=torch.from_numpy(ids), use_cache=False).logits,
                               tokenizer, text, max_new_tokens, prompt_format=prompt_format)
            if a != b or over[j] > tolerance:
                mismatches.append({"input": text, "onnx": a, "torch": b, "max_abs_diff": float(diff[j])})
    if mismatches:
        raise ExportParityError(f"{len(mismatches)} of {len(texts)} inputs differ between onnxruntime and PyTorch "
                                f"(tolerance {tolerance} + {rtol} x max |logit|); first: {mismatches[0]}")
    return Parity(worst, len(texts), mismatches)


def _gaps(ours: np.ndarray, theirs: np.ndarray, mask: np.ndarray | None, rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the largest |ours - theirs|, and the largest excess over rtol x max |logit| at that position (fp32
    error grows with the scale of the whole logit vector, not of each entry), over real tokens where `mask` (B, T)
    is given. ours/theirs (B, C) or (B, T, V)."""
    gap = np.abs(ours - theirs)
    excess = gap - rtol * np.abs(theirs).max(axis=-1, keepdims=True)
    if mask is None:
        return gap.max(axis=-1), excess.max(axis=-1)
    mask = mask.astype(bool)
    return np.where(mask, gap.max(axis=-1), 0).max(axis=-1), np.where(mask, excess.max(axis=-1), 0).max(axis=-1)


def _cached_logits(sess, inputs: dict) -> tuple[np.ndarray, list]:
    """A cached graph's prefill (empty past) on `inputs` (right-padded): -> (logits (B, T, V), present)."""
    mask = np.asarray(inputs["attention_mask"], dtype=np.int64)
    rows = mask.shape[0]
    logits, *present = sess.run(None, {"input_ids": np.asarray(inputs["input_ids"], dtype=np.int64),
                                       "attention_mask": mask, "position_ids": mask_positions(mask),
                                       **empty_cache(sess, rows)})
    return logits, present


def _check_decoding(model, tokenizer, sess, texts: list[str], max_new_tokens: int, prompt_format: str,
                    rtol: float) -> list[tuple]:
    """Greedy decoding with the cache (a left-padded batch), checked step by step against the model's logits over
    the same tokens (one uncached pass over prompt + answer): the same argmax at every step is the same greedy
    answer. -> per text (onnx answer, torch answer, max |diff|, max excess)."""
    prompts = [prompt_ids(tokenizer, t, prompt_format) for t in texts]
    new, kept = generate(sess, prompts, max_new_tokens, tokenizer.pad_token_id,
                         end_ids(model.generation_config.to_dict(), tokenizer), keep_logits=True)
    results = []
    for prompt, ids, steps in zip(prompts, new, kept):
        sequence = torch.tensor([prompt + ids])
        with torch.no_grad():
            logits = model(input_ids=sequence, use_cache=False).logits[0].numpy()                 # (T, V)
        theirs = logits[len(prompt) - 1: len(prompt) - 1 + len(steps)]                         # (steps, V)
        ours = np.stack(steps)
        diff, over = _gaps(ours[None], theirs[None], np.ones((1, len(steps))), rtol)
        onnx_ids, torch_ids = ours.argmax(-1).tolist(), theirs.argmax(-1).tolist()
        same = onnx_ids == torch_ids
        results.append((tokenizer.decode(onnx_ids), tokenizer.decode(torch_ids) + ("" if same else f" {torch_ids}"),
                        float(diff[0]), float(over[0])))
    return results
