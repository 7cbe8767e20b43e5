"""Concurrent /predict requests answered together. A request waits for others to join it at most `window_s`, and
at most a tenth of the last run's time (a fast model is not slowed by the wait, a slow one gains rows); a
batch holds requests for one model version and one max_new_tokens (the answers they get alone, up to fp32 sums
in another batch shape), up to `max_rows` inputs (a larger request runs alone); `workers` threads run batches, so that many model runs happen at once at most. One
batched run reads the weights once per decoding step for all its rows: on a CPU that is memory-bound at batch 1,
rows come almost free. Callers get a Future: nothing blocks a thread while it waits.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field


class Busy(RuntimeError):
    """More requests wait than the batcher queues: the caller should answer 503 and let the client retry."""


@dataclass
class Pending:
    model: object                   # the version the request started with: a swap never splits a request
    texts: list[str]
    max_new_tokens: int
    future: Future = field(default_factory=Future)


class Batcher:
    def __init__(self, window_s: float = 0.005, max_rows: int = 32, workers: int = 1, max_waiting: int = 256):
        if workers < 1 or max_rows < 1:
            raise ValueError(f"workers and max_rows must be at least 1, got {workers} and {max_rows}")
        self.window_s, self.max_rows, self.max_waiting = window_s, max_rows, max_waiting
        self._waiting: deque[Pending] = deque()
        self._changed = threading.Condition()
        self._stopped = False
        self.batches = self.rows = 0                 # counts, for /health and the benchmark
        self._last_run_s = window_s * 10             # until a run is timed: the full window
        self._threads = [threading.Thread(target=self._work, name=f"batcher-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, model, texts: list[str], max_new_tokens: int) -> Future:
        """-> a Future of model(texts, max_new_tokens=...)'s predictions for these texts; raises Busy when
        `max_waiting` requests wait already."""
        pending = Pending(model, list(texts), max_new_tokens)
        with self._changed:
            if self._stopped:
                raise Busy("the service is stopping")
            if len(self._waiting) >= self.max_waiting:
                raise Busy(f"{len(self._waiting)} requests are waiting for the model")
            self._waiting.append(pending)
            self._changed.notify_all()        # an idle worker too: the collecting one may not take this request
        return pending.future

    def stop(self) -> None:
        """Ends the workers after their current run; requests still waiting get Busy."""
        with self._changed:
            self._stopped = True
            waiting, self._waiting = list(self._waiting), deque()
            self._changed.notify_all()
        for pending in waiting:
            if pending.future.set_running_or_notify_cancel():
                pending.future.set_exception(Busy("the service stopped"))

    def _take(self) -> list[Pending] | None:
        """The oldest waiting request and those that can join it, waiting up to window_s for more."""
        with self._changed:
            while not self._waiting and not self._stopped:
                self._changed.wait()
            if self._stopped:
                return None
            batch = [self._waiting.popleft()]
            window = min(self.window_s, self._last_run_s / 10)
            rows, deadline = len(batch[0].texts), time.monotonic() + window
            while rows < self.max_rows:
                joins = [p for p in self._waiting if p.model is batch[0].model and
                         p.max_new_tokens == batch[0].max_new_tokens and rows + len(p.texts) <= self.max_rows]
                for pending in joins:
                    if rows + len(pending.texts) <= self.max_rows:
                        self._waiting.remove(pending)
                        batch.append(pending)
                        rows += len(pending.texts)
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left):
                    break
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            batch = [p for p in batch if p.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            first, started = batch[0], time.monotonic()
            try:
                predictions = first.model([t for p in batch for t in p.texts], max_new_tokens=first.max_new_tokens)
                self._last_run_s = time.monotonic() - started
            except BaseException as error:  # noqa: BLE001 (each request's caller gets the error)
                for pending in batch:
                    pending.future.set_exception(error)
                continue
            with self._changed:
                self.batches += 1
                self.rows += len(predictions)
            start = 0
            for pending in batch:
                pending.future.set_result(predictions[start:start + len(pending.texts)])
                start += len(pending.texts)
