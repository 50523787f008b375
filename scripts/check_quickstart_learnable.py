#!/usr/bin/env python
"""Manual check: is the quickstart preference data learnable by the tiny model?

This is NOT part of the test suite (it trains for about a minute on CPU).  Run
it by hand after regenerating the assets with
``scripts/make_quickstart_assets.py``::

    .venv/bin/python scripts/check_quickstart_learnable.py

What it does, independently of rmrun's own trainer:

* loads ``recipes/assets/tiny-tokenizer`` and ``recipes/assets/tiny-llama``
  (offline, ``from_pretrained`` on local folders) and checks the chat
  template / special tokens (rendered conversations end with eos, pad != eos);
* renders every pair of ``recipes/data/quickstart_{train,eval}.jsonl`` through
  the tokenizer's chat template ("from" -> "role"), tokenizing with
  ``add_special_tokens=True`` (the tokenizer prepends ``<s>``; the template
  does not);
* trains a fresh ``AutoModelForSequenceClassification`` (num_labels=1) from
  the config with the pairwise loss ``-logsigmoid(r_chosen - r_rejected)``,
  the reward being read at the last non-pad token found from the attention
  mask (right padding); AdamW lr 2e-4, batch 16 pairs, 2 epochs,
  ``torch.manual_seed(0)``, ``torch.set_num_threads(2)``;
* reports held-out pairwise accuracy, wall time, the "longer response wins"
  baseline on eval and the token-length distribution of full chosen
  conversations.

It exits non-zero if eval accuracy < 0.85 (the data should then be made easier).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "recipes" / "assets" / "tiny-tokenizer"
MODEL_DIR = ROOT / "recipes" / "assets" / "tiny-llama"
TRAIN_FILE = ROOT / "recipes" / "data" / "quickstart_train.jsonl"
EVAL_FILE = ROOT / "recipes" / "data" / "quickstart_eval.jsonl"
MIN_ACCURACY = 0.85


def load_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def to_messages(turns):
    return [{"role": t["from"], "content": t["content"]} for t in turns]


def encode_pairs(tok, rows):
    """Return a list of (chosen_ids, rejected_ids) for each row."""
    pairs = []
    for row in rows:
        encoded = []
        for side in ("chosen", "rejected"):
            text = tok.apply_chat_template(to_messages(row["context"] + row[side]), tokenize=False)
            ids = tok(text, add_special_tokens=True, truncation=True,
                      max_length=tok.model_max_length)["input_ids"]
            encoded.append(ids)
        pairs.append(tuple(encoded))
    return pairs


def collate(tok, batch):
    """Right-pad chosen then rejected sequences into one batch."""
    seqs = [c for c, _ in batch] + [r for _, r in batch]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, :len(s)] = 1
    return input_ids, attention_mask


def rewards(model, input_ids, attention_mask):
    """Scalar reward at the last non-pad token (right padding assumed)."""
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    last = attention_mask.sum(dim=1) - 1
    pooled = hidden[torch.arange(hidden.size(0)), last]
    return model.score(pooled).squeeze(-1)


@torch.no_grad()
def accuracy(model, tok, pairs, batch_size):
    model.eval()
    correct = 0
    for i in range(0, len(pairs), batch_size):
        batch = pairs[i:i + batch_size]
        ids, mask = collate(tok, batch)
        r = rewards(model, ids, mask)
        n = len(batch)
        correct += (r[:n] > r[n:]).sum().item()
    model.train()
    return correct / len(pairs)


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    config = AutoConfig.from_pretrained(str(MODEL_DIR), num_labels=1)
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "right"
    assert config.vocab_size == len(tok)
    demo = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        tokenize=False)
    demo_ids = tok(demo)["input_ids"]
    assert demo_ids[0] == tok.bos_token_id and demo_ids[1] != tok.bos_token_id
    assert demo_ids[-1] == tok.eos_token_id
    print(f"tokenizer: {type(tok).__name__}, len={len(tok)}, bos={tok.bos_token_id}, "
          f"eos={tok.eos_token_id}, pad={tok.pad_token_id}, unk={tok.unk_token_id}")
    print(f"demo rendering: {demo!r} -> {demo_ids}")

    train_rows, eval_rows = load_jsonl(TRAIN_FILE), load_jsonl(EVAL_FILE)
    train_pairs, eval_pairs = encode_pairs(tok, train_rows), encode_pairs(tok, eval_rows)

    longer_wins = sum(len(c) > len(r) for c, r in eval_pairs) / len(eval_pairs)
    longer_wins_chars = sum(
        len(row["chosen"][-1]["content"]) > len(row["rejected"][-1]["content"])
        for row in eval_rows) / len(eval_rows)
    chosen_lengths = [len(c) for c, _ in train_pairs + eval_pairs]
    print(f"'longer wins' baseline on eval: {longer_wins:.3f} (tokens), "
          f"{longer_wins_chars:.3f} (chars)")
    print("chosen conversation tokens (train+eval): min={} median={} p90={} max={}".format(
        min(chosen_lengths), statistics.median(chosen_lengths),
        percentile(chosen_lengths, 0.9), max(chosen_lengths)))

    # (In transformers 4.51 from_config() rejects num_labels=...; it is set on
    # the config above, and config.json already ships num_labels=1.)
    model = AutoModelForSequenceClassification.from_config(config)
    model.config.pad_token_id = tok.pad_token_id
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    rng = random.Random(args.seed)

    start = time.perf_counter()
    step = 0
    for epoch in range(args.epochs):
        order = list(range(len(train_pairs)))
        rng.shuffle(order)
        for i in range(0, len(order), args.batch_size):
            batch = [train_pairs[j] for j in order[i:i + args.batch_size]]
            ids, mask = collate(tok, batch)
            r = rewards(model, ids, mask)
            n = len(batch)
            loss = -F.logsigmoid(r[:n] - r[n:]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % 25 == 0:
                print(f"epoch {epoch} step {step} loss {loss.item():.4f}", flush=True)
        acc = accuracy(model, tok, eval_pairs, args.batch_size)
        print(f"epoch {epoch}: eval accuracy {acc:.3f} "
              f"({time.perf_counter() - start:.1f}s elapsed)", flush=True)
    train_time = time.perf_counter() - start

    acc = accuracy(model, tok, eval_pairs, args.batch_size)
    print(f"RESULT eval_accuracy={acc:.3f} train_time_s={train_time:.1f} steps={step}")
    return 0 if acc >= MIN_ACCURACY else 1


if __name__ == "__main__":
    sys.exit(main())
