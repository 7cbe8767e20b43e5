"""The embedded S3 server as a service: up, status, real boto3 traffic with generated keys (kept 0600,
never printed), down; nothing but its S3 API with keys is reachable; its files are the owner's alone; a
restart comes back on the recorded port or fails saying who holds it."""
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration   # starts and stops SeaweedFS servers itself


def patcher(*args, env):
    return subprocess.run([sys.executable, "-m", "patcher.cli", *args], capture_output=True, text=True, env=env)


@pytest.fixture
def env(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**clean, "PATCHER_CACHE": str(tmp_path / "cache")}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """In-process `up`/`down` on a cache of this test's own, with no AWS settings around."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PATCHER_CACHE", str(tmp_path / "cache"))
    from patcher.pipeline import s3

    yield tmp_path / "cache"
    s3.down()


def test_up_status_traffic_down(env, tmp_path, monkeypatch):
    port = __import__("patcher.pipeline.s3", fromlist=["_free_port"])._free_port()
    up = patcher("s3", "up", "--port", str(port), env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert f"http://127.0.0.1:{port}" in up.stdout
        creds = tmp_path / "cache" / "s3" / "credentials.json"
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        secret = __import__("json").loads(creds.read_text())["secret_key"]
        assert secret not in up.stdout + up.stderr
        assert patcher("s3", "status", env=env).returncode == 0
        assert patcher("s3", "up", "--port", str(port), env=env).returncode == 0        # idempotent
        for key in [k for k in os.environ if k.startswith("AWS_")]:   # an in-process DVC call may have exported them
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        from patcher.pipeline.s3 import client
        from patcher.pipeline.store import put_files

        keys = put_files("s3://demo/errors", {"2026/11/24/10/batch-0000.jsonl": '{"a": 1}\n'})
        body = client().get_object(Bucket="demo", Key=keys[0])["Body"].read()
        assert body == b'{"a": 1}\n'
    finally:
        down = patcher("s3", "down", env=env)
    assert down.stdout.strip() == "stopped"
    assert patcher("s3", "status", env=env).returncode == 1


def test_a_taken_internal_port_is_retried_with_new_ones(tmp_path, monkeypatch):
    from patcher.pipeline import s3

    while True:                                          # a port the start would pick (its gRPC twin free)
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if taken.getsockname()[1] + 10000 <= 65535 and s3._port_free(taken.getsockname()[1] + 10000):
            break
        taken.close()
    picks = iter([taken.getsockname()[1]] * 4)           # the first start gets a port another process holds
    free = s3._free_port
    monkeypatch.setattr(s3, "_free_port", lambda: next(picks, None) or free())
    server = s3.EmbeddedS3(tmp_path / "data", "key", "secret-0123456789", s3_port=free())
    try:
        server.start()
        assert server.client().list_buckets()["Buckets"] == []
        said = (tmp_path / "data" / "weed.log").read_bytes()
        assert b"address already in use" in said or b"Port allocation failed" in said     # the first start
    finally:
        server.stop()
        taken.close()


def _http(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """A plain, unsigned HTTP request -> (status, body); (0, b"") when the port refuses the connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body or None, headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        conn.close()


def _weed(*args, cwd: Path) -> subprocess.CompletedProcess | None:
    """The weed command line as any local process would run it (no security.toml of ours); None: it hung."""
    weed = Path(sys.executable).parent / "weed"
    try:
        return subprocess.run([str(weed), *args], cwd=cwd, capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})
    except subprocess.TimeoutExpired:
        return None


def test_only_the_s3_api_with_keys_is_reachable(cache, tmp_path):
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    from patcher.pipeline import s3

    state = s3.up(s3._free_pair())
    s3_port, bucket, secret = state["ports"]["s3"], f"b-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex.encode()
    keyed = s3.client()
    keyed.create_bucket(Bucket=bucket)
    keyed.put_object(Bucket=bucket, Key="serving/latest", Body=secret)
    for _ in range(100):                                # the admin server comes up after the S3 API
        listening = {port for port, pids in s3.listeners().items() if state["pid"] in pids}
        if {port + grpc for port in state["ports"].values() for grpc in (0, 10000)} <= listening:
            break
        time.sleep(0.1)
    assert {port + grpc for port in state["ports"].values() for grpc in (0, 10000)} <= listening  # HTTP and gRPC

    # plain HTTP on every other port: no write lands, no object data or name leaks
    paths = [f"/buckets/{bucket}/serving/latest", f"/buckets/{bucket}/errors/x.jsonl", f"/{bucket}/serving/latest",
             "/", f"/buckets/{bucket}/", "/dir/assign", "/submit", "/vol/grow", "/col/delete?collection=" + bucket,
             "/3,01637037d6", "/1,01637037d6"]
    for port in sorted(listening - {s3_port}):
        for path in paths:
            for method in ("GET", "PUT", "POST", "DELETE"):
                status, said = _http(port, method, path, b"planted" if method != "GET" else b"")
                assert secret not in said and b"serving/latest" not in said, (port, method, path, status, said[:200])
                if path != "/":                          # "/" on the master: its status page, whatever the method
                    assert not 200 <= status < 300, (port, method, path, status, said[:200])

    # gRPC: weed's own tools, without the certificate, can neither upload (master) nor copy (filer)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "planted.txt").write_text("planted")
    master, filer = state["ports"]["master"], state["ports"]["filer"]
    for args in (["upload", f"-master=127.0.0.1:{master}", "planted.txt"],
                 ["filer.copy", "planted.txt", f"http://127.0.0.1:{filer}/buckets/{bucket}/"]):
        ran = _weed(*args, cwd=outside)
        assert ran is None or ran.returncode != 0, (args, ran.stdout[-500:], ran.stderr[-500:])
    with_certs = _weed("upload", f"-master=127.0.0.1:{master}", str(outside / "planted.txt"),   # the control
                       cwd=Path(state["data_dir"]) / ".security")
    assert with_certs is not None and with_certs.returncode == 0 and '"fid"' in with_certs.stdout, with_certs

    # the S3 port itself: anonymous and wrongly keyed requests are refused
    assert _http(s3_port, "GET", f"/{bucket}/serving/latest")[0] == 403
    assert _http(s3_port, "PUT", f"/{bucket}/serving/latest", b"planted")[0] == 403
    wrong = boto3.client("s3", endpoint_url=state["endpoint_url"], aws_access_key_id="patcher-intruder",
                         aws_secret_access_key="x" * 48, region_name="us-east-1",
                         config=Config(retries={"max_attempts": 1}))
    for call in (lambda: wrong.get_object(Bucket=bucket, Key="serving/latest"),
                 lambda: wrong.put_object(Bucket=bucket, Key="serving/latest", Body=b"planted")):
        with pytest.raises(ClientError):
            call()

    # with the keys everything the pipeline uses still works, the lock's conditional writes included
    assert [o["Key"] for o in keyed.list_objects_v2(Bucket=bucket)["Contents"]] == ["serving/latest"]
    assert keyed.get_object(Bucket=bucket, Key="serving/latest")["Body"].read() == secret
    etag = keyed.put_object(Bucket=bucket, Key="lock", Body=b"1", IfNoneMatch="*")["ETag"]
    with pytest.raises(ClientError) as held:
        keyed.put_object(Bucket=bucket, Key="lock", Body=b"2", IfNoneMatch="*")
    assert held.value.response["Error"]["Code"] in ("PreconditionFailed", "412")
    with pytest.raises(ClientError):
        keyed.delete_object(Bucket=bucket, Key="lock", IfMatch='"0123456789abcdef0123456789abcdef"')
    keyed.delete_object(Bucket=bucket, Key="lock", IfMatch=etag)
    part = os.urandom(5 << 20)
    upload = keyed.create_multipart_upload(Bucket=bucket, Key="big")["UploadId"]
    parts = [{"PartNumber": n, "ETag": keyed.upload_part(Bucket=bucket, Key="big", UploadId=upload, PartNumber=n,
                                                         Body=part)["ETag"]} for n in (1, 2)]
    keyed.complete_multipart_upload(Bucket=bucket, Key="big", UploadId=upload, MultipartUpload={"Parts": parts})
    assert keyed.get_object(Bucket=bucket, Key="big")["Body"].read() == part + part
    assert sorted(o["Key"] for o in keyed.list_objects_v2(Bucket=bucket)["Contents"]) == ["big", "serving/latest"]


def test_its_files_are_the_owners_alone(cache):
    from patcher.pipeline import s3

    state = s3.up(s3._free_pair())
    keyed = s3.client()
    keyed.create_bucket(Bucket="private")
    keyed.put_object(Bucket="private", Key="errors/x.jsonl", Body=b'{"a": 1}\n' * 1000)
    keyed.get_object(Bucket="private", Key="errors/x.jsonl")["Body"].read()
    data = Path(state["data_dir"])
    for path in (cache / "s3", data, data / ".security"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for name in ("state.json", "credentials.json"):
        assert stat.S_IMODE((cache / "s3" / name).stat().st_mode) == 0o600, name
    shared = [(str(p), oct(stat.S_IMODE(p.lstat().st_mode))) for p in data.rglob("*")
              if not p.is_symlink() and stat.S_IMODE(p.lstat().st_mode) & 0o077
              and p.suffix != ".vif"]       # weed writes volume-info files 0644 whatever the umask; 0700 dirs hide them
    assert shared == []
    assert any(p.suffix == ".dat" for p in data.rglob("*"))           # the objects' data was among them


def test_a_restart_comes_back_on_the_recorded_port_or_says_who_holds_it(cache, env, monkeypatch):
    from patcher.pipeline import s3

    port = s3._free_pair()
    state = s3.up(port)
    endpoint = state["endpoint_url"]
    keyed = s3.client()                                 # a pipeline's client: it keeps this endpoint
    keyed.create_bucket(Bucket="ledger")
    keyed.put_object(Bucket="ledger", Key="state.json", Body=b"{}")

    os.killpg(state["pid"], signal.SIGKILL)             # a crash, with the client's connection still open
    os.waitpid(state["pid"], 0)                         # up() ran here: the dead server is this process's child
    assert s3.embedded_state() is None
    s3.export_settings()                                # a process starting during the outage finds it
    assert os.environ["AWS_ENDPOINT_URL"] == endpoint
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    assert s3.up()["endpoint_url"] == endpoint           # back where the clients look
    assert keyed.get_object(Bucket="ledger", Key="state.json")["Body"].read() == b"{}"
    assert s3.down()
    assert s3.up()["endpoint_url"] == endpoint           # also after a clean `down`
    assert s3.down()

    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # past the TIME_WAITs weed left
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    try:
        with pytest.raises(s3.S3PortTaken) as taken:
            s3.up()
        assert str(port) in str(taken.value) and f"pid {os.getpid()}" in str(taken.value)
        cli = patcher("s3", "up", env={**env, "PATCHER_CACHE": str(cache)})
        assert cli.returncode == 2 and f"S3 port {port}" in cli.stderr and "Traceback" not in cli.stderr, cli.stderr
        assert s3.embedded_state() is None
        assert json.loads((cache / "s3" / "state.json").read_text())["endpoint_url"] == endpoint
    finally:
        squatter.close()
    assert s3.up()["endpoint_url"] == endpoint
