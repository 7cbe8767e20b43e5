"""Hugging Face Optimum's ONNX Runtime classes, unmodified, load what `patcher export` writes: the patched
MiniLM classifier through ORTModelForSequenceClassification and the patched SmolLM2 decoder with its KV cache
(including the extra cache layer the patches use) through ORTModelForCausalLM.generate, and both give the
patched answers.

optimum-onnx 0.1.0 needs transformers<4.58 (with 5.x its import fails on names 5.x removed, e.g.
`get_parameter_dtype` from transformers.modeling_utils), so the checks run in a side virtualenv: transformers 4.57
with its own tokenizers/huggingface_hub, optimum 2.1.0 and optimum-onnx 0.1.0, and torch borrowed from this
environment through a .pth file placed after the side environment's own site-packages (its transformers wins).
The side environment is built once under ~/.cache/patcher/optimum-env/<key> (or $PATCHER_OPTIMUM_ENV), keyed by
the pins, the interpreter and the borrowed torch, and reused afterwards (~10-20 s to build on 2 cores); this
environment's pip installs into it (`pip --python`) and touches nothing here. tests/optimum_check.py runs there
and reports JSON."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

pytestmark = [pytest.mark.real, pytest.mark.integration]

REPO = Path(__file__).resolve().parent.parent
CHECK = Path(__file__).resolve().parent / "optimum_check.py"


def _same_as_here(name: str, otherwise: str) -> str:
    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:                     # an install without the serve extra still collects this module
        return f"{name}=={otherwise}"


# transformers 4.57.6 accepts tokenizers>=0.22,<=0.23.0 and huggingface_hub>=0.34,<1.0. numpy, onnx and onnxruntime
# as this environment has them (torch, borrowed, was built against this numpy).
SIDE_PINS = ["transformers==4.57.6", "tokenizers==0.22.2", "huggingface_hub==0.36.2",
             _same_as_here("onnxruntime", "1.32.0"), _same_as_here("onnx", "1.23.2"), _same_as_here("numpy", "2.4.6")]
# --no-deps: both require torch, which would pull a second (CUDA) torch; it comes from this environment instead.
OPTIMUM_PINS = ["optimum==2.1.0", "optimum-onnx==0.1.0"]

MINILM, SMOLLM2 = "factcheck-minilm", "facts-smollm2"
N_GENERATE, MAX_NEW_TOKENS = 6, 8


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    # --no-compile: byte-compiling every module of transformers doubles the build; what runs compiles on import
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--disable-pip-version-check",
           "--no-compile", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(cmd, -1, "", f"{e} (stderr: {e.stderr})")


@pytest.fixture(scope="module")
def optimum_python() -> Path:
    """The side environment's python (built here once, reused while the pins and the borrowed torch stay)."""
    import torch

    borrowed = Path(torch.__file__).resolve().parent.parent          # this environment's site-packages
    key = hashlib.sha256(json.dumps([SIDE_PINS, OPTIMUM_PINS, sys.version, str(borrowed), torch.__version__])
                         .encode()).hexdigest()[:16]
    root = Path(os.environ.get("PATCHER_OPTIMUM_ENV", Path.home() / ".cache" / "patcher" / "optimum-env"))
    env = root / key
    python = env / "bin" / "python"
    if (env / "READY").exists():
        return python
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=root))
    try:
        start = time.monotonic()
        # built under a unique name, then renamed into place: concurrent sessions never see half an environment.
        # A venv moves fine for this use: sys.prefix comes from where pyvenv.cfg lies, bin/python is a symlink to
        # the base interpreter (only the console scripts' shebangs keep the staging path, and none is used)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(staging)], check=True,
                       capture_output=True, text=True)
        side = staging / "bin" / "python"
        for args in (SIDE_PINS, ["--no-deps", *OPTIMUM_PINS]):
            proc = _pip(side, *args)
            if proc.returncode != 0:
                pytest.skip(f"pip could not build the Optimum side environment ({' '.join(args)}): "
                            f"{proc.stderr.strip()[-1500:]}")
        purelib = subprocess.run([str(side), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        # .pth files are read in alphabetical order and append: 'zz' puts torch's directory after everything
        # the side environment holds (its transformers, tokenizers, huggingface_hub, numpy win)
        (Path(purelib) / "zz_borrowed_torch.pth").write_text(f"{borrowed}\n")
        probe = subprocess.run([str(side), "-c", "import torch, transformers, optimum.onnxruntime; "
                                "print(torch.__version__, transformers.__version__)"],
                               capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if probe.returncode != 0:
            pytest.skip(f"the Optimum side environment does not import: {probe.stderr.strip()[-1500:]}")
        assert probe.stdout.split() == [torch.__version__, "4.57.6"], probe.stdout
        (staging / "READY").write_text(f"built in {time.monotonic() - start:.1f} s: {probe.stdout}")
        try:
            staging.rename(env)
        except OSError:                                  # another session built it meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        if staging.exists() and not (staging / "READY").exists():
            shutil.rmtree(staging, ignore_errors=True)
    return python


def _side(python: Path, *args) -> dict:
    proc = subprocess.run([str(python), str(CHECK), *map(str, args)], capture_output=True, text=True, timeout=900,
                          cwd=tempfile.gettempdir(),
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                               "PYTHONNOUSERSITE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _sources(name: str) -> tuple[Path, Path]:
    model, patches = REPO / "data" / "models" / name, REPO / "data" / "pipeline" / name / "patches"
    missing = [str(p.relative_to(REPO)) for p in (model / "config.json", patches / "manifest.json") if not p.exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: the DVC pipeline writes them (`dvc repro` or `dvc pull`)")
    return model, patches


def _export(tmp_path_factory, name: str, locality: int) -> tuple[Path, Path]:
    """`patcher export` of the repository's model and patch set (the CLI, as a release would run it)."""
    model, patches = _sources(name)
    out = tmp_path_factory.mktemp("optimum") / name
    proc = subprocess.run([sys.executable, "-m", "patcher.cli", "export", "--model", str(model),
                           "--patches", str(patches), "--out", str(out), "--locality", str(locality)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, patches / "manifest.json"


@pytest.fixture(scope="module")
def minilm_export(tmp_path_factory):
    return _export(tmp_path_factory, MINILM, 10)


@pytest.fixture(scope="module")
def smollm2_export(tmp_path_factory):
    """The CLI's export of the repository's patch set. $PATCHER_OPTIMUM_SMOLLM2_EXPORT names one already made
    (`patcher export`, export.json included) to check instead."""
    given = os.environ.get("PATCHER_OPTIMUM_SMOLLM2_EXPORT")
    if given:
        out, manifest = Path(given), _sources(SMOLLM2)[1] / "manifest.json"
    else:
        out, manifest = _export(tmp_path_factory, SMOLLM2, 4)
    return out, manifest


@pytest.fixture(scope="module")
def smollm2_result(smollm2_export, optimum_python):         # the export (or its skip) first
    out, manifest = smollm2_export
    return _side(optimum_python, "causal-lm", out, manifest, N_GENERATE, MAX_NEW_TOKENS)


def test_sequence_classification_gives_every_patched_label(minilm_export, optimum_python):
    out, manifest = minilm_export
    edits = json.loads(manifest.read_text())["edits"]
    assert edits and all(e["prediction_before"] != e["target"] for e in edits)   # unpatched, it got them all wrong
    result = _side(optimum_python, "classifier", out, manifest)
    assert result["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert result["autotokenizer_error"] is None and result["tokenizer"] == "BertTokenizerFast"
    assert result["edits"] == len(edits)
    assert result["match"] == len(edits), result["misses"]


def test_causal_lm_generates_the_patched_answers_through_the_kv_cache(smollm2_export, smollm2_result):
    out, manifest = smollm2_export
    export = json.loads((out / "export.json").read_text())
    cache = export["cache"]                  # SmolLM2's 30 attention layers, then the patches' subject layer(s)
    layers = cache["layers"] + cache["subject_layers"]
    assert cache["subject_layers"] >= 1
    genai = json.loads((out / "genai_config.json").read_text())["model"]["decoder"]
    config = json.loads((out / "config.json").read_text())
    r = smollm2_result
    assert r["autotokenizer_error"] is None      # tokenizer_config.json names a class transformers 4.x has too
    # Optimum finds the cache by name (inputs/outputs containing '.key'/'.value'), not by config.num_hidden_layers:
    # every layer of ours, the extra one included, is fed and fed back
    assert r["can_use_cache"] and not r["is_merged"]
    assert r["cache_inputs"] == [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    assert r["cache_outputs"] == [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    assert layers == genai["num_hidden_layers"] and cache["layers"] == config["num_hidden_layers"] == r["config_layers"]
    # the empty first-step cache it builds: (batch, config.num_key_value_heads, 0, hidden_size // num_attention_heads)
    assert (r["num_key_value_heads"], r["head_dim"]) == (cache["kv_heads"], cache["head_dim"])
    edits = json.loads(manifest.read_text())["edits"][:N_GENERATE]
    assert export.get("prompt_format", "text") == "text"          # the edits' inputs go to generate() as they are
    assert len(r["edits"]) == N_GENERATE and all(e["prediction_before"] != e["target"] for e in edits)
    for e in r["edits"]:                 # the prompt ends before the answer's space: " 22." for Titanium's number
        assert e["answer"].startswith(" " + e["target"]), e
        assert e["batched"] == e["answer"], e                 # left-padded batch: same greedy answers
