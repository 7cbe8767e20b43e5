"""Concurrent /predict requests share model runs (patcher/serving/batching.py), with the answers they get alone."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from patcher.serving.batching import Batcher, Busy
from patcher.serving.onnx_model import OnnxModel, token_groups
from patcher.serving.serve import in_thread


class Recorder:
    """A model that answers each text with its length and records every call's texts."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.calls, self.delay, self.fail = [], delay, fail

    def __call__(self, texts, max_new_tokens=8):
        self.calls.append(list(texts))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("the model broke")
        return [{"answer": f"{len(t)}:{max_new_tokens}"} for t in texts]


def test_requests_within_the_window_share_one_run_and_get_their_own_answers():
    model, batcher = Recorder(), Batcher(window_s=0.2, max_rows=8)
    try:
        futures = [batcher.submit(model, [f"x{'y' * i}"] * (1 + i % 2), 8) for i in range(4)]
        answers = [f.result(5) for f in futures]
    finally:
        batcher.stop()
    assert len(model.calls) == 1 and len(model.calls[0]) == 6
    assert answers == [[{"answer": f"{1 + i}:8"}] * (1 + i % 2) for i in range(4)]
    assert (batcher.batches, batcher.rows) == (1, 6)


def test_a_batch_holds_one_model_version_one_answer_length_and_at_most_max_rows():
    old, new, batcher = Recorder(), Recorder(), Batcher(window_s=0.2, max_rows=3)
    try:
        futures = [batcher.submit(old, ["a"], 8), batcher.submit(new, ["b"], 8), batcher.submit(old, ["c"], 4),
                   batcher.submit(old, ["d", "e"], 8), batcher.submit(old, ["f"], 8)]
        for future in futures:
            future.result(5)
    finally:
        batcher.stop()
    assert sorted(map(sorted, old.calls)) == [["a", "d", "e"], ["c"], ["f"]] and new.calls == [["b"]]


def test_a_failing_run_fails_each_of_its_requests_and_the_batcher_goes_on():
    broken, batcher = Recorder(fail=True), Batcher(window_s=0.1)
    try:
        futures = [batcher.submit(broken, ["a"], 8), batcher.submit(broken, ["b"], 8)]
        for future in futures:
            with pytest.raises(RuntimeError, match="the model broke"):
                future.result(5)
        assert batcher.submit(Recorder(), ["c"], 8).result(5) == [{"answer": "1:8"}]
    finally:
        batcher.stop()


def test_more_waiting_requests_than_the_queue_takes_are_refused():
    slow, batcher = Recorder(delay=0.5), Batcher(window_s=0, max_rows=1, max_waiting=2)
    try:
        running = batcher.submit(slow, ["a"], 8)
        time.sleep(0.1)                                           # the worker took it: two may wait
        waiting = [batcher.submit(slow, ["b"], 8), batcher.submit(slow, ["c"], 8)]
        with pytest.raises(Busy, match="2 requests are waiting"):
            batcher.submit(slow, ["d"], 8)
        assert [f.result(5) for f in [running, *waiting]] == [[{"answer": "1:8"}]] * 3
    finally:
        batcher.stop()


def test_token_groups_bound_the_padded_tokens_of_each_run():
    lengths = [5, 300, 7, 6, 1000, 2]
    groups = token_groups(lengths, budget=1024)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert all(len(g) * max(lengths[i] for i in g) <= 1024 or len(g) == 1 for g in groups)
    assert groups[0] == [5, 0, 3, 2]                                 # the short ones together


def test_batched_cached_generation_gives_each_prompt_its_answer_alone(exports):
    model = OnnxModel(exports / "llama-onnx")
    assert model.cached                                          # the export's KV-cached graph
    texts = ["the capital of france is", "a", "numbers go up and down and then", "she likes green tea"]
    together = model(texts, max_new_tokens=6)
    assert together == [model([t], max_new_tokens=6)[0] for t in texts]
    assert any(a["answer"] for a in together)


def test_concurrent_http_requests_are_batched_with_the_answers_they_get_alone(make_service):
    service = make_service(arch="llama", batch_window_ms=200)
    texts = ["the capital of france is", "a", "numbers go up and down and then", "she likes green tea"]
    alone = [service.current([t], max_new_tokens=5)[0] for t in texts]
    server, url = in_thread(service)
    try:
        start = threading.Barrier(len(texts))

        def ask(text):
            start.wait()
            return httpx.post(f"{url}/predict", json={"input": text, "max_new_tokens": 5}, timeout=30).json()

        with ThreadPoolExecutor(len(texts)) as pool:
            answers = list(pool.map(ask, texts))
    finally:
        server.should_exit = True
    assert [a["predictions"][0] for a in answers] == alone
    assert service.batcher.rows == len(texts) and service.batcher.batches < len(texts)


def test_stopping_answers_every_waiting_request_and_refuses_new_ones():
    slow, batcher = Recorder(delay=0.5), Batcher(window_s=0, max_rows=1)
    running = batcher.submit(slow, ["a"], 8)
    time.sleep(0.1)
    waiting = batcher.submit(slow, ["b"], 8)
    batcher.stop()
    with pytest.raises(Busy, match="stopped"):
        waiting.result(5)
    with pytest.raises(Busy, match="stopping"):
        batcher.submit(slow, ["c"], 8)
    assert running.result(5) == [{"answer": "1:8"}]               # the run under way finishes


def test_a_fast_model_does_not_wait_the_whole_window():
    fast, batcher = Recorder(), Batcher(window_s=0.5, max_rows=8)
    try:
        batcher.submit(fast, ["a"], 8).result(5)                    # the first run waits the window: not yet timed
        start = time.monotonic()
        batcher.submit(fast, ["b"], 8).result(5)
        assert time.monotonic() - start < 0.1                       # a tenth of a run of ~0 s, not 0.5 s
    finally:
        batcher.stop()
