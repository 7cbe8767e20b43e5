"""The user's side of a question classifier: their own training job and their own production logs.

A team fine-tunes all-MiniLM-L6-v2 to tell which topic a user's line to their chatbot is about (the categories
of chatterbot-corpus: ai, coding, emotion, ...), deploys it, and later finds the lines it got wrong. This
script plays all of that, offline and deterministically for a seed:

  1. reads the distinct user lines (the first line of each conversation) of every chatterbot-corpus English
     category with at least --min-lines of them; a line found in two categories is dropped (its label is
     ambiguous);
  2. splits them per category, seeded, into train / memory / locality / held-out;
  3. fine-tunes AutoModelForSequenceClassification on train and saves it (safetensors) with its tokenizer to
     OUT/model, config.id2label set to the category names;
  4. writes OUT/memory.jsonl (the inputs the team has: its training lines and a sample of production lines, no
     labels), OUT/regression.jsonl (a locality suite: the
     locality lines it gets right, inputs only), OUT/errors.jsonl (the model's real mistakes on the held-out lines, as error records) and
     OUT/card.json (counts, accuracy per split, labels, seconds).

    python examples/question-classifier/train.py --out /tmp/qc            # full build, about a minute
    python examples/question-classifier/train.py --out /tmp/qc --limit 16 # test-sized build

It uses nothing from the patcher package except patcher.models.base.minilm_dir (where the base model is).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import time
from pathlib import Path

MODEL_NAME = "question-classifier"
TASK = "classification"
SPLITS = ("train", "memory", "locality", "heldout")
FRACTIONS = {"train": 0.4, "memory": 0.15, "locality": 0.1}     # the rest of each category is held out


def corpus_dir() -> Path:
    from patcher.models.base import package_dir
    return package_dir("chatterbot_corpus") / "data" / "english"


def clean(text: str) -> str:
    return re.sub(r"\s+", " ", "".join(ch if ch.isprintable() else " " for ch in text)).strip()


def user_lines(min_lines: int) -> dict[str, list[str]]:
    """category (file stem) -> its distinct user lines, in corpus order; categories with fewer than
    `min_lines` lines and lines found in more than one category are left out."""
    import yaml

    per_category: dict[str, list[str]] = {}
    for path in sorted(corpus_dir().glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        seen, lines = set(), []
        for conversation in data.get("conversations") or []:
            if not conversation or not isinstance(conversation[0], str):
                continue
            line = clean(conversation[0])
            key = line.casefold().rstrip("?.! ")
            if line and key not in seen:
                seen.add(key)
                lines.append(line)
        per_category[path.stem] = lines
    owners: dict[str, set[str]] = {}
    for category, lines in per_category.items():
        for line in lines:
            owners.setdefault(line.casefold().rstrip("?.! "), set()).add(category)
    kept = {c: [l for l in lines if len(owners[l.casefold().rstrip("?.! ")]) == 1]
            for c, lines in per_category.items()}
    return {c: lines for c, lines in kept.items() if len(lines) >= min_lines}


def split(data: dict[str, list[str]], seed: int, limit: int | None) -> dict[str, list[tuple[str, str]]]:
    """Stratified, seeded: each category's lines shuffled, cut into the SPLITS; each split interleaved."""
    rng = random.Random(seed)
    out = {name: [] for name in SPLITS}
    for category in sorted(data):
        lines = list(data[category])
        rng.shuffle(lines)
        if limit:
            lines = lines[:limit]
        n, start = len(lines), 0
        for name in SPLITS:
            size = n - start if name == "heldout" else max(1, round(FRACTIONS[name] * n))
            out[name] += [(line, category) for line in lines[start:start + size]]
            start += size
    for name in SPLITS:
        rng.shuffle(out[name])
    return out


def record_id(text: str) -> str:
    return "qc-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_jsonl(path: Path, rows) -> int:
    rows = list(rows)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output directory (its model/ and files are replaced)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--limit", type=int, default=None, help="at most this many lines per category (tests)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=48)
    ap.add_argument("--min-lines", type=int, default=20, help="categories with fewer distinct lines are left out")
    ap.add_argument("--logged-at", default="2026-01-01T00:00:00Z", help="logged_at of every error record")
    args = ap.parse_args(argv)

    import torch
    import transformers as tf

    from patcher.models.base import minilm_dir

    started = time.perf_counter()
    tf.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)              # batch-16 MiniLM steps are fastest on 1 thread on a 2-core machine
    torch.use_deterministic_algorithms(True)

    data = user_lines(args.min_lines)
    labels = sorted(data)
    splits = split(data, args.seed, args.limit)
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_dir())
    model = tf.AutoModelForSequenceClassification.from_pretrained(
        minilm_dir(), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)})

    def encode(texts):
        return tokenizer(texts, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")

    train = splits["train"]
    batches_per_epoch = (len(train) + args.batch_size - 1) // args.batch_size
    steps = args.epochs * batches_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / max(1, steps))
    order_rng = random.Random(args.seed + 1)
    model.train()
    train_started = time.perf_counter()
    for _ in range(args.epochs):
        order = list(range(len(train)))
        order_rng.shuffle(order)
        for start in range(0, len(order), args.batch_size):
            batch = [train[i] for i in order[start:start + args.batch_size]]
            enc = encode([text for text, _ in batch])
            target = torch.tensor([labels.index(label) for _, label in batch])
            loss = torch.nn.functional.cross_entropy(model(**enc).logits, target)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
    train_seconds = time.perf_counter() - train_started
    model.eval()

    @torch.no_grad()
    def predict(texts: list[str]) -> list[str]:
        out = []
        for start in range(0, len(texts), 64):
            logits = model(**encode(texts[start:start + 64])).logits
            out += [labels[i] for i in logits.argmax(-1).tolist()]
        return out

    predictions = {name: predict([t for t, _ in rows]) for name, rows in splits.items()}
    accuracy = {name: round(sum(p == label for p, (_, label) in zip(predictions[name], rows)) / len(rows), 4)
                for name, rows in splits.items() if rows}

    out = args.out
    if (out / "model").exists():
        shutil.rmtree(out / "model")      # only what this script writes is replaced
    (out / "model").mkdir(parents=True)
    model.save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")
    # the memory: the inputs the team has, its training lines and a sample of production lines, no labels
    n_memory = write_jsonl(out / "memory.jsonl", ({"input": t} for t, _ in splits["train"] + splits["memory"]))
    # the regression suite: lines reviewers confirmed the model gets right, stored without their labels (a line it
    # gets wrong may rightly change when an edit generalises: a suite without targets cannot tell that from harm)
    n_regression = write_jsonl(out / "regression.jsonl", ({"input": t} for (t, label), p in
                                                          zip(splits["locality"], predictions["locality"]) if p == label))
    errors = [{"id": record_id(text), "model": MODEL_NAME, "task": TASK, "input": text, "prediction": pred,
               "target": label, "logged_at": args.logged_at}
              for (text, label), pred in zip(splits["heldout"], predictions["heldout"]) if pred != label]
    n_errors = write_jsonl(out / "errors.jsonl", errors)
    card = {
        "model": MODEL_NAME, "task": TASK, "base_model": "all-MiniLM-L6-v2",
        "data": "chatterbot-corpus english, first line of each conversation, labelled by category file",
        "labels": labels,
        "settings": {"seed": args.seed, "epochs": args.epochs, "limit": args.limit, "batch_size": args.batch_size,
                     "lr": args.lr, "max_length": args.max_length, "min_lines": args.min_lines,
                     "fractions": {**FRACTIONS, "heldout": "rest"}},
        "lines_per_label": {label: sum(1 for rows in splits.values() for _, l in rows if l == label)
                            for label in labels},
        "counts": {**{name: len(rows) for name, rows in splits.items()}, "errors": n_errors,
                   "memory_file": n_memory, "regression_file": n_regression},
        "accuracy": accuracy,
        "seconds": {"train": round(train_seconds, 1), "total": round(time.perf_counter() - started, 1)},
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"out": str(out), "counts": card["counts"], "accuracy": accuracy,
                      "seconds": card["seconds"]}))
    return card


if __name__ == "__main__":
    main()
