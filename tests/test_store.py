"""The pipeline's S3 state on a real S3 server: the ledger is written only over the version read, the lock
admits one run at a time and is broken only when expired, and only batch-shaped keys count as batches."""
import json
import threading
import time

import pytest

from patcher.pipeline import store
from patcher.pipeline.store import Layout, Lock, LockHeld, State, StateConflict


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
