"""Sparse selection (0.5%) vs full fine-tuning vs LoRA: step time and memory, side by side.

All three train the embedded model (all-MiniLM-L6-v2 + 2-class head) on the same shipped
batches with AdamW (weight decay 0.01). One timed step = forward, backward, optimizer step,
pl.after_step, zero_grad. Memory: pl.measure.training_state_bytes (weights + gradients +
optimizer state, exact) after the steps, and on CUDA the allocator's peak over the steps.
Selection also reports its one-off scoring time (per-example Fisher over --score-batches).

    .venv/bin/python benchmarks/bench_selection.py [--steps 8] [--fraction 0.005] [--device cpu]

Expect: selection's optimizer state ~0.5% of full FT's, its step time close to full FT's
(the dense weight gradient is still computed in backward, then gathered at the k indices),
LoRA the fastest step.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import peftlab as pl


def make_batches(tokenizer, n: int, batch_size: int):
    loader = pl.data.load_dataset().train.loader(tokenizer, batch_size=batch_size, shuffle=True,
                                                 seed=0, max_length=32)
    out = []
    while len(out) < n:
        out.extend(loader)
    return out[:n]


def run(model, batches, device, warmup: int) -> dict:
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        loss = pl.train.loss_fn(model, batch) + pl.regularization(model)
        loss.backward()
        opt.step()
        pl.after_step(model, i)
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    mem = pl.measure.training_state_bytes(model, opt)
    return {"step": statistics.median(times[warmup:]), "trainable": sum(p.numel() for p in params),
            "optimizer": mem["optimizer"], "state": mem["total"],
            "peak": pl.measure.peak_memory_bytes(device)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="training steps per method")
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--fraction", type=float, default=0.005)
    ap.add_argument("--score-batches", type=int, default=2, help="batches of 8 for the Fisher")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    device = pl.runtime.get_device(args.device)
    pl.runtime.seed_everything(0)
    base, tok = pl.models.text_classifier(num_labels=2, seed=0)
    batches = [pl.train.to_device(b, device)
               for b in make_batches(tok, args.steps + args.warmup, args.batch_size)]
    score_batches = make_batches(tok, args.score_batches, 8)

    results = {}
    m = copy.deepcopy(base)
    pl.full.apply(m, pl.full.FullConfig(mode="all"))
    results["full FT"] = run(m, batches, device, args.warmup)
    del m
    m = copy.deepcopy(base)
    pl.lora.apply(m, pl.lora.LoraConfig(r=8, alpha=16, targets=["query", "value"]))
    results["LoRA r=8 q,v"] = run(m, batches, device, args.warmup)
    del m
    m = copy.deepcopy(base).to(device)
    t0 = time.perf_counter()
    pl.selection.apply(m, pl.selection.SelectionConfig(fraction=args.fraction),
                       batches=[pl.train.to_device(b, device) for b in score_batches])
    score_time = time.perf_counter() - t0
    results[f"selection {args.fraction:.1%}"] = run(m, batches, device, args.warmup)

    h = pl.measure.human_bytes
    full = results["full FT"]
    print(f"device: {device}, threads: {pl.measure.threads()}, batch {args.batch_size} x 32 "
          f"tokens, median of {args.steps} steps")
    print(f"{'method':<18}{'trainable':>12}{'step ms':>9}{'x full':>8}{'optimizer':>11}"
          f"{'x full':>9}{'train state':>13}{'x full':>8}{'cuda peak':>11}{'x full':>8}")
    for name, r in results.items():
        peak = f"{h(r['peak']):>11}{r['peak'] / full['peak']:>8.3f}" if r["peak"] else \
            f"{'-':>11}{'-':>8}"
        print(f"{name:<18}{r['trainable']:>12,}{1000 * r['step']:>9.0f}"
              f"{r['step'] / full['step']:>8.2f}{h(r['optimizer']):>11}"
              f"{r['optimizer'] / full['optimizer']:>9.4f}{h(r['state']):>13}"
              f"{r['state'] / full['state']:>8.3f}{peak}")
    print(f"selection scoring (per-example Fisher, {8 * args.score_batches} examples, once): "
          f"{score_time:.1f} s")


if __name__ == "__main__":
    main()
