"""Concurrent /predict requests answered together. A request waits at most `window_s` for others to join it; a
batch holds requests for one model version and one max_new_tokens (the same greedy answers as alone, exactly),
up to `max_rows` inputs; `workers` threads run batches, so that many model runs happen at once at most. One
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
        self._threads = [threading.Thread(target=self._work, name=f"batcher-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, model, texts: list[str], max_new_tokens: int) -> Future:
        """-> a Future of model(texts, max_new_tokens=...)'s predictions for these texts; raises Busy when
        `max_waiting` requests wait already."""
        pending = Pending(model, list(texts), max_new_tokens)
        with self._changed:
            if len(self._waiting) >= self.max_waiting:
                raise Busy(f"{len(self._waiting)} requests are waiting for the model")
            self._waiting.append(pending)
            self._changed.notify()
        return pending.future

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def _take(self) -> list[Pending] | None:
        """The oldest waiting request and those that can join it, waiting up to window_s for more."""
        with self._changed:
            while not self._waiting and not self._stopped:
                self._changed.wait()
            if self._stopped:
                return None
            batch = [self._waiting.popleft()]
            rows, deadline = len(batch[0].texts), time.monotonic() + self.window_s
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
            first = batch[0]
            try:
                predictions = first.model([t for p in batch for t in p.texts], max_new_tokens=first.max_new_tokens)
            except BaseException as error:  # noqa: BLE001 (each request's caller gets the error)
                for pending in batch:
                    pending.future.set_exception(error)
                continue
            self.batches += 1
            self.rows += len(predictions)
            start = 0
            for pending in batch:
                pending.future.set_result(predictions[start:start + len(pending.texts)])
                start += len(pending.texts)
