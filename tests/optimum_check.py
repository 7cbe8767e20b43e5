"""Run by tests/test_optimum.py with the python of a side environment that holds Hugging Face Optimum
(optimum 2.1.0 + optimum-onnx 0.1.0, which need transformers<4.58): loads one of our exports with Optimum's
ONNX Runtime classes, unmodified, and prints one JSON line with what it found.

    python optimum_check.py classifier EXPORT_DIR PATCHES_MANIFEST
    python optimum_check.py causal-lm EXPORT_DIR PATCHES_MANIFEST N_EDITS MAX_NEW_TOKENS

Not a test module (pytest collects test_*.py only); it imports nothing from the project.
"""
import json
import sys


def tokenizer_for(export_dir: str) -> tuple[object, str | None]:
    """-> (tokenizer, None) when AutoTokenizer loads the export's tokenizer files, else (a PreTrainedTokenizerFast
    on the same tokenizer.json, AutoTokenizer's error): transformers 4.x has no class for every name 5.x writes
    into tokenizer_config.json (e.g. 'TokenizersBackend')."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(export_dir), None
    except ValueError as e:
        tok = PreTrainedTokenizerFast.from_pretrained(export_dir, model_input_names=["input_ids", "attention_mask"])
        return tok, f"{type(e).__name__}: {e}"


def classifier(export_dir: str, manifest: str) -> dict:
    import torch
    from optimum.onnxruntime import ORTModelForSequenceClassification

    model = ORTModelForSequenceClassification.from_pretrained(export_dir)
    tok, tok_error = tokenizer_for(export_dir)
    edits = json.loads(open(manifest).read())["edits"]
    enc = tok([e["input"] for e in edits], return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        logits = model(**enc).logits
    labels = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
    return {"class": type(model).__name__, "inputs": list(model.input_names),
            "tokenizer": type(tok).__name__, "autotokenizer_error": tok_error, "edits": len(edits),
            "match": sum(p == e["target"] for p, e in zip(labels, edits)),
            "misses": [{"input": e["input"], "target": e["target"], "got": p}
                       for p, e in zip(labels, edits) if p != e["target"]]}


def causal_lm(export_dir: str, manifest: str, n: int, max_new_tokens: int) -> dict:
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(export_dir, use_cache=True)
    tok, tok_error = tokenizer_for(export_dir)
    edits = json.loads(open(manifest).read())["edits"][:n]
    answers = []
    for e in edits:                                   # one prompt at a time, greedy, the cache fed back by Optimum
        enc = tok(e["input"], return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        answers.append(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    tok.padding_side = "left"                         # and all of them in one left-padded batch
    enc = tok([e["input"] for e in edits], return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    batched = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return {"class": type(model).__name__, "can_use_cache": bool(model.can_use_cache),
            "is_merged": bool(model.is_merged), "cache_inputs": list(model.key_value_input_names),
            "cache_outputs": list(model.key_value_output_names), "num_key_value_heads": model.num_key_value_heads,
            "head_dim": model.embed_size_per_head, "config_layers": model.config.num_hidden_layers,
            "tokenizer": type(tok).__name__, "autotokenizer_error": tok_error,
            "edits": [{"input": e["input"], "target": e["target"], "answer": a, "batched": b}
                      for e, a, b in zip(edits, answers, batched)]}


if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    if kind == "classifier":
        result = classifier(*args)
    else:
        result = causal_lm(args[0], args[1], int(args[2]), int(args[3]))
    from importlib.metadata import version

    result["versions"] = {p: version(p) for p in ("optimum", "optimum-onnx", "transformers", "onnxruntime", "torch")}
    print(json.dumps(result))
