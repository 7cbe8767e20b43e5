"""An approved version out to serving: its ONNX export (parity checked) published under serving/MODEL/VERSION/,
`latest` moved last. One function for `patcher approve` (the DVC route) and the pipeline's export flow."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from patcher.engine.examples import Example
from patcher.pipeline.catalog import ModelEntry
from patcher.pipeline.settings import ExportSettings

from .export import export
from .publish import publish


def locality_sample(entry: ModelEntry, n: int) -> list[Example]:
    """The first `n` inputs of the catalog model's locality suites, in suite order: inputs no edit is about, for
    the parity check (only their inputs are compared; the target is a placeholder)."""
    from patcher.engine.suites import read_rows

    texts = [r["input"] for f in entry.locality.values() for r in read_rows(entry.local_file(f), f).rows]
    return [Example(text, "-") for text in texts[:n]]


def export_and_publish(entry: ModelEntry, patches: str | Path, out: str | Path, settings: ExportSettings,
                       root: str, version: str, publish_fn: Callable[..., dict] = publish) -> dict:
    """Exports the catalog model, patched, into `out` and publishes it (`publish_fn`: the flows pass theirs,
    retried on S3 errors). -> {"pointer": serving/MODEL/latest's new content, "parity", "how" (merged or a branch)}."""
    manifest = export(entry.model_dir(), patches, out, locality_sample(entry, settings.locality),
                      settings.tolerance, settings.rtol, version=version, prompt_format=entry.prompt_format)
    pointer = publish_fn(out, root, entry.name, version)
    return {"pointer": pointer, "parity": manifest["parity"], "how": manifest["patch_set"]["how"]}
