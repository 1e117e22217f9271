"""Step time of DoRA, VeRA and IA3 against LoRA on the same tiny model, in one interleaved run.

Each method trains its own copy of the same base on the same batches; the steps are taken in
turn (lora, dora, vera, ia3, lora, ...), so a machine that slows down slows every method alike,
and the table prints each median step time as a ratio to LoRA's. One step is forward, loss,
backward, optimizer step, zero_grad. Settings: LoRA / DoRA r=8 on query,value; VeRA r=256 on
query,value; IA3 on peft's BERT defaults (key, value, output.dense). Run:

    .venv/bin/python benchmarks/bench_variants.py [--steps 40] [--hidden 256] [--batch 16]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

import peftlab as pl


def build_all(base):
    qv = ["query", "value"]
    out = {}
    for name, apply in (
            ("lora", lambda m: pl.lora.apply(m, pl.lora.LoraConfig(r=8, alpha=16, targets=qv))),
            ("dora", lambda m: pl.lora.apply(m, pl.lora.LoraConfig(r=8, alpha=16, targets=qv,
                                                                   variant="dora"))),
            ("vera", lambda m: pl.lora.apply(m, pl.lora.VeraConfig(r=256, targets=qv))),
            ("ia3", lambda m: pl.ia3.apply(m, pl.ia3.IA3Config()))):
        model = apply(copy.deepcopy(base)).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        out[name] = (model, opt)
    return out


def step(model, opt, ids, labels) -> float:
    t0 = time.perf_counter()
    F.cross_entropy(model(input_ids=ids).logits, labels).backward()
    opt.step()
    opt.zero_grad()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    a = ap.parse_args()
    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(
        vocab_size=1000, hidden_size=a.hidden, num_hidden_layers=a.layers,
        num_attention_heads=4, intermediate_size=4 * a.hidden, max_position_embeddings=128,
        num_labels=2)).eval()
    runs = build_all(base)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randint(1, 1000, (a.batch, a.seq), generator=g),
             torch.randint(0, 2, (a.batch,), generator=g)) for _ in range(a.steps)]
    times = {n: [] for n in runs}
    for i, (ids, labels) in enumerate(data):
        for name, (model, opt) in runs.items():          # interleaved: lora, dora, vera, ia3
            dt = step(model, opt, ids, labels)
            if i >= a.warmup:
                times[name].append(dt)
    lora = statistics.median(times["lora"])
    print(f"BERT {a.layers} layers, hidden {a.hidden}, batch {a.batch} x {a.seq} tokens, "
          f"{a.steps - a.warmup} timed steps each, {torch.get_num_threads()} threads")
    print(f"{'method':<8}{'trainable':>12}{'median step':>14}{'vs LoRA':>10}")
    for name, (model, _) in runs.items():
        t = statistics.median(times[name])
        n = pl.trainable_report(model).trainable
        print(f"{name:<8}{n:>12,}{t * 1e3:>11.1f} ms{t / lora:>9.2f}x")


if __name__ == "__main__":
    main()
