"""Exported models (export.py) published to S3 for serving, and fetched back.

  serving/M/VERSION/   an export directory: model.onnx, config.json, tokenizer files, export.json
  serving/M/latest     {"model", "version", "uri", "published_at", "export_sha256"}

The pointer is written after every file of the version, so a reader that follows it never sees a
half-written version; `export_sha256` pins export.json, and export.json pins every other file's sha256,
so `fetch` verifies the whole directory against the pointer it followed.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from patcher.engine.files import sha256
from patcher.engine.records import stamp
from patcher.pipeline.store import Layout, _is, download_dir, read_bytes, upload_dir, write_json

EXPORT_MANIFEST = "export.json"


class PublishedVersionError(RuntimeError):
    """A published version whose files do not match its checksums."""


def publish(export_dir: str | Path, root: str, model: str, version: str, s3=None) -> dict:
    """Uploads the directory to ROOT/serving/MODEL/VERSION/, then points `latest` at it. -> the pointer."""
    export_dir, layout = Path(export_dir), Layout(root, model)
    manifest = export_dir / EXPORT_MANIFEST
    if not manifest.exists():
        raise FileNotFoundError(f"{export_dir} is not an export directory (no {EXPORT_MANIFEST})")
    target = f"{layout.serving}/{version}"
    upload_dir(export_dir, target, s3)
    pointer = {"model": model, "version": version, "uri": target, "published_at": stamp(),
               "export_sha256": sha256(manifest)}
    write_json(f"{layout.serving}/latest", pointer, s3)
    return pointer


def latest(root: str, model: str, s3=None) -> dict | None:
    """The pointer to the version to serve, or None when nothing was published."""
    try:
        return json.loads(read_bytes(f"{Layout(root, model).serving}/latest", s3))
    except Exception as e:  # noqa: BLE001 (botocore raises per-client exception classes)
        if _is(e, "NoSuchKey", "404", "NoSuchBucket"):
            return None
        raise


def verify(directory: Path, export_sha256: str) -> None:
    """Raises PublishedVersionError unless export.json and every file it lists match their sha256."""
    manifest = directory / EXPORT_MANIFEST
    if not manifest.exists() or sha256(manifest) != export_sha256:
        raise PublishedVersionError(f"{directory}: {EXPORT_MANIFEST} missing or not the published one")
    for name, digest in json.loads(manifest.read_text())["files"].items():
        if not (directory / name).exists() or sha256(directory / name) != digest:
            raise PublishedVersionError(f"{directory}: {name} missing or its sha256 differs from {EXPORT_MANIFEST}")


def fetch(pointer: dict, cache_dir: str | Path, s3=None) -> Path:
    """The published version the pointer names, downloaded once into CACHE/MODEL/VERSION and verified."""
    local = Path(cache_dir) / pointer["model"] / pointer["version"]
    try:
        verify(local, pointer["export_sha256"])
        return local
    except PublishedVersionError:
        pass
    partial = local.with_name(local.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    download_dir(pointer["uri"], partial, s3)
    verify(partial, pointer["export_sha256"])
    shutil.rmtree(local, ignore_errors=True)
    partial.rename(local)
    return local
