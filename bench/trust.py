"""The trust probe: the running system tried as an attacker and as bad luck would, on real components (SeaweedFS,
a Prefect server, great-expectations, the registry with its DVC remote, factcheck-minilm and its real mistakes,
`patcher serve` over the published ONNX model):

    .venv/bin/python bench/trust.py [--out-dir docs/results]

1. Bad input: every kind of bad or tricky line in `bad_lines()` (bytes as a logger, a proxy or an attacker may
   write them), each in a batch file of its own beside real mistakes, through the pipeline. Each line must end
   accepted unaltered or quarantined with a reason and its original text (or bytes, base64).
2. Faults: a pipeline process SIGKILLed while it trains, the ledger write lost after a registration, S3 down
   during ingest. The next run must break the dead lock at once, mark the dead flow run crashed, adopt the
   registered version, and lose or repeat nothing.
3. Poisoning: /feedback without a token, with a wrong one, and a correction with a valid token that contradicts
   the memory (held for review, never trained), beside a real correction (trained).
4. Corruption: a patch set's weights changed (a float, a truncation, zeros, another version's file) on disk, in the
   run's S3 version, in the registry's DVC cache and remote: every load refuses.
5. Write paths: the S3 API without keys, SeaweedFS's other ports (filer, master, volume): refused.

At the end: every line of every batch file is accounted for (accepted once, or quarantined), no batch is left
unprocessed, no error id owns neurons twice. Writes OUT/trust.json and trust.md.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

MODEL = "factcheck-minilm"
HOUR = "2026/12/01/10"
TOKEN_NAME, TOKEN = "support-team", "probe-token-5f2b9c"


# --- 1. bad input ---------------------------------------------------------------------------------------------

def bad_lines(good: dict) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """-> ({kind: a line that must be quarantined}, {kind: a tricky line that must be accepted unaltered}); `good`
    is a valid record to damage. Ids are unique per kind so that the accounting can follow each line."""
    def rec(kind, **fields) -> dict:
        r = {**good, "id": f"probe-{kind}", **fields}
        return {k: v for k, v in r.items() if v is not DROP}

    def dumps(r, **kw) -> bytes:
        return json.dumps(r, ensure_ascii=kw.get("ascii", True)).encode("utf-8", "surrogatepass")

    DROP = object()
    bad: dict[str, bytes] = {
        "not json": b"{not json", "truncated": dumps(rec("truncated"))[:-7], "trailing comma": b'{"id": "x",}',
        "single quotes": b"{'id': 'x'}", "array": b"[1, 2]", "string": b'"a record"', "null": b"null",
        "number": b"12", "empty object": b"{}", "NaN target": dumps(rec("nan")).replace(
            json.dumps(good["target"]).encode(), b"NaN"),
    }
    for field in ("id", "model", "task", "input", "prediction", "target", "logged_at"):
        bad[f"missing {field}"] = dumps(rec(f"missing-{field}", **{field: DROP}))
    for field, value in (("id", 7), ("input", ["a"]), ("target", None), ("prediction", {"a": 1}), ("logged_at", 1),
                         ("task", 1), ("model", True)):
        bad[f"{field} of type {type(value).__name__}"] = dumps(rec(f"type-{field}", **{field: value}))
    for field in ("input", "prediction", "target", "model"):
        bad[f"empty {field}"] = dumps(rec(f"empty-{field}", **{field: ""}))
    bad["blank input"] = dumps(rec("blank", input="   \t "))
    bad["input too long"] = dumps(rec("long", input="x" * 2001))
    bad["id too long"] = dumps(rec("x" * 130))
    bad["NUL in input"] = dumps(rec("nul", input="a\x00b"))
    bad["escape in target"] = dumps(rec("esc", target="\x1b[31mSUPPORTED"))
    bad["id path traversal"] = dumps(rec("x", id="../../etc/passwd"))
    bad["id with spaces"] = dumps(rec("x", id="an id"))
    bad["unknown model"] = dumps(rec("unknown-model", model="gpt-5"))
    bad["unknown task"] = dumps(rec("unknown-task", task="ranking"))
    bad["task of another model"] = dumps(rec("task-mismatch", task="generation"))
    bad["target not a label"] = dumps(rec("label", target="TRUE"))
    for kind, value in (("words", "yesterday"), ("Feb 30", "2026-02-30T00:00:00Z"), ("year 0", "0000-01-01T00:00:00Z"),
                        ("year 2999", "2999-01-01T00:00:00Z"), ("no zone", "2026-01-01T00:00:00"),
                        ("month 13", "2026-13-01T00:00:00Z"), ("tomorrow", None)):
        value = value or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
        bad[f"logged_at {kind}"] = dumps(rec(f"date-{kind.replace(' ', '-')}", logged_at=value))
    bad["unknown field"] = dumps(rec("unknown-field", note="x"))
    bad["source with spaces"] = dumps(rec("source", source="an attacker"))
    bad["rephrases not a list"] = dumps(rec("reph", rephrases="a"))
    bad["rephrases of numbers"] = dumps(rec("reph-num", rephrases=[1, 2]))
    bad["empty phrasing"] = dumps(rec("phr", phrasings=[""]))
    bad["control char in a negative"] = dumps(rec("neg", negatives=["a\x07b"]))
    line = dumps(rec("dup-key"))
    bad["duplicate key flips target"] = line[:-1] + b', "target": "' + (
        b"SUPPORTED" if good["target"] == "REFUTED" else b"REFUTED") + b'"}'
    bad["duplicate id"] = dumps(rec("dup-id", id=good["id"]))        # the good record comes first in the batch
    bad["invalid UTF-8 byte"] = dumps(rec("utf8-ff")).replace(b"is", b"i\xffs", 1)
    bad["overlong UTF-8"] = dumps(rec("utf8-overlong")).replace(b"is", b"i\xc0\xafs", 1)
    bad["truncated UTF-8"] = dumps(rec("utf8-cut")).replace(b"is", b"i\xe2\x82s", 1)
    bad["latin-1 text"] = json.dumps(rec("latin1", input="Caf\u00e9 is a word."), ensure_ascii=False).encode("latin-1")
    bad["UTF-16 line"] = json.dumps(rec("utf16")).encode("utf-16")
    bad["lone surrogate escape"] = dumps(rec("surrogate", input="a\ud800b"))
    bad["low surrogate escape"] = dumps(rec("surrogate-low", target="\udfff"))
    bad["deep array"] = b"[" * 100_000 + b"]" * 100_000
    bad["deep object"] = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    bad["line over 1 MiB"] = dumps(rec("huge", rephrases=["x" * 1000] * 1100))
    tricky = {
        "U+2028 inside a string": dumps(rec("u2028", input=good["input"] + "\u2028"), ascii=False),
        "U+0085 inside a string": dumps(rec("u0085", input=good["input"] + "\u0085"), ascii=False),
        "emoji and right-to-left text": dumps(rec("emoji", input=good["input"] + " \U0001f600 \u05e9\u05dc\u05d5\u05dd"),
                                              ascii=False),
        "tab in input": dumps(rec("tab", input=good["input"].replace(" ", "\t", 1))),
        "source given": dumps(rec("with-source", source="feedback:support-team")),
    }
    return bad, tricky


def account(layout, files: dict[str, bytes], store, split_lines) -> dict:
    """Every line of every batch file: accepted by a run (the ledger names its id), or quarantined with reasons
    and its original text or bytes. -> counts and the lines that are neither (lost) or altered."""
    state, _ = store.load_state(layout)
    quarantine = store.list_objects(layout.quarantine)
    counts = {"lines": 0, "accepted": 0, "quarantined": 0, "lost": [], "altered": [], "blocked_batches": []}
    for key, data in files.items():
        if key not in state.batches:
            counts["blocked_batches"].append(key)
        kept = {}
        if key in quarantine:
            kept = {q["line"]: q for q in map(json.loads, store.read_bytes(f"{layout.quarantine}/{key}").decode()
                                               .splitlines())}
        for number, line in enumerate(split_lines(data), 1):
            if isinstance(line, str) and not line.strip():
                continue
            counts["lines"] += 1
            if number in kept:
                q = kept[number]
                original = base64.b64decode(q["record_base64"]) if q.get("record_base64") else \
                    q["record"].encode("utf-8")
                raw = data.split(b"\n")[number - 1].removesuffix(b"\r")
                raw = raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw
                if not q["reasons"] or original != raw:
                    counts["altered"].append(f"{key}:{number}")
                counts["quarantined"] += 1
                continue
            rid = json.loads(line).get("id") if isinstance(line, str) else None
            if rid in state.records:
                counts["accepted"] += 1
            else:
                counts["lost"].append(f"{key}:{number}")
    return counts


# --- the probe ------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default="docs/results")
    args = parser.parse_args()
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from patcher.pipeline.s3 import EmbeddedS3

    work = Path(tempfile.mkdtemp(prefix="trust-probe-"))
    with EmbeddedS3(work / "s3", "probe-key", "probe-secret-0123456789") as server, prefect_test_harness():
        os.environ.update(AWS_ENDPOINT_URL=server.endpoint_url, AWS_ACCESS_KEY_ID=server.access_key,
                          AWS_SECRET_ACCESS_KEY=server.secret_key, PATCHER_CACHE=str(work / "cache"))
        results = probe(work, server, PREFECT_API_URL.value())
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trust.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "trust.md").write_text(markdown(results))
    print(markdown(results))


def probe(work: Path, server, api_url: str) -> dict:
    from flows.pipeline import pipeline
    from patcher.engine.records import read_records, split_lines
    from patcher.pipeline import store
    from patcher.pipeline.catalog import Catalog
    from patcher.pipeline.registry import Registry
    from patcher.pipeline.store import Layout

    root = "s3://probe"
    layout = Layout(root, MODEL)
    registry = Registry.init(work / "registry", f"{root}/dvc")
    overrides = {"register": {"repo": str(registry.repo)}, "ingest": {"lock_ttl_s": 30}}
    mistakes = read_records(Catalog().entry(MODEL).resolve(Catalog().entry(MODEL).errors))
    files: dict[str, bytes] = {}
    results: dict = {"faults": [], "corruption": [], "write_paths": []}

    def put(key: str, lines: list[bytes], bom: bool = False, crlf: bool = False) -> None:
        data = (b"\xef\xbb\xbf" if bom else b"") + b"".join(x + (b"\r\n" if crlf else b"\n") for x in lines)
        files[key] = data
        store.write_bytes(f"{layout.errors}/{key}", data)

    def real(records) -> list[bytes]:
        return [json.dumps({**r.to_dict(), "logged_at": "2026-12-01T10:00:00Z"}).encode() for r in records]

    def run(**kw):
        return pipeline(model=MODEL, root=root, approval="auto", overrides=overrides, **kw)

    # 1. bad input beside real mistakes
    good = {**mistakes[0].to_dict(), "logged_at": "2026-12-01T10:00:00Z"}
    bad, tricky = bad_lines(good)
    put(f"{HOUR}/real.jsonl", real(mistakes[:6]), bom=True, crlf=True)
    for i, (kind, line) in enumerate({**bad, **tricky}.items()):
        first = [json.dumps(good).encode()] if kind == "duplicate id" else []
        put(f"{HOUR}/kind-{i:03d}.jsonl", first + [line])
    first = run()
    results["runs"] = [{"what": "bad input beside 6 real mistakes", **_brief(first)}]
    quarantined = {q["record"] if q.get("record") is not None else q["record_base64"]: q["reasons"]
                   for key in store.list_objects(layout.quarantine)
                   for q in map(json.loads, store.read_text(f"{layout.quarantine}/{key}").splitlines())}
    results["bad_input"] = {
        "kinds_bad": len(bad), "kinds_tricky": len(tricky),
        "bad_quarantined": sum(_text_or_b64(line) in quarantined for line in bad.values()),
        "tricky_accepted": sum(json.loads(line)["id"] in store.load_state(layout)[0].records for line in tricky.values()),
        "reasons": {kind: quarantined.get(_text_or_b64(line)) for kind, line in bad.items()}}

    # 2a. a pipeline process SIGKILLed while it trains
    put(f"{HOUR}/second.jsonl", real(mistakes[6:12]))
    before = set(store.list_objects(f"{root}/runs/{MODEL}"))
    env = {**os.environ, "PREFECT_API_URL": api_url}
    code = ("from flows.pipeline import pipeline; "
            f"pipeline(model={MODEL!r}, root={root!r}, approval='auto', overrides={overrides!r})")
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = _wait_for(lambda: any(k.endswith("accepted.jsonl") for k in
                                      set(store.list_objects(f"{root}/runs/{MODEL}")) - before), 300)
    time.sleep(1.0)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    start = time.monotonic()
    after_kill = run()
    summary = after_kill.summary
    results["faults"].append({"fault": "pipeline SIGKILLed while training", "killed_after_s": killed_at,
                              "next_run": _brief(after_kill), "crashed_runs_marked": len(summary.get("crashed_runs", [])),
                              "next_run_s": round(time.monotonic() - start, 1),
                              "survived": bool(summary.get("crashed_runs")) and after_kill.outcome.status.value == "approved"})

    # 2b. the ledger write lost after a registration
    state_before = store.read_bytes(layout.state)
    put(f"{HOUR}/third.jsonl", real(mistakes[12:16]))
    third = run()
    store.write_bytes(layout.state, state_before)          # as if the run died between register and its ledger write
    adopted = run()
    pointer = json.loads(store.read_text(f"{layout.serving}/latest"))
    latest = registry.versions(MODEL)[-1]
    results["faults"].append({"fault": "ledger write lost after registering", "registered": third.summary.get("version"),
                              "next_run": _brief(adopted), "adopted": adopted.summary.get("adopted"),
                              "serving": pointer["version"],
                              "survived": store.load_state(layout)[0].version == latest["number"]
                              and pointer["version"] == f"v{latest['number']:04d}"})

    # 2c. S3 down for 3 s while a run ingests
    put(f"{HOUR}/outage.jsonl", [bad["not json"], bad["missing id"]])
    os.environ["AWS_MAX_ATTEMPTS"] = "1"
    server.stop()
    restart = threading.Timer(3.0, server.start)
    restart.start()
    outage = run(return_state=True)
    restart.join()
    os.environ.pop("AWS_MAX_ATTEMPTS")
    results["faults"].append({"fault": "S3 down 3 s during ingest", "next_run": _brief(outage.result()),
                              "survived": outage.is_completed()})

    # 3. poisoning through /feedback
    results["feedback"] = feedback_probe(root, layout, store, run)

    # 4. corruption
    results["corruption"] = corruption_probe(work, root, layout, registry, store)

    # 5. write paths
    results["write_paths"] = write_path_probe(server, root)

    # the accounting over everything the probe logged
    results["accounting"] = account(layout, files, store, split_lines)
    edits = [e["error_id"] for e in registry.read(MODEL, "manifest.json")["edits"]]
    results["accounting"]["edits_twice"] = sorted({e for e in edits if edits.count(e) > 1})
    results["accounting"]["versions"] = [v["number"] for v in registry.versions(MODEL)]
    return results


def feedback_probe(root: str, layout, store, run) -> dict:
    """/feedback as an attacker and as a support team would use it; then the next run."""
    from patcher.pipeline.catalog import Catalog
    from patcher.serving.serve import ServeSettings, Service, in_thread

    os.environ["PATCHER_FEEDBACK_TOKENS"] = f"{TOKEN_NAME}:{TOKEN}"
    service = Service(ServeSettings(MODEL, root, poll_s=3600)).start()
    server, url = in_thread(service)
    entry = Catalog().entry(MODEL)
    memory = [json.loads(x) for x in Path(entry.resolve(entry.memory)).read_text().splitlines() if x.strip()]
    known = next(m for m in memory if m.get("target"))
    flipped = "REFUTED" if known["target"] == "SUPPORTED" else "SUPPORTED"
    real = next(r for r in map(json.loads, Path(entry.resolve(entry.errors)).read_text().splitlines()[40:]))
    out = {}
    try:
        body = {"input": known["input"], "output": known["target"], "correct": flipped}
        out["no token"] = _post(f"{url}/feedback", body)[0]
        out["wrong token"] = _post(f"{url}/feedback", body, "not-the-token")[0]
        out["valid token, poisoned"], poisoned = _post(f"{url}/feedback", body, TOKEN)
        out["valid token, real mistake"], honest = _post(f"{url}/feedback", {
            "input": real["input"], "output": real["prediction"], "correct": real["target"]}, TOKEN)
    finally:
        server.should_exit = True
        service.stop()
    result = run()
    report = json.loads(store.read_text(f"{layout.run(result.summary['run_id'])}/train_report.json"))
    rows = {e["error_id"]: e for e in report["edits"]}
    pid, hid = poisoned.get("recorded", {}).get("id"), honest.get("recorded", {}).get("id")
    review = store.read_text(layout.review(result.summary["run_id"])) if "review" in result.summary["where"] else ""
    out.update({"next_run": _brief(result), "poisoned_source": (rows.get(pid) or {}).get("source"),
                "poisoned_status": (rows.get(pid) or {}).get("status"),
                "poisoned_held_for_review": bool(pid) and pid in review,
                "real_mistake_status": (rows.get(hid) or {}).get("status")})
    out["survived"] = out["no token"] == 401 and out["wrong token"] == 401 and out["poisoned_held_for_review"] \
        and out["poisoned_status"] == "failed"
    return out


def corruption_probe(work: Path, root: str, layout, registry, store) -> list[dict]:
    from patcher.engine.patchset import WEIGHTS, CorruptPatchSet, PatchSet
    from patcher.pipeline.registry import RegistryError

    good = registry.fetch(MODEL, work / "good")
    other = registry.fetch(MODEL, work / "other", 1)
    weights = (good / WEIGHTS).read_bytes()

    def changed_float(b: bytes) -> bytes:
        return b[:-4] + b"\x00\x00\x80\x68"

    kinds = {"one float changed": changed_float, "truncated": lambda b: b[: len(b) // 2],
             "zeroed": lambda b: b[:200] + bytes(len(b) - 200), "another version's file": lambda b: (
                 other / WEIGHTS).read_bytes()}
    out = []
    for kind, damage in kinds.items():
        target = work / f"corrupt-{kind.replace(' ', '-')}"
        subprocess.run(["cp", "-r", str(good), str(target)], check=True)
        (target / WEIGHTS).write_bytes(damage(weights))
        out.append({"where": "a patch set on disk", "kind": kind, "detected": _refused(PatchSet.load, target,
                                                                                        CorruptPatchSet)})
    version = layout.version(store.load_state(layout)[0].version)
    store.write_bytes(f"{version}/{WEIGHTS}", changed_float(weights))
    downloaded = store.download_dir(version, work / "s3-version")
    out.append({"where": "the ledger's S3 version", "kind": "one float changed",
                "detected": _refused(PatchSet.load, downloaded, CorruptPatchSet)})
    md5 = next(line.split(":")[-1].strip() for line in (registry.repo / "registry" / MODEL / f"{WEIGHTS}.dvc")
               .read_text().splitlines() if "md5" in line)
    cache = registry.repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    cache.chmod(0o644)
    cache.write_bytes(changed_float(weights))
    out.append({"where": "the registry's DVC cache", "kind": "one float changed",
                "detected": _refused(registry.fetch, MODEL, work / "from-cache", exc=RegistryError)})
    cache.unlink()
    store.write_bytes(f"{root}/dvc/files/md5/{md5[:2]}/{md5[2:]}", changed_float(weights))
    out.append({"where": "the registry's DVC remote", "kind": "one float changed",
                "detected": _refused(registry.fetch, MODEL, work / "from-remote", exc=RegistryError)})
    return out


def write_path_probe(server, root: str) -> list[dict]:
    """Requests without the S3 keys: the S3 API unsigned, and plain HTTP to every other port the server listens
    on (found in /proc, named after the server's roles where known). A write counts as refused when it was
    answered 4xx or cut off, and nothing it aimed at appeared in the bucket."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    from patcher.pipeline import store

    out = []
    anonymous = boto3.client("s3", endpoint_url=server.endpoint_url, config=Config(signature_version=UNSIGNED))
    bucket = root.removeprefix("s3://")
    for what, call in (("S3 PUT without keys", lambda: anonymous.put_object(Bucket=bucket, Key="pipeline/x", Body=b"x")),
                       ("S3 GET without keys", lambda: anonymous.get_object(Bucket=bucket, Key=f"pipeline/{MODEL}/"
                                                                                           "state.json"))):
        try:
            call()
            out.append({"path": what, "refused": False})
        except Exception as error:  # noqa: BLE001
            out.append({"path": what, "refused": True, "answer": type(error).__name__})
    roles = {port: name for name, port in getattr(server, "ports", {}).items()}
    roles.update({port + 10000: f"{name} gRPC" for name, port in getattr(server, "ports", {}).items()})
    before = set(store.list_objects(root))
    for port in sorted(set(_listening_ports(server)) - {server.port}):
        for method, path in (("PUT", f"/buckets/{bucket}/errors/{MODEL}/2026/12/01/10/injected.jsonl"),
                             ("POST", f"/buckets/{bucket}/serving/{MODEL}/latest"), ("GET", f"/buckets/{bucket}/pipeline/"),
                             ("GET", "/dir/assign"), ("POST", "/submit")):
            where = f"{method} {roles.get(port, 'port')} :{port}{path}"
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"{}" if method != "GET" else None,
                                             method=method)
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    out.append({"path": where, "refused": False, "answer": answer.status})
            except urllib.error.HTTPError as error:
                out.append({"path": where, "refused": 400 <= error.code < 500, "answer": error.code})
            except OSError as error:
                out.append({"path": where, "refused": True, "answer": type(error).__name__})
    written = sorted(set(store.list_objects(root)) - before)
    out.append({"path": "objects that appeared in the bucket meanwhile", "refused": not written, "answer": written})
    return out


# --- helpers ------------------------------------------------------------------------------------------------

def _listening_ports(server) -> list[int]:
    """The TCP ports the server's process listens on (patcher.pipeline.s3's own /proc reader)."""
    from patcher.pipeline.s3 import listeners

    return [port for port, pids in listeners().items() if server.process and server.process.pid in pids]


def _text_or_b64(line: bytes) -> str:
    try:
        return line.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(line).decode("ascii")


def _post(url: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, {}


def _refused(fn, *args, exc=Exception) -> bool:
    try:
        fn(*args)
    except exc:
        return True
    return False


def _wait_for(condition, timeout: float) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError("the killed run never reached its train step")
        time.sleep(0.2)
    return round(time.monotonic() - start, 1)


def _brief(result) -> dict:
    s = result.summary
    return {"outcome": s.get("outcome"), "counts": s.get("counts"), "run_id": s.get("run_id")}


def markdown(r: dict) -> str:
    bad, acc = r["bad_input"], r["accounting"]
    lines = [f"# Trust probe ({socket.gethostname()}, {time.strftime('%Y-%m-%d')})", "",
             "`.venv/bin/python bench/trust.py` on real SeaweedFS, Prefect, great-expectations, the registry and "
             "factcheck-minilm.", "", "| what | tried | handled |", "|---|---|---|",
             f"| bad lines (quarantined with reason and original bytes) | {bad['kinds_bad']} | {bad['bad_quarantined']} |",
             f"| tricky valid lines (accepted unaltered) | {bad['kinds_tricky']} | {bad['tricky_accepted']} |",
             f"| faults injected (survived) | {len(r['faults'])} | {sum(f['survived'] for f in r['faults'])} |",
             f"| corruptions (detected) | {len(r['corruption'])} | {sum(c['detected'] for c in r['corruption'])} |",
             f"| unauthenticated write paths (refused) | {len(r['write_paths'])} | "
             f"{sum(w['refused'] for w in r['write_paths'])} |",
             f"| /feedback poisoning (held for review) | 1 | {int(r['feedback']['survived'])} |", "",
             f"Lines logged {acc['lines']}: accepted {acc['accepted']}, quarantined {acc['quarantined']}, lost "
             f"{len(acc['lost'])}, altered {len(acc['altered'])}; batches never processed {len(acc['blocked_batches'])}; "
             f"error ids with neurons twice {len(acc['edits_twice'])}; registry versions {acc['versions']}.", "",
             "## Faults", ""]
    lines += [f"- {f['fault']}: {'survived' if f['survived'] else '**NOT survived**'} "
              f"({json.dumps({k: v for k, v in f.items() if k not in ('fault', 'survived')})})" for f in r["faults"]]
    lines += ["", "## Corruption", ""] + [f"- {c['where']}, {c['kind']}: {'detected' if c['detected'] else '**loaded**'}"
                                          for c in r["corruption"]]
    lines += ["", "## Write paths without keys", ""] + [
        f"- {w['path']}: {'refused' if w['refused'] else '**accepted**'} ({w.get('answer')})" for w in r["write_paths"]]
    lines += ["", "## Feedback", "", "```", json.dumps(r["feedback"], indent=1), "```", "",
              "## Reasons given per bad line", "", "| kind | reasons |", "|---|---|"]
    lines += [f"| {kind} | {'; '.join(reasons) if reasons else '**not quarantined**'} |"
              for kind, reasons in bad["reasons"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
