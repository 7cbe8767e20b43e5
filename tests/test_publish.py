"""Publishing exports for serving (patcher/serving/publish.py) on a real S3 server: the `latest` pointer moves only
after every file of the version is up, and a fetched version is verified against the pointer's checksums."""
import json

import pytest

from patcher.engine.files import sha256
from patcher.pipeline import store
from patcher.serving import publish as publishing
from patcher.serving.publish import PublishedVersionError, fetch, latest, publish


def export_dir(path, weights: bytes):
    """The files of an export directory with a real export.json (the graph itself does not matter here)."""
    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(weights)
    (path / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    files = {p.name: sha256(p) for p in sorted(path.iterdir())}
    (path / "export.json").write_text(json.dumps({"format": "patcher.onnx/1", "files": files}))
    return path


def test_publish_points_latest_at_the_version_and_fetch_verifies_it(tmp_path, s3_env):
    assert latest(s3_env, "m") is None
    first = publish(export_dir(tmp_path / "a", b"graph one"), s3_env, "m", "v0001")
    assert latest(s3_env, "m") == first and first["uri"] == f"{s3_env}/serving/m/v0001"
    second = publish(export_dir(tmp_path / "b", b"graph two" * 1000), s3_env, "m", "v0002")
    assert latest(s3_env, "m") == second
    local = fetch(second, tmp_path / "cache")
    assert local == tmp_path / "cache" / "m" / "v0002" and (local / "model.onnx").read_bytes() == b"graph two" * 1000
    assert fetch(second, tmp_path / "cache") == local                 # cached and still verified

    store.write_bytes(f"{first['uri']}/model.onnx", b"tampered")     # a version changed after publishing
    with pytest.raises(PublishedVersionError, match="model.onnx"):
        fetch(first, tmp_path / "other-cache")
    assert not (tmp_path / "other-cache" / "m" / "v0001").exists()


def test_a_failed_upload_leaves_latest_on_the_previous_version(tmp_path, s3_env, monkeypatch):
    first = publish(export_dir(tmp_path / "a", b"graph one"), s3_env, "m", "v0001")
    upload = publishing.upload_dir

    def dies_midway(local, uri, s3=None):
        (tmp_path / "partial").mkdir()
        (tmp_path / "partial" / "config.json").write_text("{}")
        upload(tmp_path / "partial", uri, s3)
        raise ConnectionError("connection reset during upload")

    monkeypatch.setattr(publishing, "upload_dir", dies_midway)
    with pytest.raises(ConnectionError):
        publish(export_dir(tmp_path / "b", b"graph two"), s3_env, "m", "v0002")
    assert latest(s3_env, "m") == first                              # readers still get v0001, whole


def test_publish_refuses_a_directory_that_is_not_an_export(tmp_path, s3_env):
    (tmp_path / "x").mkdir()
    with pytest.raises(FileNotFoundError, match="not an export directory"):
        publish(tmp_path / "x", s3_env, "m", "v0001")
