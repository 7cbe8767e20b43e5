"""Every S3 call of the flows runs as a task that Prefect retries with exponential backoff and jitter when
the failure is transient (server unreachable, timeouts, 5xx); other failures fail at once."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from patcher.pipeline import store
from patcher.serving import publish


def transient(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as error:  # noqa: BLE001 (the task's own exception, re-raised to look at it)
        return store.is_transient(error)
    return False


s3_task = task(retries=5, retry_delay_seconds=exponential_backoff(backoff_factor=1), retry_jitter_factor=0.5,
               retry_condition_fn=transient, cache_policy=NO_CACHE)

read_text = s3_task(name="s3-read")(store.read_text)
read_bytes = s3_task(name="s3-read-bytes")(store.read_bytes)
write_text = s3_task(name="s3-write")(store.write_text)
write_json = s3_task(name="s3-write-json")(store.write_json)
write_jsonl = s3_task(name="s3-write-jsonl")(store.write_jsonl)
upload_dir = s3_task(name="s3-upload-dir")(store.upload_dir)
download_dir = s3_task(name="s3-download-dir")(store.download_dir)
load_state = s3_task(name="read-ledger")(store.load_state)
commit_state = s3_task(name="commit-ledger")(store.commit_state)
new_batches = s3_task(name="list-new-batches")(store.new_batches)
list_objects = s3_task(name="s3-list")(store.list_objects)
stray_errors = s3_task(name="list-stray-errors")(store.stray_errors)
ledger_base = s3_task(name="read-ledger-version")(store.ledger_base)
save_version = s3_task(name="save-version")(store.save_version)
publish_onnx = s3_task(name="publish-onnx")(publish.publish)
