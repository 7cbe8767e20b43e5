"""The pipeline's objects in S3 (boto3), and the state that makes each run exactly-once.

Layout under a root such as s3://patcher, per production model M:

  errors/M/YYYY/MM/DD/HH/*.jsonl     the error stream, as serving systems write it (input)
  quarantine/M/YYYY/MM/DD/HH/*.jsonl rejected lines of the same batch file: line, original text, reasons
  runs/M/RUN/                        one run's accepted records, patch set, train and gate reports, approval,
                                     data docs, plot
  review/M/RUN.jsonl                 errors a person has to look at: failed edits, gate failures, rejections
  patches/M/vNNNN/                   approved patch sets, each the full set that applies to the base model
  serving/M/vNNNN/, serving/M/latest the approved versions exported to ONNX, and which one to serve
                                     (patcher/serving/publish.py)
  pipeline/M/state.json              the ledger: current version, processed batch files and record ids, runs
  pipeline/M/lock.json               held by the run in progress

Exactly once: a run records nothing in the ledger until its outcome is final, and then records everything
(processed batches, record ids, the new version) in one conditional PUT of state.json (If-Match on the
ETag it read). A crash before that leaves the ledger as it was, so the next run does the same batches again
and nothing twice; a version prefix that no ledger names is never read. The lock (a create-only PUT,
If-None-Match: *) keeps a second run from working on the same model at the same time; its holder renews its
lease while it lives, and a dead run's lock (lease run out, or its process gone from this host) is broken with
a conditional DELETE. A run whose lock was broken anyway stops before writing the ledger (Lock.check).
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from patcher.engine.records import stamp, utc_now

from . import processes
from .s3 import client, ensure_bucket, parse_uri

BATCH_KEY = re.compile(r"^\d{4}/\d{2}/\d{2}/\d{2}/[^/]+\.jsonl$")


def version_name(number: int) -> str:
    """A version's name in S3 and serving (patches/M/v0003/, serving/M/v0003/)."""
    return f"v{number:04d}"


class LockHeld(RuntimeError):
    """Another run holds the model's pipeline lock."""


class StateConflict(RuntimeError):
    """The ledger changed under this run (its lock was broken): nothing of this run was recorded."""


def _is(error, *codes) -> bool:
    return getattr(error, "response", {}).get("Error", {}).get("Code") in codes


@dataclass(frozen=True)
class Layout:
    """Where a model's pipeline objects live under the root URI."""

    root: str          # s3://bucket[/prefix]
    model: str

    def __post_init__(self):
        parse_uri(self.root)

    def uri(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts if p)])

    @property
    def errors(self) -> str:
        return self.uri("errors", self.model)

    @property
    def quarantine(self) -> str:
        return self.uri("quarantine", self.model)

    def run(self, run_id: str) -> str:
        return self.uri("runs", self.model, run_id)

    def review(self, run_id: str) -> str:
        return self.uri("review", self.model, f"{run_id}.jsonl")

    def version(self, number: int) -> str:
        return self.uri("patches", self.model, version_name(number))

    @property
    def serving(self) -> str:
        return self.uri("serving", self.model)

    @property
    def state(self) -> str:
        return self.uri("pipeline", self.model, "state.json")

    @property
    def lock(self) -> str:
        return self.uri("pipeline", self.model, "lock.json")


# --- objects -------------------------------------------------------------------------------------------

def _bucket_key(uri: str) -> tuple[str, str]:
    bucket, key = parse_uri(uri)
    return bucket, key


def read_bytes(uri: str, s3=None) -> bytes:
    bucket, key = _bucket_key(uri)
    return (s3 or client()).get_object(Bucket=bucket, Key=key)["Body"].read()


def read_text(uri: str, s3=None) -> str:
    return read_bytes(uri, s3).decode("utf-8")          # strict: what the pipeline wrote, or a loud failure


def write_bytes(uri: str, data: bytes, s3=None, content_type: str = "application/octet-stream") -> None:
    s3 = s3 or client()
    bucket, key = _bucket_key(uri)
    ensure_bucket(s3, bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)


def write_text(uri: str, text: str, s3=None, content_type: str = "text/plain; charset=utf-8") -> None:
    write_bytes(uri, text.encode("utf-8"), s3, content_type)


def write_json(uri: str, data, s3=None) -> None:
    write_text(uri, json.dumps(data, indent=1, ensure_ascii=False) + "\n", s3, "application/json")


def write_jsonl(uri: str, rows, s3=None) -> None:
    write_text(uri, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), s3, "application/x-ndjson")


def put_files(uri: str, files: dict[str, str], s3=None) -> list[str]:
    """Uploads {relative key: text} under an s3:// prefix. -> the object keys written."""
    s3 = s3 or client()
    bucket, prefix = parse_uri(uri)
    for key in files:
        write_text(f"s3://{bucket}/{prefix}/{key}" if prefix else f"s3://{bucket}/{key}", files[key], s3,
                   "application/x-ndjson")
    return [f"{prefix}/{key}" if prefix else key for key in files]


def list_objects(uri: str, s3=None) -> dict[str, str]:
    """{key relative to the prefix: ETag} of every object under an s3:// prefix."""
    s3 = s3 or client()
    bucket, prefix = _bucket_key(uri)
    found = {}
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/" if prefix else "")
        for page in pages:
            for obj in page.get("Contents", []):
                found[obj["Key"][len(prefix) + 1 if prefix else 0:]] = obj["ETag"]
    except s3.exceptions.NoSuchBucket:
        return {}
    return found


def stray_errors(root: str, models: list[str], s3=None) -> list[str]:
    """Top-level entries under ROOT/errors/ that are no model's folder (batches put where no pipeline looks)."""
    s3 = s3 or client()
    bucket, prefix = _bucket_key(f"{root.rstrip('/')}/errors")
    try:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/", Delimiter="/", MaxKeys=1000)
    except s3.exceptions.NoSuchBucket:
        return []
    names = [p["Prefix"][len(prefix) + 1:].rstrip("/") for p in listed.get("CommonPrefixes", [])]
    names += [o["Key"][len(prefix) + 1:] for o in listed.get("Contents", [])]
    return sorted(f"s3://{bucket}/{prefix}/{n}" for n in names if n not in models)


_TYPES = {".json": "application/json", ".jsonl": "application/x-ndjson", ".html": "text/html; charset=utf-8",
          ".md": "text/markdown; charset=utf-8", ".svg": "image/svg+xml", ".css": "text/css"}


def upload_dir(local: str | Path, uri: str, s3=None) -> list[str]:
    """Every file under a local directory -> the same relative keys under an s3:// prefix (streamed, in
    multipart uploads for large files such as an exported model)."""
    s3 = s3 or client()
    local = Path(local)
    written = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        rel = path.relative_to(local).as_posix()
        bucket, key = _bucket_key(f"{uri.rstrip('/')}/{rel}")
        ensure_bucket(s3, bucket)
        s3.upload_file(str(path), bucket, key,
                       ExtraArgs={"ContentType": _TYPES.get(path.suffix, "application/octet-stream")})
        written.append(rel)
    return written


def download_dir(uri: str, local: str | Path, s3=None) -> Path:
    s3 = s3 or client()
    local = Path(local)
    objects = list_objects(uri, s3)
    if not objects:
        raise FileNotFoundError(f"nothing under {uri}")
    for rel in objects:
        path = local / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(*_bucket_key(f"{uri.rstrip('/')}/{rel}"), str(path))
    return local


def presigned(uri: str, seconds: int = 7 * 24 * 3600, s3=None) -> str:
    bucket, key = _bucket_key(uri)
    return (s3 or client()).generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                   ExpiresIn=seconds)


# --- the ledger ----------------------------------------------------------------------------------------

@dataclass
class State:
    """The ledger of one model's pipeline (pipeline/M/state.json)."""

    version: int = 0                                           # latest approved version (0: none yet)
    patches: str | None = None                                 # its s3:// prefix
    batches: dict[str, str] = field(default_factory=dict)      # processed batch key -> ETag it had
    records: dict[str, str] = field(default_factory=dict)      # processed record id -> run id
    runs: list[dict] = field(default_factory=list)             # run id, time, outcome, version, counts

    @classmethod
    def from_dict(cls, data: dict) -> "State":
        return cls(**{k: data[k] for k in ("version", "patches", "batches", "records", "runs") if k in data})


def load_state(layout: Layout, s3=None) -> tuple[State, str | None]:
    """-> (the ledger, its ETag); a fresh ledger and None when the pipeline never ran."""
    s3 = s3 or client()
    bucket, key = _bucket_key(layout.state)
    try:
        obj = s3.get_object(Bucket=bucket, Key=key)
    except Exception as e:  # noqa: BLE001 (botocore raises per-client exception classes)
        if _is(e, "NoSuchKey", "404", "NoSuchBucket"):
            return State(), None
        raise
    return State.from_dict(json.loads(obj["Body"].read())), obj["ETag"]


def commit_state(layout: Layout, state: State, etag: str | None, s3=None) -> str:
    """Writes the ledger only if it is still the one read (ETag), in one PUT. -> the new ETag."""
    s3 = s3 or client()
    bucket, key = _bucket_key(layout.state)
    ensure_bucket(s3, bucket)
    condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
    try:
        return s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(asdict(state), indent=1).encode(),
                             ContentType="application/json", **condition)["ETag"]
    except Exception as e:  # noqa: BLE001
        if _is(e, "PreconditionFailed", "ConditionalRequestConflict", "412"):
            raise StateConflict(f"{layout.state} changed since this run read it; nothing of the run was recorded "
                                f"(was its lock broken?)") from None
        raise


def ledger_base(state: State, s3=None) -> tuple[str | None, dict[str, str]]:
    """The ledger's live version, what new patches go on top of when there is no registry.
    -> (its s3:// prefix or None, {error id it holds: version name})."""
    if not state.patches:
        return None, {}
    manifest = json.loads(read_text(f"{state.patches}/manifest.json", s3))
    return state.patches, {e["error_id"]: version_name(state.version) for e in manifest["edits"]}


def save_version(layout: Layout, run_id: str, number: int, approval: dict, tag: str | None = None, s3=None) -> str:
    """A run's approved patch set (the full set), gate report and approval under patches/M/vNNNN/. -> that prefix."""
    s3, run, target = s3 or client(), layout.run(run_id), layout.version(number)
    copy_prefix(f"{run}/patches", target, s3)
    write_text(f"{target}/gate_report.json", read_text(f"{run}/gate_report.json", s3), s3, "application/json")
    write_json(f"{target}/approval.json", {**approval, "run_id": run_id, "version": number, "tag": tag}, s3)
    return target


def new_batches(layout: Layout, state: State, s3=None) -> tuple[list[tuple[str, str]], list[str]]:
    """Batch files under the errors prefix not in the ledger (or rewritten since: another ETag), oldest
    first. -> ([(key, etag)], keys that do not look like YYYY/MM/DD/HH/NAME.jsonl and are left alone)."""
    objects = list_objects(layout.errors, s3)
    ignored = sorted(k for k in objects if not BATCH_KEY.match(k))
    fresh = sorted((k, e) for k, e in objects.items() if BATCH_KEY.match(k) and state.batches.get(k) != e)
    return fresh, ignored


# --- the lock ------------------------------------------------------------------------------------------

class LockLost(RuntimeError):
    """The run's lock was broken or taken while it ran: it must not write the ledger."""


class Lock:
    """A create-only lock object with a lease. The holder renews it every third of `ttl_s` from a heartbeat
    thread while its run lives (paused for approval too), so only a dead run's lock expires; a lock past its
    expiry, or held by a process of this machine that no longer exists, is broken. Waits up to `wait_s` for a
    live holder. `check()` renews at once and raises LockLost if the lock was broken or taken meanwhile, or if
    the lease ran out while S3 could not be reached."""

    def __init__(self, layout: Layout, run_id: str, ttl_s: float = 300.0, wait_s: float = 0.0,
                 poll_s: float = 2.0, s3=None, about: dict | None = None):
        self.layout, self.run_id, self.ttl_s, self.wait_s, self.poll_s = layout, run_id, ttl_s, wait_s, poll_s
        self.broken: list[dict] = []             # the dead holders whose locks acquire() broke
        self.s3 = s3 or client()
        self.quick = s3 or client(max_attempts=2, read_timeout=10)   # renewals: an answer well within the lease
        self.bucket, self.key = _bucket_key(layout.lock)
        # who holds it: this run, in this process (pid and start time), on this machine; plus e.g. the flow run
        self.me = {**(about or {}), "run_id": run_id, "host": socket.gethostname(), "machine": processes.machine(),
                   "pid": os.getpid(), "started": processes.started(os.getpid())}
        self.etag: str | None = None
        self.acquired_at: str | None = None
        self.lost: str | None = None
        self._lease_until = 0.0                  # monotonic time the last renewed lease runs out
        self._renewing = threading.Lock()        # the heartbeat and check() renew one at a time
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _holder(self, s3=None) -> tuple[dict | None, str | None]:
        try:
            obj = (s3 or self.s3).get_object(Bucket=self.bucket, Key=self.key)
            return json.loads(obj["Body"].read()), obj["ETag"]
        except Exception as e:  # noqa: BLE001
            if _is(e, "NoSuchKey", "404"):
                return None, None
            raise

    def _body(self) -> bytes:
        now = utc_now()
        return json.dumps({**self.me, "acquired_at": self.acquired_at, "renewed_at": stamp(now),
                           "expires_at": stamp(now + timedelta(seconds=self.ttl_s))}).encode()

    def _mine(self, holder: dict | None) -> bool:
        """A body this lock wrote (a PUT whose answer was lost and whose retry then failed its own condition)."""
        return holder is not None and all(holder.get(k) == self.me[k] for k in ("run_id", "machine", "pid", "started"))

    def _breakable(self, holder: dict) -> str | None:
        """Why the holder's lock may be broken: its lease ran out, or its process is gone from this machine."""
        if datetime.fromisoformat(holder["expires_at"].replace("Z", "+00:00")) < utc_now():
            return f"its lease ran out at {holder['expires_at']}"
        here = holder.get("machine", self.me["machine"]) == self.me["machine"] and holder.get("host") == self.me["host"]
        if here and not processes.is_same(int(holder.get("pid", 0)), holder.get("started")):
            return f"its process {holder.get('pid')} on this machine is gone"
        return None

    def _held(self, etag: str) -> "Lock":
        self.etag, self._lease_until = etag, time.monotonic() + self.ttl_s
        return self

    def acquire(self) -> "Lock":
        ensure_bucket(self.s3, self.bucket)
        deadline = time.monotonic() + self.wait_s
        self.acquired_at = stamp()
        while True:
            try:
                self._held(self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(),
                                              ContentType="application/json", IfNoneMatch="*")["ETag"])
                self._start_heartbeat()
                return self
            except Exception as e:  # noqa: BLE001
                if not _is(e, "PreconditionFailed", "ConditionalRequestConflict", "412"):
                    raise
            holder, etag = self._holder()
            if holder is None:
                continue
            if self._mine(holder):                # our own create, retried after its answer was lost
                self._held(etag)._start_heartbeat()
                return self
            why = self._breakable(holder)
            if why:
                try:          # a dead run's lock: delete exactly that one, then try again
                    self.s3.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=etag)
                    self.broken.append({**holder, "why": why})
                except Exception as e:  # noqa: BLE001
                    if not _is(e, "PreconditionFailed", "412"):
                        raise
                continue
            if time.monotonic() >= deadline:
                raise LockHeld(f"run {holder['run_id']} (host {holder['host']}, pid {holder['pid']}) holds "
                               f"{self.layout.lock} since {holder['acquired_at']}, renewed until {holder['expires_at']}")
            time.sleep(self.poll_s)

    def renew(self) -> bool:
        """Extends the lease if this run still holds the lock (a conditional PUT over its own ETag). -> whether
        it does; a lock found broken or taken sets `lost`. Transient S3 failures raise."""
        with self._renewing:
            if self.lost:
                return False
            try:
                self._held(self.quick.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(),
                                                 ContentType="application/json", IfMatch=self.etag)["ETag"])
                return True
            except Exception as e:  # noqa: BLE001
                if not _is(e, "PreconditionFailed", "412", "NoSuchKey", "404"):
                    raise
            holder, etag = self._holder(self.quick)
            if self._mine(holder):                # our renewal went through; its answer did not
                self._held(etag)
                return True
            self.lost = (f"{self.layout.lock} was broken while run {self.run_id} held it"
                         + (f"; run {holder['run_id']} holds it now" if holder else ""))
            return False

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name=f"lock-heartbeat-{self.run_id}", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(max(self.ttl_s / 3, 0.05)):
            try:
                if not self.renew():
                    return
            except Exception:  # noqa: BLE001 (S3 unreachable for now: the next beat tries again)
                continue

    def check(self) -> None:
        """Renews now; raises LockLost if the lock was broken or taken since this run acquired it, or if S3
        cannot be reached and the last lease has run out (another run may hold it by now)."""
        try:
            self.renew()
        except Exception as error:  # noqa: BLE001
            if time.monotonic() > self._lease_until:
                self.lost = f"{self.layout.lock}: the lease ran out while S3 could not be reached ({error})"
        if self.lost:
            raise LockLost(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=60)       # a renewal in flight: two quick attempts at most
            self._heartbeat = None
        if self.etag is None or self.lost:
            return
        with self._renewing:
            holder, etag = self._holder()
            if self._mine(holder):                 # delete exactly our own body, whatever ETag we last saw
                try:
                    self.s3.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=etag)
                except Exception as e:  # noqa: BLE001
                    if not _is(e, "PreconditionFailed", "412", "NoSuchKey"):
                        raise
        self.etag = None

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_transient(error: BaseException) -> bool:
    """Worth retrying: the server could not be reached, timed out, or answered 5xx / slow down."""
    from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(error, (BotoConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectionError,
                          TimeoutError)):
        return True
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout", "InternalError",
                                         "ServiceUnavailable")
    return False


def copy_prefix(source: str, target: str, s3=None) -> list[str]:
    """Copies every object under one s3:// prefix to another (server side). -> relative keys copied."""
    s3 = s3 or client()
    copied = []
    for rel in sorted(list_objects(source, s3)):
        (sb, sk), (tb, tk) = _bucket_key(f"{source}/{rel}"), _bucket_key(f"{target}/{rel}")
        ensure_bucket(s3, tb)
        s3.copy_object(Bucket=tb, Key=tk, CopySource={"Bucket": sb, "Key": sk})
        copied.append(rel)
    return copied
