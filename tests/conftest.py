import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)   # tiny ops: one thread is many times faster on 2-core machines

from patcher import Editor, EditorConfig, Memory  # noqa: E402
from patcher.engine.examples import Example  # noqa: E402
from patcher.models.tiny import tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def make_model():
    return tiny_model


# Inputs and targets the tiny models are edited on, with memory sentences of other shapes.
FACTS = [Example(f"the capital of {c} is", a) for c, a in
         [("france", "paris"), ("spain", "madrid"), ("italy", "rome"), ("peru", "lima"), ("chile", "santiago")]]
MEMORY = [Example(t, "yes") for t in [
    "a red house stands by the river", "numbers go up and down", "the weather was cold in june",
    "music played all night long", "he wrote a letter to his brother", "three dogs ran across the park",
    "the book was closed", "she likes green tea", "trains leave every hour", "a small boat drifted"]]


def editor_for(make_model, tokenizer, arch, dtype=torch.float32, **cfg):
    """An editor on a tiny model with a 7-example memory and the rest of MEMORY as its validation memory."""
    model = make_model(arch).to(dtype)
    editor = Editor(model, tokenizer, EditorConfig(**cfg))
    memory = [Example(m.input, "L0") for m in MEMORY] if arch == "bert" else MEMORY
    editor.memory = Memory.from_examples(editor.task, memory[:7])
    editor.val_memory = Memory.from_examples(editor.task, memory[7:])
    return editor


def dense_memory_losses(cfg, a_edit, memory, new):
    """The memory loss as written in the paper: every memory row's pre-activation under autograd, (l_m1, l_m2)."""
    top = memory.preactivation(new).topk(cfg.mem_topk, dim=0).values
    return torch.exp(top.unsqueeze(0) - a_edit.unsqueeze(1) + cfg.m1).mean(), torch.exp(top - cfg.m2).mean()


def pytest_collection_modifyitems(items):
    for item in items:          # a test on the real S3 server is an integration test (the fast lane skips them)
        if "s3_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS) on 127.0.0.1 for the whole session, with its own keys."""
    from patcher.pipeline.s3 import EmbeddedS3

    server = EmbeddedS3(tmp_path_factory.mktemp("s3"), "test-key", "test-secret-0123456789").start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This test's boto3 clients talk to the session's S3 server; -> a fresh root (bucket) for the test."""
    import uuid

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    return f"s3://t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session", autouse=True)
def builtin_catalog(tmp_path_factory):
    """The project's catalog.yaml with the built-in models where the test fixtures build them (`patcher models
    path`) and the data files where the repository has them; every test's Catalog() reads it."""
    import yaml

    from patcher.models.production import model_path

    repo = Path(__file__).resolve().parent.parent
    data = yaml.safe_load((repo / "catalog.yaml").read_text())
    for name, entry in data["models"].items():
        entry["path"] = str(model_path(name))
        for key in ("memory", "validation", "errors"):
            entry[key] = str(repo / entry[key])
        entry["locality"] = {suite: str(repo / f) for suite, f in entry["locality"].items()}
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    os.environ["PATCHER_CATALOG"] = str(path)
    return path


@pytest.fixture(scope="session")
def factcheck_model():
    """factcheck-minilm built where the pipeline looks for it (`patcher models path`), once: a build with
    the same settings is reused, also across sessions."""
    from patcher.models.production import build, model_path

    return build("factcheck-minilm", seed=0, out=model_path("factcheck-minilm"), progress=lambda m: None)


@pytest.fixture(scope="session")
def smollm2_model():
    """facts-smollm2 built where the pipeline looks for it, once (converted from the GGUF in its package)."""
    from patcher.models.production import build, model_path

    return build("facts-smollm2", seed=0, out=model_path("facts-smollm2"), progress=lambda m: None)


# `patcher serve`'s feedback tokens in the serving tests (name:token pairs, as PATCHER_FEEDBACK_TOKENS takes them)
SERVE_TOKENS = "support-team:s3cr3t-support-0001, app:s3cr3t-app-000002"


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """Tiny BERT classifier and Llama LM (128 positions, MiniLM's tokenizer says 512), exported unpatched."""
    from patcher.models.tiny import tiny_model, tiny_tokenizer
    from patcher.serving.export import export

    out = tmp_path_factory.mktemp("exports")
    for arch in ("bert", "llama"):
        tiny_model(arch).save_pretrained(out / arch)
        tiny_tokenizer().save_pretrained(out / arch)
        export(out / arch, None, out / f"{arch}-onnx")
    return out


@pytest.fixture
def make_service(exports, monkeypatch):
    """-> (tokens or None, root, arch, **settings) -> a Service on the tiny export, not started (no watcher)."""
    from patcher.serving.onnx_model import OnnxModel
    from patcher.serving.serve import ServeSettings, Service

    def make(tokens=SERVE_TOKENS, root="s3://never-written", arch="bert", **settings):
        if tokens is None:
            monkeypatch.delenv("PATCHER_FEEDBACK_TOKENS", raising=False)
        else:
            monkeypatch.setenv("PATCHER_FEEDBACK_TOKENS", tokens)
        service = Service(ServeSettings("tiny", root, **settings))
        service.current = OnnxModel(exports / f"{arch}-onnx", "v0001")
        made.append(service)
        return service
    made = []
    yield make
    for service in made:             # their batcher threads
        service.stop()


@pytest.fixture(scope="module")
def prefect_api():
    """A temporary Prefect server for the module's flows; -> its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with prefect_test_harness():
        yield PREFECT_API_URL.value()
