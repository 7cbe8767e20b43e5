"""Step 7: the approved version exported to ONNX (patcher/export.py: parity with PyTorch checked, or the
step fails) and published for serving under serving/MODEL/vNNNN/, with serving/MODEL/latest written last
(patcher/publish.py). `patcher serve` picks it up from there."""
from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import flow, get_run_logger

from flows import s3_tasks
from patcher.serving.publish import publish


@flow(name="export")
def export_version(root: str, model: str, version: str, patches_uri: str, settings: dict | None = None,
                   seed: int = 0) -> dict:
    """-> {"pointer": serving/MODEL/latest's new content, "parity", "how"}."""
    from patcher.models.production import build, model_path
    from patcher.pipeline.settings import ExportSettings
    from patcher.serving.export import export, locality_sample

    s = ExportSettings.from_dict(settings)
    log = get_run_logger()
    model_dir = build(model, out=model_path(model), progress=log.info)
    with tempfile.TemporaryDirectory() as tmp:
        patches = s3_tasks.download_dir(patches_uri, Path(tmp) / "patches")
        manifest = export(model_dir, patches, Path(tmp) / "onnx", locality_sample(model_dir, s.locality, seed),
                          s.tolerance, s.rtol, version=version)
        pointer = s3_tasks.s3_task(name="publish-onnx")(publish)(Path(tmp) / "onnx", root, model, version)
    log.info("%s %s exported (%s, parity max |diff| %.2e on %d inputs) and published: %s", model, version,
             manifest["patch_set"]["how"], manifest["parity"]["max_abs_diff"], manifest["parity"]["examples"],
             pointer["uri"])
    return {"pointer": pointer, "parity": manifest["parity"], "how": manifest["patch_set"]["how"]}
