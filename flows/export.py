"""Step 7: the approved version exported to ONNX (parity with PyTorch checked, or the step fails) and
published for serving under serving/MODEL/vNNNN/, with serving/MODEL/latest written last
(patcher.serving.release.export_and_publish, as `patcher approve` does). `patcher serve` picks it up there."""
from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import flow, get_run_logger

from flows import s3_tasks


@flow(name="export")
def export_version(root: str, model: str, version: str, patches_uri: str, settings: dict | None = None) -> dict:
    """-> {"pointer": serving/MODEL/latest's new content, "parity", "how"}."""
    from patcher.pipeline.catalog import Catalog
    from patcher.pipeline.settings import ExportSettings
    from patcher.serving.release import export_and_publish

    log = get_run_logger()
    entry = Catalog().entry(model)
    with tempfile.TemporaryDirectory() as tmp:
        patches = s3_tasks.download_dir(patches_uri, Path(tmp) / "patches")
        exported = export_and_publish(entry, patches, Path(tmp) / "onnx", ExportSettings.from_dict(settings),
                                      root, version, publish_fn=s3_tasks.publish_onnx)
    log.info("%s %s exported (%s, parity max |diff| %.2e on %d inputs) and published: %s", model, version,
             exported["how"], exported["parity"]["max_abs_diff"], exported["parity"]["examples"],
             exported["pointer"]["uri"])
    return exported
