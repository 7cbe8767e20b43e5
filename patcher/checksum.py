"""sha256 of files, streamed (model weights and ONNX graphs are hundreds of MB)."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256(*paths: str | Path) -> str:
    """One digest over the files' bytes, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()
