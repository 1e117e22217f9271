"""Training step time, fp32 against bf16 autocast, for every method, interleaved in one run.

    .venv/bin/python benchmarks/bench_precision.py [--steps 6] [--batch 32] [--seq 32]
                                                   [--methods lora,full,...] [--force]

One process, the embedded model (all-MiniLM-L6-v2 + 2-class head), the same batches for every
variant. Steps are interleaved (lora fp32, lora bf16, full fp32, full bf16, ...) so a burst of
background load hits all variants alike; the table shows the median step (forward + loss +
backward + AdamW step) after one warm-up round, and bf16 / fp32 per method.

The precision is chosen by peftlab.train.precision exactly as fit() chooses it: on a CPU without
bf16 instructions "bf16" runs fp32 (ratio ~1.0, with the note). --force runs bf16 autocast
anyway, to show what emulated bf16 costs on such a CPU.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import peftlab as pl
from peftlab.train import precision as P

METHODS = ("lora", "full", "prefix", "prompt", "selection", "adalora")


def build(name: str, base, batches):
    model = copy.deepcopy(base)
    if name == "lora":
        pl.lora.apply(model, pl.lora.LoraConfig(r=8, alpha=16, targets=["query", "value"]))
    elif name == "full":
        pl.full.apply(model, pl.full.FullConfig(mode="all"))
    elif name == "prefix":
        pl.prefix.apply(model, pl.prefix.PrefixConfig(10))
    elif name == "prompt":
        pl.prompt.apply(model, pl.prompt.PromptConfig(10))
    elif name == "selection":
        pl.selection.apply(model, pl.selection.SelectionConfig(fraction=0.005, per_example=False),
                           batches=batches[:2])
    else:
        pl.adalora.apply(model, pl.adalora.AdaLoraConfig(init_r=12, target_r=8,
                                                         targets=["query", "value"],
                                                         total_steps=10_000))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, opt


def step(model, opt, batch, prec: P.Precision, index: int) -> float:
    t0 = time.perf_counter()
    with prec.autocast(torch.device("cpu")):
        loss = pl.train.loss_fn(model, batch) + pl.regularization(model)
    loss.backward()
    opt.step()
    pl.after_step(model, index)
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--force", action="store_true", help="bf16 autocast even without support")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    torch.manual_seed(0)
    base, tok = pl.models.text_classifier(2)
    ds = pl.data.load_dataset()
    loader = ds.train.loader(tok, batch_size=args.batch, shuffle=True, seed=0,
                             max_length=args.seq)
    batches = [b for b, _ in zip(loader, range(args.steps + 1))]
    bf16 = (P.Precision("bf16", "bf16", torch.bfloat16) if args.force
            else P.resolve_precision("bf16", "cpu"))
    fp32 = P.resolve_precision("fp32", "cpu")
    info = P.cpu_bf16_support()
    print(f"CPU {info['processor']}, ISA {info['isa']}, bf16 flags {info['flags'] or 'none'} "
          f"-> bf16 supported: {info['supported']}; threads {torch.get_num_threads()}")
    if bf16.note:
        print(f"note: {bf16.note}")
    runs = {(m, p.requested): (*build(m, base, batches), p) for m in methods for p in (fp32, bf16)}
    times = {k: [] for k in runs}
    for i, batch in enumerate(batches):            # round robin: every variant, then the next
        for k, (model, opt, prec) in runs.items():
            dt = step(model, opt, batch, prec, i)
            if i > 0:                              # the first round is warm-up
                times[k].append(dt)
    print(f"\n{'method':<10} {'fp32 ms':>8} {'bf16 ms':>8} {'bf16/fp32':>10}   (bf16 ran as)")
    for m in methods:
        a = statistics.median(times[(m, 'fp32')]) * 1000
        b = statistics.median(times[(m, 'bf16')]) * 1000
        print(f"{m:<10} {a:8.0f} {b:8.0f} {b / a:10.2f}   {runs[(m, 'bf16')][2].name}")


if __name__ == "__main__":
    main()
