"""What serving the ONNX export costs, for both production models, in one run:

    .venv/bin/python bench/serving.py [--models factcheck-minilm,facts-smollm2] [--reps 30] [--threads 2]

1. onnxruntime against PyTorch eager (the unpatched model, logits of one forward pass), batch 1 and 32 of
   fact-bank prompts: median latency and the ratio.
2. Patched against unpatched ONNX after 100 and 1,000 edits' worth of neurons (one per edit; random weights:
   latency depends on the shapes only, and every export is still checked for parity), merged into the FFN
   where exact (factcheck-minilm) or a branch in the graph (SmolLM2): median latency ratio, batch 1 and 32.
   Variants are timed interleaved, one call each per round, so drifts of a noisy machine hit all alike.
3. `patcher serve` on 127.0.0.1 over a real S3 server: requests per second and latency percentiles of
   POST /predict (one input; SmolLM2: a greedy answer of up to 8 tokens) from --clients concurrent clients
   for --seconds.

Writes docs/results/serving.json and serving.md (with the machine, versions and thread counts).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from patcher import Editor, EditorConfig  # noqa: E402
from patcher.engine.patch import PatchNeurons  # noqa: E402
from patcher.engine.sequential import to_patchset  # noqa: E402
from patcher.models.base import load_model  # noqa: E402
from patcher.models.production import build, model_path  # noqa: E402
from patcher.pipeline.catalog import Catalog  # noqa: E402
from patcher.serving.export import LogitsOnly, _inputs, export  # noqa: E402
from patcher.serving.onnx_model import ONNX, onnx_logits  # noqa: E402
from patcher.serving.release import locality_sample  # noqa: E402


def ort_session(path: Path, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def synthetic_patches(model_dir: Path, n: int, out: Path, seed: int = 0) -> Path:
    """A patch set of `n` neurons with the editor's default activation and random weights."""
    model, tokenizer = load_model(model_dir)
    editor = Editor(model, tokenizer, EditorConfig())
    g = torch.Generator().manual_seed(seed)
    h = editor.neurons.keys.shape[1]
    keys = torch.randn(n, h, generator=g) / h ** 0.5
    editor.neurons = editor.neurons.extend(PatchNeurons(keys, torch.full((n,), -1.0), torch.randn(n, h, generator=g) * 0.01,
                                                        editor.neurons.activation))
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

        m = interleaved({"eager": eager, "onnxruntime": lambda: onnx_logits(sess, inputs)}, reps)
        rows.append({"batch": batch, "tokens": int(inputs["input_ids"].shape[1]), "eager_ms": m["eager"] * 1e3,
                     "onnxruntime_ms": m["onnxruntime"] * 1e3, "eager_over_ort": m["eager"] / m["onnxruntime"]})
    return rows


def patched_vs_unpatched(model_dir: Path, work: Path, texts: list[str], reps: int, threads: int,
                         sizes=(100, 1000)) -> list[dict]:
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


def serve_load(model: str, onnx_dir: Path, work: Path, texts: list[str], clients: int, seconds: float) -> dict:
    import httpx

    from patcher.pipeline.s3 import EmbeddedS3
    from patcher.serving.publish import publish
    from patcher.serving.serve import ServeSettings, Service, in_thread

    with EmbeddedS3(work / "s3", "bench-key", "bench-secret-0123456789") as s3:
        os.environ.update(AWS_ENDPOINT_URL=s3.endpoint_url, AWS_ACCESS_KEY_ID=s3.access_key,
                          AWS_SECRET_ACCESS_KEY=s3.secret_key)
        publish(onnx_dir, "s3://bench", model, "v0000")
        service = Service(ServeSettings(model, "s3://bench", cache_dir=str(work / "cache"), poll_s=60)).start()
        server, url = in_thread(service)
        latencies, failures, deadline = [], [], time.monotonic() + seconds

        def client(k: int):
            with httpx.Client(base_url=url, timeout=60) as http:
                i = k
                while time.monotonic() < deadline:
                    start = time.perf_counter()
                    r = http.post("/predict", json={"input": texts[i % len(texts)], "max_new_tokens": 8})
                    (latencies if r.status_code == 200 else failures).append(time.perf_counter() - start)
                    i += clients

        began = time.monotonic()
        workers = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.monotonic() - began
        server.should_exit = True
        service.stop()
    q = np.percentile(latencies, [50, 95]) * 1e3
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(latencies), "failed": len(failures),
            "rps": len(latencies) / elapsed, "p50_ms": float(q[0]), "p95_ms": float(q[1])}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# Serving the ONNX export", "",
             f"`bench/serving.py`, one run on {m['cpus']} CPUs ({m['platform']}), torch {m['torch']}, onnxruntime "
             f"{m['onnxruntime']}, {result['threads']} threads for both runtimes, {result['reps']} timed rounds "
             f"per figure (medians).", ""]
    for name, r in result["models"].items():
        lines += [f"## {name}", "", "| batch | tokens | eager ms | onnxruntime ms | eager / onnxruntime |",
                  "|---|---|---|---|---|"]
        lines += [f"| {x['batch']} | {x['tokens']} | {x['eager_ms']:.2f} | {x['onnxruntime_ms']:.2f} | "
                  f"{x['eager_over_ort']:.2f} |" for x in r["runtime_vs_eager"]]
        lines += ["", "| batch | patch neurons | how | unpatched ms | patched ms | ratio |", "|---|---|---|---|---|---|"]
        lines += [f"| {x['batch']} | {x['neurons']} | {x['how']} | {x['unpatched_ms']:.2f} | {x['patched_ms']:.2f} | "
                  f"{x['ratio']:.3f} |" for x in r["patched_vs_unpatched"]]
        s = r["serve"]
        lines += ["", f"`patcher serve`: {s['rps']:.1f} requests/s from {s['clients']} clients over {s['seconds']} s "
                      f"({s['requests']} answered, {s['failed']} failed), p50 {s['p50_ms']:.1f} ms, "
                      f"p95 {s['p95_ms']:.1f} ms.", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="factcheck-minilm,facts-smollm2")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--out-dir", default="docs/results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "onnxruntime": ort.__version__},
              "threads": args.threads, "reps": args.reps, "models": {}}
    for name in args.models.split(","):
        model_dir = build(name, out=model_path(name), progress=lambda m: print(m, file=sys.stderr))
        texts = [e.input for e in locality_sample(Catalog().entry(name), 64)]
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            export(model_dir, None, work / "onnx-0", locality_sample(Catalog().entry(name), 4))
            r = {"runtime_vs_eager": runtime_vs_eager(model_dir, work / "onnx-0", texts, args.reps, args.threads)}
            print(name, json.dumps(r["runtime_vs_eager"]), file=sys.stderr)
            r["patched_vs_unpatched"] = patched_vs_unpatched(model_dir, work, texts, args.reps, args.threads)
            print(name, json.dumps(r["patched_vs_unpatched"]), file=sys.stderr)
            r["serve"] = serve_load(name, work / "onnx-0", work, texts, args.clients, args.seconds)
            print(name, json.dumps(r["serve"]), file=sys.stderr)
        result["models"][name] = r
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "serving.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
