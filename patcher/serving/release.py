"""An approved version out to serving: its ONNX export (parity checked) published under serving/MODEL/VERSION/,
`latest` moved last. One function for `patcher approve` (the DVC route) and the pipeline's export flow."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from patcher.pipeline.settings import ExportSettings

from .export import export, locality_sample
from .publish import publish


def export_and_publish(model_dir: str | Path, patches: str | Path, out: str | Path, settings: ExportSettings,
                       root: str, model: str, version: str, seed: int = 0,
                       publish_fn: Callable[..., dict] = publish) -> dict:
    """Exports the patched model into `out` and publishes it (`publish_fn`: the flows pass theirs, retried on
    S3 errors). -> {"pointer": serving/MODEL/latest's new content, "parity", "how" (merged or a branch)}."""
    manifest = export(model_dir, patches, out, locality_sample(model_dir, settings.locality, seed),
                      settings.tolerance, settings.rtol, version=version)
    pointer = publish_fn(out, root, model, version)
    return {"pointer": pointer, "parity": manifest["parity"], "how": manifest["patch_set"]["how"]}
