"""The embedded S3 server as a service: up, status, real boto3 traffic with generated keys (kept 0600,
never printed), down."""
import os
import stat
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration   # starts and stops SeaweedFS servers itself


def patcher(*args, env):
    return subprocess.run([sys.executable, "-m", "patcher.cli", *args], capture_output=True, text=True, env=env)


@pytest.fixture
def env(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**clean, "PATCHER_CACHE": str(tmp_path / "cache")}


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
    import socket

    from patcher.pipeline import s3

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
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
