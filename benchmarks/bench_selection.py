"""Sparse selection (0.5%) vs LoRA r=8 (query, value) vs full fine-tuning: step time and memory.

All variants train the embedded model (all-MiniLM-L6-v2 + 2-class head) on the same shipped
batches with AdamW (weight decay 0.01). One timed step = forward, backward, optimizer step,
pl.after_step, zero_grad. Steps are interleaved (one step of each variant in turn, repeated),
so a burst of background load slows every variant alike; the table shows the median step after
warm-up and the spread (max / min of the kept steps), the ratios of the medians to LoRA and to
full FT, and "paired": the median over rounds of (this variant's step / LoRA's in that round).

Memory, "train state": weights + gradients + optimizer state (pl.measure.training_state_bytes,
exact, after the steps) + the activations one forward saves for backward (SavedTensorMeter,
each storage once, parameters excluded); on CUDA also the allocator's peak over the steps.
Selection also reports its one-off scoring time (per-example Fisher over --score-batches).

--dense adds "selection (dense)": the same selection through the parametrization alone (every
forward builds W + delta, backward forms the dense weight gradient), the path before issue 18.

    .venv/bin/python benchmarks/bench_selection.py [--steps 8] [--fraction 0.005] [--dense]
                                                   [--threads 1 --cpu-time]

Expect (2 cores, batch 32 x 32 tokens, --dense, measured on a quiet machine): selection 0.5%
steps at about 1.12x LoRA's (paired 1.15; 0.60x full FT), the dense path 1.47x, full FT 1.88x;
selection's train state 1.00x LoRA's (saved activations 64 MB each; the dense path saves 132 MB,
1.44x LoRA's state). On a machine busy with another job it measured 1.06x LoRA, 0.70x full FT.
On one thread by CPU time (--threads 1 --cpu-time), selection is 1.08x LoRA, the dense
path 1.54x, full FT 1.9x. Optimizer state: selection 0.5% of full FT's, LoRA 0.3%.
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


def dense_path(model) -> None:
    """Put the parametrized layers back on their base class's forward (reads W + delta)."""
    for mod in model.modules():
        if hasattr(mod, "parametrizations"):   # an own class: deepcopy shares parametrize's
            cls = type(mod)
            mod.__class__ = type(cls.__name__, cls.__bases__,
                                 {**cls.__dict__, "forward": cls.__bases__[0].forward})


class Variant:
    clock = staticmethod(time.perf_counter)

    def __init__(self, model, device):
        self.model = model.to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        self.opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
        self.times, self.i, self.device = [], 0, device

    def step(self, batch) -> None:
        t0 = self.clock()
        loss = pl.train.loss_fn(self.model, batch) + pl.regularization(self.model)
        loss.backward()
        self.opt.step()
        pl.after_step(self.model, self.i)
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(self.clock() - t0)
        self.i += 1

    def saved_bytes(self, batch) -> int:
        with pl.measure.SavedTensorMeter(self.model) as meter:
            loss = pl.train.loss_fn(self.model, batch)
        del loss
        return meter.bytes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--fraction", type=float, default=0.005)
    ap.add_argument("--score-batches", type=int, default=2, help="batches of 8 for the Fisher")
    ap.add_argument("--dense", action="store_true", help="also time the dense parametrization")
    ap.add_argument("--no-full", action="store_true", help="leave full fine-tuning out")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time steps by this thread's CPU time (with --threads 1): what a busy "
                         "machine does not inflate")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        if torch.get_num_threads() != 1:
            raise SystemExit("--cpu-time measures one thread: add --threads 1.")
        Variant.clock = staticmethod(time.thread_time)
    device = pl.runtime.get_device(args.device)
    pl.runtime.seed_everything(0)
    base, tok = pl.models.text_classifier(num_labels=2, seed=0)
    batches = [pl.train.to_device(b, device)
               for b in make_batches(tok, args.steps + args.warmup, args.batch_size)]
    score_batches = [pl.train.to_device(b, device) for b in make_batches(tok, args.score_batches, 8)]

    models = {}
    if not args.no_full:
        models["full FT"] = pl.full.apply(copy.deepcopy(base), pl.full.FullConfig(mode="all"))
    models["LoRA r=8 q,v"] = pl.lora.apply(copy.deepcopy(base), pl.lora.LoraConfig(
        r=8, alpha=16, targets=["query", "value"]))
    sel = copy.deepcopy(base).to(device)
    t0 = time.perf_counter()
    pl.selection.apply(sel, pl.selection.SelectionConfig(fraction=args.fraction),
                       batches=score_batches)
    score_time = time.perf_counter() - t0
    name = f"selection {args.fraction:.1%}"
    models[name] = sel
    if args.dense:
        models[name + " (dense)"] = copy.deepcopy(sel)
        dense_path(models[name + " (dense)"])
    runs = {n: Variant(m, device) for n, m in models.items()}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    for b in batches:                         # interleaved: a step of each variant in turn
        for r in runs.values():
            r.step(b)
    peak = pl.measure.peak_memory_bytes(device)
    rows = {}
    for n, r in runs.items():
        kept = r.times[args.warmup:]
        state = pl.measure.training_state_bytes(r.model, r.opt)
        saved = r.saved_bytes(batches[0])
        paired = [t / u for t, u in zip(kept, runs["LoRA r=8 q,v"].times[args.warmup:])]
        rows[n] = {"step": statistics.median(kept), "spread": max(kept) / min(kept),
                   "paired": statistics.median(paired),
                   "trainable": r.trainable, "optimizer": state["optimizer"],
                   "saved": saved, "state": state["total"] + saved}

    h = pl.measure.human_bytes
    lora = rows["LoRA r=8 q,v"]
    full = rows.get("full FT", lora)
    print(f"device: {device}, threads: {pl.measure.threads()}, batch {args.batch_size} x 32 "
          f"tokens, median of {args.steps} interleaved steps after {args.warmup} warm-up")
    print(f"{'method':<25}{'trainable':>11}{'step ms':>9}{'spread':>8}{'x LoRA':>8}{'paired':>8}"
          f"{'x full':>8}{'optimizer':>11}{'saved act.':>12}{'train state':>13}{'x LoRA':>8}")
    for n, r in rows.items():
        print(f"{n:<25}{r['trainable']:>11,}{1000 * r['step']:>9.0f}{r['spread']:>8.2f}"
              f"{r['step'] / lora['step']:>8.2f}{r['paired']:>8.2f}{r['step'] / full['step']:>8.2f}"
              f"{h(r['optimizer']):>11}{h(r['saved']):>12}{h(r['state']):>13}"
              f"{r['state'] / lora['state']:>8.3f}")
    s = rows[name]
    print(f"\nselection / LoRA: step time {s['step'] / lora['step']:.3f} (paired, the median of "
          f"per-round ratios: {s['paired']:.3f}; target <= 1.2), "
          f"train state incl. saved activations {s['state'] / lora['state']:.3f} (target <= 1.2)")
    if max(r["spread"] for r in rows.values()) > 1.5:
        print("note: a spread above 1.5 says the machine was busy; the ratios are still fair "
              "(interleaved), the absolute times are not")
    if peak:
        print(f"CUDA allocator peak over all variants' steps: {h(peak)}")
    print(f"selection scoring (per-example Fisher, {8 * args.score_batches} examples, once): "
          f"{score_time:.1f} s")


if __name__ == "__main__":
    main()
