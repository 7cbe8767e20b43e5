"""What serving the ONNX export costs, for both production models, in one run, today's path beside the new one:

    .venv/bin/python bench/serving.py [--models factcheck-minilm,facts-smollm2] [--reps 30] [--threads 2]
                                      [--clients 4,16] [--seconds 20] [--out-dir docs/results]

1. onnxruntime against PyTorch eager (the unpatched model, logits of one forward pass; SmolLM2's export is the
   KV-cached graph, timed as its prefill with an empty cache), batch 1 and 32 of fact-bank prompts: median
   latency and the ratio.
2. Patched against unpatched ONNX. factcheck-minilm: 100 and 1,000 edits' worth of neurons with the editor's
   default settings (random weights: latency depends on the shapes only; merged into the FFN where exact, else a
   branch in the graph), one plain forward pass. SmolLM2: 1,000 neurons of the
   kind its editor trains (catalog.yaml: a subject key on layer 9, the 'knee' activation), a branch in the cached
   graph with the subject scores as extra cache layers: a prefill and 8 decode steps at batch 1 and 16. Every
   export is checked for parity. Variants are timed interleaved, one call each per round, so drifts of a noisy
   machine hit all alike.
3. `patcher serve` on 127.0.0.1 over a real S3 server, before and after issue 41: requests per second, latency
   percentiles and failures of POST /predict (one input; SmolLM2: a greedy answer of up to 8 tokens) from each
   of --clients concurrent clients for --seconds, and the batcher's mean rows per model run. Before: SmolLM2 from
   an export without a cache (the whole sequence recomputed per token, as exports were before), and both models
   with every request its own model run, two at once (max_running=2, batch_window_ms=0, max_batch_rows=1).
   After: the real export and ServeSettings' defaults (requests batched); SmolLM2 also with max_running=2.
4. SmolLM2's cached decoding at batch 1 against this machine's memory bandwidth: decode tokens/s, the weights a
   step reads (the graph's initializers, the embedding table that only a Gather reads left out), the bound
   bandwidth / bytes per token and the share of it reached; tokens/s at batch 4 and 16.
5. SmolLM2 int8: onnxruntime's quantize_dynamic of the real patch set's export (QInt8 weights, per tensor and per
   channel): which ops it quantizes, file size, decode tokens/s at batch 1, and whether every edit's greedy answer
   still starts with its target (each lost edit listed), and the share of locality answers unchanged against fp32.

Writes docs/results/serving.json and serving.md (with the machine, versions and thread counts).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from patcher import Editor, EditorConfig  # noqa: E402
from patcher.engine.files import sha256  # noqa: E402
from patcher.engine.patch import PatchNeurons  # noqa: E402
from patcher.engine.sequential import to_patchset  # noqa: E402
from patcher.models.base import load_model  # noqa: E402
from patcher.models.production import build, model_path  # noqa: E402
from patcher.pipeline.catalog import Catalog  # noqa: E402
from patcher.serving.export import LogitsOnly, _cached_logits, _inputs, export  # noqa: E402
from patcher.serving.onnx_model import ONNX, OnnxModel, cache_inputs, onnx_logits  # noqa: E402
from patcher.serving.release import locality_sample  # noqa: E402

REAL_PATCHES = Path(__file__).resolve().parents[1] / "data/pipeline/facts-smollm2/patches"   # int8 parity's edits
BEFORE = {"max_running": 2, "batch_window_ms": 0, "max_batch_rows": 1}    # serving before issue 41
ALTERNATIVE = {"max_running": 2}                                          # SmolLM2: the defaults but two runs
STARTED = time.monotonic()


def say(*parts) -> None:
    print(f"[{time.monotonic() - STARTED:6.0f} s]", *parts, file=sys.stderr, flush=True)


def ort_session(path: Path, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_forward(sess, inputs: dict) -> np.ndarray:
    """Logits of one forward pass: a plain graph's, or a cached graph's prefill (an empty cache)."""
    return _cached_logits(sess, inputs)[0] if cache_inputs(sess) else onnx_logits(sess, inputs)


def synthetic_patches(model_dir: Path, n: int, out: Path, seed: int = 0, config: EditorConfig | None = None) -> Path:
    """A patch set of `n` neurons with random weights and the activation `config` gives (default EditorConfig:
    the editor's default). With a config whose subject_layer is set (facts-smollm2's catalog settings), each
    neuron also has a subject key on that layer's FFN input, as the editor trains them for that model."""
    model, tokenizer = load_model(model_dir)
    editor = Editor(model, tokenizer, config or EditorConfig())
    g = torch.Generator().manual_seed(seed)
    h = editor.neurons.keys.shape[1]
    keys = torch.randn(n, h, generator=g) / h ** 0.5
    layer = editor.neurons.subject_layer
    subject = None if layer is None else torch.randn(n, h, generator=g) / h ** 0.5
    values = torch.randn(n, h, generator=g) * 0.01
    editor.neurons = editor.neurons.extend(PatchNeurons(keys, torch.full((n,), -1.0), values,
                                                        editor.neurons.activation, subject, layer))
    editor.owners = [f"synthetic-{i}" for i in range(n)]
    return to_patchset(editor, [], model_dir.name, model_dir).save(out)


def interleaved(calls: dict, reps: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each callable, timed one call each per round."""
    times = {k: [] for k in calls}
    for r in range(warmup + reps):
        for k, call in calls.items():
            start = time.perf_counter()
            call()
            if r >= warmup:
                times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def runtime_vs_eager(model_dir: Path, onnx_dir: Path, texts: list[str], reps: int, threads: int) -> list[dict]:
    model, tokenizer = load_model(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    forward = LogitsOnly(model, [])
    sess = ort_session(onnx_dir / ONNX, threads)
    rows = []
    for batch in (1, 32):
        inputs = _inputs(tokenizer, texts[:batch])
        forward.names = list(inputs)

        def eager():
            with torch.no_grad():
                forward(*inputs.values())

        m = interleaved({"eager": eager, "onnxruntime": lambda: ort_forward(sess, inputs)}, reps)
        rows.append({"batch": batch, "tokens": int(inputs["input_ids"].shape[1]), "eager_ms": m["eager"] * 1e3,
                     "onnxruntime_ms": m["onnxruntime"] * 1e3, "eager_over_ort": m["eager"] / m["onnxruntime"]})
    return rows


def patched_vs_unpatched(model_dir: Path, work: Path, texts: list[str], reps: int, threads: int,
                         sizes=(100, 1000)) -> list[dict]:
    """Patches with the editor's defaults (factcheck-minilm), one plain forward pass."""
    check = locality_sample(Catalog().entry(model_dir.name), 4)
    dirs = {0: work / "onnx-0"}
    hows = {}
    for n in sizes:
        patches = synthetic_patches(model_dir, n, work / f"patches-{n}")
        dirs[n] = work / f"onnx-{n}"
        hows[n] = export(model_dir, patches, dirs[n], check)["patch_set"]["how"]
    sessions = {n: ort_session(d / ONNX, threads) for n, d in dirs.items()}
    _, tokenizer = load_model(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = []
    for batch in (1, 32):
        inputs = _inputs(tokenizer, texts[:batch])
        m = interleaved({n: (lambda s=s: onnx_logits(s, inputs)) for n, s in sessions.items()}, reps)
        for n in sizes:
            rows.append({"batch": batch, "neurons": n, "how": hows[n], "unpatched_ms": m[0] * 1e3,
                         "patched_ms": m[n] * 1e3, "ratio": m[n] / m[0]})
    return rows


# --- cached decoding ---------------------------------------------------------------------------------------------

def decode(sess, prompts: list[list[int]], steps: int, pad_id: int) -> tuple[float, list[float]]:
    """A KV-cached graph's greedy decoding as onnx_model.generate runs it (one left-padded batch), but always
    `steps` decode steps after the prefill (no stop at EOS: every run does the same work).
    -> (prefill seconds, each decode step's seconds)."""
    past_inputs = cache_inputs(sess)
    names = ["logits", *(i.name.replace("past_key_values.", "present.", 1) for i in past_inputs)]
    rows, width = len(prompts), max(map(len, prompts))
    ids = np.full((rows, width), pad_id, dtype=np.int64)
    mask = np.zeros((rows, width), dtype=np.int64)
    for b, prompt in enumerate(prompts):
        ids[b, width - len(prompt):], mask[b, width - len(prompt):] = prompt, 1
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    past = {i.name: np.zeros((rows, i.shape[1], 0, i.shape[3]), dtype=np.float32) for i in past_inputs}
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        logits, *present = sess.run(names, {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                                            **past})
        token = logits[:, -1].argmax(-1)
        past = dict(zip(past, present))
        ids, positions = token[:, None].astype(np.int64), positions[:, -1:] + 1
        mask = np.concatenate([mask, np.ones((rows, 1), dtype=np.int64)], axis=1)
        times.append(time.perf_counter() - start)
    return times[0], times[1:]


def decode_rate(sess, prompts: list[list[int]], steps: int, pad_id: int, reps: int, warmup: int = 2) -> dict:
    """Median over `reps` runs of the prefill and of the mean decode step; tokens/s = rows / step seconds."""
    prefills, step_means = [], []
    for r in range(warmup + reps):
        prefill, step_times = decode(sess, prompts, steps, pad_id)
        if r >= warmup:
            prefills.append(prefill)
            step_means.append(statistics.fmean(step_times))
    step = statistics.median(step_means)
    return {"batch": len(prompts), "prompt_tokens": max(map(len, prompts)), "steps": steps,
            "prefill_ms": statistics.median(prefills) * 1e3, "step_ms": step * 1e3, "tokens_per_s": len(prompts) / step}


def memory_bandwidth(threads: int, gib: float = 1.0, reps: int = 7) -> dict:
    """Read bandwidth: median time of a.sum() and of a.max() over a `gib` GiB float32 array, split into one slice
    per thread (numpy releases the GIL in both), with 1 thread and with `threads`; GB/s = array bytes / time. The
    bound takes the fastest of them (a.sum()'s pairwise summation can be compute-bound on one core). Also a copy
    (np.copyto into a second array), counted as bytes read + written."""
    a = np.ones(int(gib * 2 ** 30) // 4, dtype=np.float32)
    copy = np.empty_like(a)
    out = {"array_bytes": a.nbytes, "read": {}, "copy": {}}

    def median_s(pool, fn, *args) -> float:
        list(pool.map(fn, *args))                           # warm: pages touched
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            list(pool.map(fn, *args))
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    for t in sorted({1, threads}):
        parts, targets = np.array_split(a, t), np.array_split(copy, t)
        with ThreadPoolExecutor(t) as pool:
            for name, fn in (("a.sum()", np.sum), ("a.max()", np.max)):
                out["read"][f"{name}, {t} thread{'s' if t > 1 else ''}"] = a.nbytes / median_s(pool, fn, parts) / 1e9
            out["copy"][f"{t} thread{'s' if t > 1 else ''}"] = 2 * a.nbytes / median_s(pool, np.copyto, targets,
                                                                                         parts) / 1e9
    del a, copy
    best = max(out["read"], key=out["read"].get)
    return out | {"gb_per_s": out["read"][best], "best": best}


def weight_bytes(onnx_path: Path) -> dict:
    """Bytes of the graph's initializers, and those a decode step reads: all of them but tables only a Gather reads
    (the token embedding: a step reads one row of it). Tied embeddings are two initializers in these exports (the
    Gather's table and the lm_head MatMul's transposed copy): the copy is counted, the table is not."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    size = {t.name: int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            for t in graph.initializer}
    users = collections.defaultdict(list)
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in size:
                users[name].append((node.op_type, k))
    gathered = [n for n, u in users.items() if u and all(op == "Gather" and k == 0 for op, k in u)]
    total = sum(size.values())
    return {"initializers": len(size), "initializer_bytes": total,
            "gather_only_tables": {n: size[n] for n in gathered},
            "bytes_per_step": total - sum(size[n] for n in gathered)}


def tokenizer_of(directory: Path):
    """The tokenizer of a model or export directory, with a pad token (the EOS where it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prompt_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer(t)["input_ids"] for t in texts]


def short_prompt(tokenizer, texts: list[str], target: int = 10) -> str:
    """The text whose prompt length is closest to `target` tokens."""
    return min(texts, key=lambda t: abs(len(tokenizer(t)["input_ids"]) - target))


def decoding_bound(onnx_dir: Path, texts: list[str], reps: int, threads: int) -> dict:
    tokenizer = tokenizer_of(onnx_dir)
    sess = ort_session(onnx_dir / ONNX, threads)
    pad = tokenizer.pad_token_id
    one = decode_rate(sess, prompt_ids(tokenizer, [short_prompt(tokenizer, texts)]), 32, pad, reps)
    say("decoding, batch 1", json.dumps(one))
    batches = [decode_rate(sess, prompt_ids(tokenizer, texts[:b]), 32, pad, max(3, reps // 3)) for b in (4, 16)]
    say("decoding, batch 4 and 16", json.dumps(batches))
    del sess
    weights = weight_bytes(onnx_dir / ONNX)
    bandwidth = memory_bandwidth(threads)
    bound = bandwidth["gb_per_s"] * 1e9 / weights["bytes_per_step"]
    return {"batch_1": one, "batches": batches, "weights": weights, "bandwidth": bandwidth,
            "bound_tokens_per_s": bound, "fraction_of_bound": one["tokens_per_s"] / bound}


def patched_decoding(model_dir: Path, work: Path, texts: list[str], reps: int, threads: int,
                     n: int = 1000) -> list[dict]:
    """1,000 neurons of the production kind (the catalog's editor settings: a subject key) against none, in
    cached decoding: a prefill and 8 decode steps, batch 1 and 16, interleaved."""
    entry = Catalog().entry(model_dir.name)
    patches = synthetic_patches(model_dir, n, work / f"patches-{n}", config=entry.editor_config())
    manifest = export(model_dir, patches, work / f"onnx-{n}", locality_sample(entry, 4))
    say(model_dir.name, f"{n} neurons exported", json.dumps(manifest["cache"]), manifest["patch_set"]["how"])
    sessions = {0: ort_session(work / "onnx-0" / ONNX, threads), n: ort_session(work / f"onnx-{n}" / ONNX, threads)}
    tokenizer = tokenizer_of(model_dir)
    pad = tokenizer.pad_token_id
    rows = []
    for batch in (1, 16):
        prompts = prompt_ids(tokenizer, [short_prompt(tokenizer, texts)] if batch == 1 else texts[:batch])
        m = interleaved({k: (lambda s=s: decode(s, prompts, 8, pad)) for k, s in sessions.items()}, reps)
        rows.append({"batch": batch, "tokens": max(map(len, prompts)), "decode_steps": 8, "neurons": n,
                     "subject_layer": entry.editor_config().subject_layer, "activation": "knee",
                     "how": manifest["patch_set"]["how"], "subject_cache_layers": manifest["cache"]["subject_layers"],
                     "unpatched_ms": m[0] * 1e3, "patched_ms": m[n] * 1e3, "ratio": m[n] / m[0]})
    return rows


# --- int8 ----------------------------------------------------------------------------------------------------------

def op_counts(onnx_path: Path) -> dict:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    counts = collections.Counter(node.op_type for node in graph.node)
    int8 = {t.name for t in graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}
    gathers = [node for node in graph.node if node.op_type == "Gather" and node.input[0] in int8]
    return {"ops": {k: counts[k] for k in ("MatMul", "MatMulInteger", "DynamicQuantizeLinear", "DequantizeLinear",
                                           "Gather") if counts[k]},
            "int8_initializers": len(int8), "int8_gathers": len(gathers)}


def edit_answers(directory: Path, edits: list[dict], locality: list[str]) -> tuple[list[str], list[str]]:
    model = OnnxModel(directory)
    answers = [p["answer"] for p in model([e["input"] for e in edits], max_new_tokens=8)]
    return answers, [p["answer"] for p in model(locality, max_new_tokens=8)]


def int8_parity(model_dir: Path, work: Path, reps: int, threads: int) -> dict:
    """The real patch set's export, quantized with quantize_dynamic (QInt8 weights), per tensor and per channel."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    entry = Catalog().entry(model_dir.name)
    fp32 = work / "onnx-real"
    started = time.perf_counter()
    manifest = export(model_dir, REAL_PATCHES, fp32, locality_sample(entry, 4))
    say(model_dir.name, f"real patch set exported in {time.perf_counter() - started:.0f} s:",
        json.dumps(manifest["patch_set"] | {"error_ids": None}), json.dumps(manifest["cache"]))
    edits = json.loads((REAL_PATCHES / "manifest.json").read_text())["edits"]
    locality = [e.input for e in locality_sample(entry, 64)]
    fp32_answers, fp32_locality = edit_answers(fp32, edits, locality)
    right = [a.startswith(e["target"].strip()) for a, e in zip(fp32_answers, edits)]
    out = {"edits": len(edits), "locality": len(locality), "neurons": manifest["patch_set"]["neurons"],
           "how": manifest["patch_set"]["how"],
           "fp32": {"file_bytes": (fp32 / ONNX).stat().st_size, "edits_right": sum(right),
                    "bytes_per_step": weight_bytes(fp32 / ONNX)["bytes_per_step"],
                    "wrong": [{"input": e["input"], "target": e["target"], "answer": a}
                              for e, a, ok in zip(edits, fp32_answers, right) if not ok]},
           "variants": {}}
    say(model_dir.name, f"fp32 export: {sum(right)}/{len(edits)} edits answered right")
    sessions = {"fp32": ort_session(fp32 / ONNX, threads)}
    for per_channel in (False, True):
        name = "int8, per channel" if per_channel else "int8, per tensor"
        directory = work / ("onnx-int8-channel" if per_channel else "onnx-int8-tensor")
        shutil.copytree(fp32, directory, ignore=shutil.ignore_patterns(ONNX))
        started = time.perf_counter()
        try:
            quantize_dynamic(fp32 / ONNX, directory / ONNX, weight_type=QuantType.QInt8, per_channel=per_channel)
            answers, local = edit_answers(directory, edits, locality)
        except Exception as error:  # noqa: BLE001 (a quantizer failure is a result to report)
            out["variants"][name] = {"error": f"{type(error).__name__}: {error}"}
            say(model_dir.name, name, "failed:", out["variants"][name]["error"])
            continue
        seconds = time.perf_counter() - started
        ok = [a.startswith(e["target"].strip()) for a, e in zip(answers, edits)]
        out["variants"][name] = {
            "per_channel": per_channel, "quantize_and_answer_s": seconds,
            "file_bytes": (directory / ONNX).stat().st_size, **op_counts(directory / ONNX),
            "bytes_per_step": weight_bytes(directory / ONNX)["bytes_per_step"],
            "edits_right": sum(ok), "kept": sum(a and b for a, b in zip(right, ok)),
            "lost": [{"input": e["input"], "target": e["target"], "fp32": f, "int8": a}
                     for e, f, a, r, k in zip(edits, fp32_answers, answers, right, ok) if r and not k],
            "gained": sum(k and not r for r, k in zip(right, ok)),
            "locality": len(locality), "locality_unchanged": sum(a == b for a, b in zip(local, fp32_locality)),
            "locality_changed": [{"input": t, "fp32": a, "int8": b} for t, a, b in zip(locality, fp32_locality, local)
                                 if a != b]}
        sessions[name] = ort_session(directory / ONNX, threads)
        v = out["variants"][name]
        say(model_dir.name, name, f"{v['file_bytes'] / 1e6:.0f} MB, {json.dumps(v['ops'])}, kept {v['kept']}, "
            f"lost {len(v['lost'])}, locality unchanged {v['locality_unchanged']}/{len(locality)}")
    tokenizer = tokenizer_of(fp32)
    pad = tokenizer.pad_token_id
    prompt = prompt_ids(tokenizer, [short_prompt(tokenizer, locality)])
    rates = {k: [] for k in sessions}
    for sess in sessions.values():
        decode(sess, prompt, 32, pad)           # warm
    for _ in range(max(3, reps // 3)):          # interleaved: fp32 and the int8 variants alike under drift
        for k, sess in sessions.items():
            rates[k].append(decode_rate(sess, prompt, 32, pad, 1, warmup=0)["step_ms"])
    for k, times in rates.items():
        step = statistics.median(times)
        target = out["fp32"] if k == "fp32" else out["variants"][k]
        target |= {"step_ms": step, "tokens_per_s": 1e3 / step}
    say(model_dir.name, "int8 decoding", json.dumps({k: 1e3 / statistics.median(v) for k, v in rates.items()}))
    return out


# --- patcher serve -----------------------------------------------------------------------------------------------

def logits_only_dir(model_dir: Path, cached_dir: Path, out: Path) -> Path:
    """An export directory as exports were before the KV cache: the cached export's files, its model.onnx replaced
    by LogitsOnly traced (the whole sequence in, logits out: OnnxModel recomputes the prefix per token)."""
    model, tokenizer = load_model(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    shutil.copytree(cached_dir, out, ignore=shutil.ignore_patterns(ONNX))
    inputs = _inputs(tokenizer, ["a short input", "a slightly longer input for the trace"])
    names = list(inputs)
    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in [*names, "logits"]}
    with torch.no_grad():
        torch.onnx.export(LogitsOnly(model, names), tuple(inputs.values()), str(out / ONNX), dynamo=False,
                          opset_version=17, input_names=names, output_names=["logits"], dynamic_axes=axes)
    manifest = json.loads((out / "export.json").read_text())
    manifest |= {"inputs": names, "cache": None}
    manifest["files"][ONNX] = sha256(out / ONNX)           # publish.fetch verifies every file against export.json
    (out / "export.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return out


def serve_load(model: str, variants: list[tuple[str, Path, dict]], work: Path, texts: list[str],
               clients: list[int], seconds: float) -> list[dict]:
    """Each variant (label, export directory, ServeSettings overrides) served in turn over one S3 server, loaded
    by each client count for `seconds`."""
    import httpx

    from patcher.pipeline.s3 import EmbeddedS3
    from patcher.serving.publish import publish
    from patcher.serving.serve import ServeSettings, Service, in_thread

    rows = []
    with EmbeddedS3(work / "s3", "bench-key", "bench-secret-0123456789") as s3:
        os.environ.update(AWS_ENDPOINT_URL=s3.endpoint_url, AWS_ACCESS_KEY_ID=s3.access_key,
                          AWS_SECRET_ACCESS_KEY=s3.secret_key)
        for k, (label, onnx_dir, overrides) in enumerate(variants):
            root = f"s3://bench/v{k}"
            publish(onnx_dir, root, model, "v0000")
            settings = ServeSettings(model, root, cache_dir=str(work / f"cache-{k}"), poll_s=60, **overrides)
            service = Service(settings).start()
            server, url = in_thread(service)
            with httpx.Client(base_url=url, timeout=120) as http:          # warm: the first run sizes the arena
                http.post("/predict", json={"input": texts[0], "max_new_tokens": 8}).raise_for_status()
            for n in clients:
                latencies, failures, deadline = [], [], time.monotonic() + seconds
                batches, batch_rows = service.batcher.batches, service.batcher.rows

                def client(c: int):
                    with httpx.Client(base_url=url, timeout=120) as http:
                        i = c
                        while time.monotonic() < deadline:
                            start = time.perf_counter()
                            try:
                                ok = http.post("/predict", json={"input": texts[i % len(texts)],
                                                                 "max_new_tokens": 8}).status_code == 200
                            except httpx.HTTPError:
                                ok = False
                            (latencies if ok else failures).append(time.perf_counter() - start)
                            i += n

                began = time.monotonic()
                workers = [threading.Thread(target=client, args=(c,)) for c in range(n)]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
                elapsed = time.monotonic() - began
                runs = service.batcher.batches - batches
                q = np.percentile(latencies, [50, 95]) * 1e3 if latencies else [float("nan")] * 2
                row = {"variant": label, "settings": {f: getattr(settings, f) for f in BEFORE},
                       "graph": "KV cache" if service.current.cached else
                       ("no cache (prefix recomputed per token)" if service.current.task == "generation" else "plain"),
                       "clients": n, "seconds": round(elapsed, 1), "requests": len(latencies),
                       "failed": len(failures), "rps": len(latencies) / elapsed, "p50_ms": float(q[0]),
                       "p95_ms": float(q[1]),
                       "rows_per_batch": (service.batcher.rows - batch_rows) / runs if runs else float("nan")}
                rows.append(row)
                say(model, json.dumps(row))
            server.should_exit = True
            service.stop()
            del service
    for row in rows:
        before = next(r for r in rows if r["variant"] == "before" and r["clients"] == row["clients"])
        row["vs_before"] = row["rps"] / before["rps"]
    return rows


# --- report --------------------------------------------------------------------------------------------------------

def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# Serving the ONNX export", "",
             f"`bench/serving.py`, one run on {m['cpus']} CPUs ({m['platform']}), torch {m['torch']}, onnxruntime "
             f"{m['onnxruntime']}, {result['threads']} threads for both runtimes in the timings (the service runs "
             f"with onnxruntime's default threads, as users get it), {result['reps']} timed rounds per figure "
             f"(medians), `patcher serve` loaded for {result['seconds']:g} s per client count.", ""]
    for name, r in result["models"].items():
        lines += [f"## {name}", "", "### onnxruntime against eager PyTorch", ""]
        if "decoding" in r:
            lines += ["The export is the KV-cached graph: onnxruntime's time is its prefill (an empty cache).", ""]
        lines += ["| batch | tokens | eager ms | onnxruntime ms | eager / onnxruntime |", "|---|---|---|---|---|"]
        lines += [f"| {x['batch']} | {x['tokens']} | {x['eager_ms']:.2f} | {x['onnxruntime_ms']:.2f} | "
                  f"{x['eager_over_ort']:.2f} |" for x in r["runtime_vs_eager"]]
        lines += ["", "### Patched against unpatched", ""]
        if "patched_decoding" in r:
            x0 = r["patched_decoding"][0]
            lines += [f"{x0['neurons']} patch neurons of the kind the editor trains for this model (a subject key "
                      f"on layer {x0['subject_layer']}, the '{x0['activation']}' activation; random weights), "
                      f"{x0['how']}, their subject scores {x0['subject_cache_layers']} extra cache layers; a prefill "
                      f"and {x0['decode_steps']} decode steps (goal: ratio at most 1.05).", "",
                      "| batch | prompt tokens | unpatched ms | patched ms | ratio |", "|---|---|---|---|---|"]
            lines += [f"| {x['batch']} | {x['tokens']} | {x['unpatched_ms']:.1f} | {x['patched_ms']:.1f} | "
                      f"{x['ratio']:.3f} |" for x in r["patched_decoding"]]
        else:
            lines += ["One forward pass.", "", "| batch | patch neurons | how | unpatched ms | patched ms | ratio |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {x['batch']} | {x['neurons']} | {x['how']} | {x['unpatched_ms']:.2f} | "
                      f"{x['patched_ms']:.2f} | {x['ratio']:.3f} |" for x in r["patched_vs_unpatched"]]
        lines += ["", "### `patcher serve`", "",
                  "POST /predict, one input a request" + (", a greedy answer of up to 8 tokens" if "decoding" in r
                                                          else "") + "; before: "
                  + ("an export without a cache, " if "decoding" in r else "")
                  + "each request its own model run, two at once; after: the export as `patcher export` writes it "
                    "and ServeSettings' defaults. Rows a run: the batcher's mean inputs per model run."
                  + (f" The export without a cache gives the cached one's answers on 8 inputs: "
                     f"{'yes' if r['serve_answers_same'] else 'NO'}." if "serve_answers_same" in r else ""), "",
                  "| clients | variant | graph | max_running | window ms | rows at most | requests/s | p50 ms | "
                  "p95 ms | failed | rows a run | / before |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for x in sorted(r["serve"], key=lambda x: x["clients"]):
            s = x["settings"]
            lines.append(f"| {x['clients']} | {x['variant']} | {x['graph']} | {s['max_running']} | "
                         f"{s['batch_window_ms']:g} | {s['max_batch_rows']} | {x['rps']:.1f} | {x['p50_ms']:.1f} | "
                         f"{x['p95_ms']:.1f} | {x['failed']} | {x['rows_per_batch']:.2f} | {x['vs_before']:.2f} |")
        goals = r.get("goals")
        if goals:
            lines += ["", "Issue 41's goals at " + f"{goals['clients']} clients: " + "; ".join(goals["lines"]) + "."]
        if "decoding" in r:
            d = r["decoding"]
            w, b, one = d["weights"], d["bandwidth"], d["batch_1"]
            tables = ", ".join(f"{n} ({s / 1e6:.1f} MB)" for n, s in w["gather_only_tables"].items())
            lines += ["", "### Cached decoding against the memory bound", "",
                      f"The unpatched export, a prefill of {one['prompt_tokens']} tokens then {one['steps']} decode "
                      f"steps, median of the runs' mean step. A decode step reads every weight once: "
                      f"{w['bytes_per_step'] / 1e6:.1f} MB, the graph's {w['initializers']} initializers "
                      f"({w['initializer_bytes'] / 1e6:.1f} MB) less the tables only a Gather reads, one row a token "
                      f"({tables or 'none'}; the tied lm_head is a separate transposed copy, counted). Read bandwidth, "
                      f"the median time of a read over a {b['array_bytes'] / 2 ** 30:g} GiB float32 array (one slice "
                      f"a thread): " + ", ".join(f"{k} {v:.1f} GB/s" for k, v in b["read"].items())
                      + "; a copy (bytes read + written): "
                      + ", ".join(f"{k} {v:.1f} GB/s" for k, v in b["copy"].items())
                      + f". Bound: the fastest read, {b['gb_per_s']:.1f} GB/s ({b['best']}), / "
                        f"{w['bytes_per_step'] / 1e6:.1f} MB = {d['bound_tokens_per_s']:.1f} tokens/s; batch 1 "
                        f"reaches {one['tokens_per_s']:.1f} tokens/s, {d['fraction_of_bound']:.0%} of it.", "",
                      "| batch | prompt tokens | prefill ms | ms a decode step | tokens/s |", "|---|---|---|---|---|"]
            lines += [f"| {x['batch']} | {x['prompt_tokens']} | {x['prefill_ms']:.1f} | {x['step_ms']:.1f} | "
                      f"{x['tokens_per_s']:.1f} |" for x in [one, *d["batches"]]]
        if "int8" in r:
            q = r["int8"]
            f = q["fp32"]
            lines += ["", "### int8 (onnxruntime quantize_dynamic, QInt8 weights)", "",
                      f"The real patch set ({q['edits']} edits, {q['neurons']} neurons, {q['how']}) exported, then "
                      f"quantized. An edit is right when its greedy answer (up to 8 tokens) starts with its target; "
                      f"kept: right in fp32 and int8, lost: right in fp32 only. Locality: the first {q['locality']} "
                      f"inputs of the suites, answers the same as fp32's. Decoding: batch 1, "
                      f"{r['decoding']['batch_1']['prompt_tokens'] if 'decoding' in r else ''} prompt tokens, "
                      f"32 steps, fp32 and int8 interleaved.", "",
                      "| variant | file MB | MB a step | ops | tokens/s | edits right | kept | lost | gained | "
                      "locality unchanged |", "|---|---|---|---|---|---|---|---|---|---|"]
            lines.append(f"| fp32 | {f['file_bytes'] / 1e6:.0f} | {f['bytes_per_step'] / 1e6:.0f} | | "
                         f"{f.get('tokens_per_s', float('nan')):.1f} | {f['edits_right']}/{q['edits']} | | | | |")
            for vname, v in q["variants"].items():
                if "error" in v:
                    lines.append(f"| {vname} | failed: {v['error']} | | | | | | | | |")
                    continue
                ops = ", ".join(f"{k} {n}" for k, n in v["ops"].items())
                lines.append(f"| {vname} | {v['file_bytes'] / 1e6:.0f} | {v['bytes_per_step'] / 1e6:.0f} | {ops} | "
                             f"{v.get('tokens_per_s', float('nan')):.1f} | {v['edits_right']}/{q['edits']} | "
                             f"{v['kept']} | {len(v['lost'])} | {v['gained']} | "
                             f"{v['locality_unchanged']}/{v['locality']} |")
            for vname, v in q["variants"].items():
                if v.get("lost"):
                    lines += ["", f"Edits lost by {vname} ({len(v['lost'])}): input (target): fp32's answer / int8's.",
                              ""]
                    lines += [f"- \"{e['input']}\" ({e['target']}): {e['fp32']!r} / {e['int8']!r}" for e in v["lost"]]
            if f["wrong"]:
                lines += ["", f"Edits wrong in fp32 already ({len(f['wrong'])}):", ""]
                lines += [f"- \"{e['input']}\" ({e['target']}): {e['answer']!r}" for e in f["wrong"]]
        lines.append("")
    return "\n".join(lines) + "\n"


def goals(name: str, serve: list[dict], clients: int) -> dict | None:
    at = {r["variant"]: r for r in serve if r["clients"] == clients}
    if "before" not in at or "after" not in at:
        return None
    before, after = at["before"], at["after"]
    if name == "facts-smollm2":
        lines = [f"requests/s {after['rps']:.1f} against {before['rps']:.1f} before, {after['vs_before']:.1f}x (goal "
                 f"at least 5x: {'met' if after['vs_before'] >= 5 else 'not met'}; 5x the docs' 6.8 is 34)",
                 f"p95 {after['p95_ms']:.0f} ms (goal under 250 ms: {'met' if after['p95_ms'] < 250 else 'not met'})"]
    else:
        lines = [f"requests/s with batching {after['rps']:.1f} against {before['rps']:.1f} without, "
                 f"{after['vs_before']:.2f}x (the docs' figure was 276.7)"]
    return {"clients": clients, "lines": lines}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="factcheck-minilm,facts-smollm2")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--clients", default="4,16", help="client counts, comma-separated")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--out-dir", default="docs/results")
    args = p.parse_args(argv)
    clients = [int(c) for c in str(args.clients).split(",")]
    torch.set_num_threads(args.threads)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "onnxruntime": ort.__version__},
              "threads": args.threads, "reps": args.reps, "clients": clients, "seconds": args.seconds, "models": {}}
    for name in args.models.split(","):
        model_dir = build(name, out=model_path(name), progress=lambda m: say(m))
        entry = Catalog().entry(name)
        texts = [e.input for e in locality_sample(entry, 64)]
        generation = entry.task == "generation"
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            export(model_dir, None, work / "onnx-0", locality_sample(entry, 4))
            say(name, "exported")
            r = {"runtime_vs_eager": runtime_vs_eager(model_dir, work / "onnx-0", texts, args.reps, args.threads)}
            say(name, json.dumps(r["runtime_vs_eager"]))
            if generation:
                before_dir = logits_only_dir(model_dir, work / "onnx-0", work / "onnx-logits-only")
                same = OnnxModel(before_dir)(texts[:8]) == OnnxModel(work / "onnx-0")(texts[:8])
                say(name, "no-cache export traced; same answers as the cached one on 8 inputs:", same)
                variants = [("before", before_dir, BEFORE), ("after", work / "onnx-0", {}),
                            ("after, max_running=2", work / "onnx-0", ALTERNATIVE)]
            else:
                variants = [("before", work / "onnx-0", BEFORE), ("after", work / "onnx-0", {})]
            r["serve"] = serve_load(name, variants, work, texts, clients, args.seconds)
            if generation:
                shutil.rmtree(work / "onnx-logits-only")
                r["serve_answers_same"] = same
            r["goals"] = goals(name, r["serve"], 4 if 4 in clients else clients[0])
            if generation:
                r["decoding"] = decoding_bound(work / "onnx-0", texts, args.reps, args.threads)
                r["patched_decoding"] = patched_decoding(model_dir, work, texts, args.reps, args.threads)
                say(name, json.dumps(r["patched_decoding"]))
                shutil.rmtree(work / "onnx-1000")
                r["int8"] = int8_parity(model_dir, work, args.reps, args.threads)
            else:
                r["patched_vs_unpatched"] = patched_vs_unpatched(model_dir, work, texts, args.reps, args.threads)
                say(name, json.dumps(r["patched_vs_unpatched"]))
        result["models"][name] = r
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "serving.md").write_text(markdown(result))
    print(markdown(result))
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
