"""The pipeline's S3 state on a real S3 server: the ledger is written only over the version read, the lock
admits one run at a time, is renewed while its run lives and broken only when its run is dead, and only
batch-shaped keys count as batches."""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from patcher.pipeline import store
from patcher.pipeline.store import Layout, Lock, LockHeld, LockLost, State, StateConflict


def test_ledger_commit_is_conditional(s3_env):
    layout = Layout(s3_env, "facts-smollm2")
    state, etag = store.load_state(layout)
    assert etag is None and state == State()
    state.version, state.batches = 1, {"2026/11/24/10/a.jsonl": '"e1"'}
    first = store.commit_state(layout, state, None)
    with pytest.raises(StateConflict):
        store.commit_state(layout, State(version=9), None)          # someone else created it first
    state.version = 2
    second = store.commit_state(layout, state, first)
    with pytest.raises(StateConflict):
        store.commit_state(layout, State(version=7), first)         # a stale read
    read, etag = store.load_state(layout)
    assert (read.version, read.batches, etag) == (2, {"2026/11/24/10/a.jsonl": '"e1"'}, second)


def test_lock_one_holder_waits_and_breaks_only_expired(s3_env):
    layout = Layout(s3_env, "factcheck-minilm")
    held = Lock(layout, "run-a").acquire()
    with pytest.raises(LockHeld, match="run-a"):
        Lock(layout, "run-b").acquire()
    releaser = threading.Timer(1.0, held.release)
    releaser.start()
    start = time.monotonic()
    waiter = Lock(layout, "run-c", wait_s=20, poll_s=0.2).acquire()     # waits for run-a to finish
    assert 0.8 < time.monotonic() - start < 15
    assert json.loads(store.read_text(layout.lock))["run_id"] == "run-c"
    waiter.release()
    Lock(layout, "crashed", ttl_s=-1).acquire()                          # a crashed run: its lock is expired
    with Lock(layout, "run-d"):
        assert json.loads(store.read_text(layout.lock))["run_id"] == "run-d"
    assert "lock.json" not in store.list_objects(layout.uri("pipeline", "factcheck-minilm"))     # released


def test_a_live_run_keeps_its_lock_and_a_dead_one_loses_it(s3_env):
    layout = Layout(s3_env, "facts-smollm2")
    live = Lock(layout, "live", ttl_s=1.5).acquire()       # renewed every 0.5 s while it lives (a paused run too)
    time.sleep(3.5)
    with pytest.raises(LockHeld, match="live"):
        Lock(layout, "second").acquire()
    assert json.loads(store.read_text(layout.lock))["renewed_at"] > json.loads(store.read_text(layout.lock))["acquired_at"]
    live.check()
    store.write_bytes(layout.lock, live._body())          # a renewal that went through but whose answer was lost
    assert live.renew() and not live.lost                 # its retry's condition fails on its own body: still ours
    live.check()
    live.release()
    assert "lock.json" not in store.list_objects(layout.uri("pipeline", "facts-smollm2"))

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    body = {"run_id": "killed", "host": socket.gethostname(), "pid": int(dead.stdout), "acquired_at": "2026-01-01T00:00:00Z",
            "renewed_at": "2026-01-01T00:00:00Z", "expires_at": "2999-01-01T00:00:00Z"}
    store.write_json(layout.lock, {**body, "pid": os.getpid(), "started": "1"})     # its pid reused since
    with Lock(layout, "after-reuse"):
        assert json.loads(store.read_text(layout.lock))["run_id"] == "after-reuse"
    store.write_json(layout.lock, body)                   # a SIGKILLed run's lock, its lease far from over
    start = time.monotonic()
    with Lock(layout, "next") as lock:                     # broken at once: its process is gone
        assert time.monotonic() - start < 5 and json.loads(store.read_text(layout.lock))["run_id"] == "next"
        lock.s3.delete_object(Bucket=lock.bucket, Key=lock.key)      # someone breaks it anyway
        Lock(layout, "usurper").acquire()
        time.sleep(1.0)
        assert not lock.renew()
        with pytest.raises(LockLost, match="run usurper holds it now"):
            lock.check()


def test_batches_outside_any_models_folder_are_named(s3_env):
    store.write_text(f"{s3_env}/errors/2026/11/24/10/a.jsonl", "{}\n")            # README's old example put them here
    store.write_text(f"{s3_env}/errors/facts-smollm2/2026/11/24/10/b.jsonl", "{}\n")
    store.write_text(f"{s3_env}/errors/notes.txt", "x")
    bucket = s3_env.removeprefix("s3://")
    assert store.stray_errors(s3_env, ["facts-smollm2", "factcheck-minilm"]) == [
        f"s3://{bucket}/errors/2026", f"s3://{bucket}/errors/notes.txt"]


def test_new_batches_skip_processed_and_other_keys(s3_env):
    layout = Layout(s3_env, "facts-smollm2")
    for key in ("2026/11/24/10/a.jsonl", "2026/11/24/11/b.jsonl", "notes.txt", "2026/11/24/x.jsonl"):
        store.write_text(f"{layout.errors}/{key}", "{}\n")
    fresh, ignored = store.new_batches(layout, State())
    assert [k for k, _ in fresh] == ["2026/11/24/10/a.jsonl", "2026/11/24/11/b.jsonl"]
    assert ignored == ["2026/11/24/x.jsonl", "notes.txt"]
    done = State(batches={"2026/11/24/10/a.jsonl": dict(fresh)["2026/11/24/10/a.jsonl"]})
    assert [k for k, _ in store.new_batches(layout, done)[0]] == ["2026/11/24/11/b.jsonl"]
    store.write_text(f"{layout.errors}/2026/11/24/10/a.jsonl", "{}\n{}\n")     # rewritten: new again
    assert [k for k, _ in store.new_batches(layout, done)[0]] == ["2026/11/24/10/a.jsonl", "2026/11/24/11/b.jsonl"]


def test_transient_errors(s3_env):
    from botocore.exceptions import ClientError, EndpointConnectionError

    assert store.is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert store.is_transient(ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}},
                                          "PutObject"))
    assert not store.is_transient(ClientError({"Error": {"Code": "AccessDenied"},
                                               "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject"))
    assert not store.is_transient(FileNotFoundError("x"))
