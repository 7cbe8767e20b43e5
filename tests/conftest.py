import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)   # tiny ops: one thread is many times faster on 2-core machines

from patcher.models.tiny import tiny_model, tiny_tokenizer  # noqa: E402
from patcher.tasks import Example  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def make_model():
    return tiny_model


# Inputs and targets the tiny models are edited on, with memory sentences of other shapes.
FACTS = [Example(f"the capital of {c} is", a) for c, a in
         [("france", "paris"), ("spain", "madrid"), ("italy", "rome"), ("peru", "lima"), ("chile", "santiago")]]
MEMORY = [Example(t, "yes") for t in [
    "a red house stands by the river", "numbers go up and down", "the weather was cold in june",
    "music played all night long", "he wrote a letter to his brother", "three dogs ran across the park",
    "the book was closed", "she likes green tea", "trains leave every hour", "a small boat drifted"]]
