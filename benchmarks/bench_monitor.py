"""How much does the TrainingMonitor slow training down?

The same short fit of the embedded model (seeded, same data), with and without the monitor,
interleaved (A B A B ...) so machine noise hits both alike; we compare the median wall time
of the whole loop (FitResult.train_time: forward, backward, optimizer, callbacks).

    python benchmarks/bench_monitor.py                 # LoRA and full fine-tuning, 30 steps
    python benchmarks/bench_monitor.py --steps 60 --repeats 3 --methods lora

The monitor redraws only within its time budget (2% by default) and measures per-layer
gradient and update norms every step below 2M trainable parameters (LoRA), every 10th step
above (full fine-tuning), so the ratio should stay within a few percent.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

import peftlab as pl


def build(method: str, base):
    model = copy.deepcopy(base)
    pl.runtime.seed_everything(0)            # the same LoRA init in every run
    if method == "lora":
        pl.lora.apply(model, pl.lora.LoraConfig(r=8, alpha=16, targets=["query", "value"]))
    elif method == "full":
        pl.full.apply(model, pl.full.FullConfig(mode="all"))
    else:
        raise ValueError(f"unknown method {method!r}: use lora or full")
    return model


def run(method, base, data, steps, monitor):
    train, tok, batch_size = data
    model = build(method, base)
    callbacks = [pl.widgets.TrainingMonitor()] if monitor else []
    res = pl.train.fit(model, train, None, tokenizer=tok, batch_size=batch_size, max_length=32,
                       max_steps=steps, epochs=100, lr=1e-3, progress=False, seed=0,
                       callbacks=callbacks)     # fit builds a fresh, seeded loader each run
    return res, (callbacks[0] if callbacks else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--methods", nargs="+", default=["lora", "full"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base, tok = pl.models.text_classifier(num_labels=2, seed=0)
    ds = pl.data.load_dataset()
    loader = (ds.train, tok, args.batch_size)
    print(f"device {pl.runtime.get_device()}, torch threads {torch.get_num_threads()}, "
          f"{args.steps} steps x batch {args.batch_size}, {args.repeats} interleaved repeats")
    print(f"{'method':<6} {'trainable':>11} {'without (s)':>12} {'with (s)':>10} {'ratio':>7} "
          f"{'monitor self':>13} {'draws':>6} {'s/draw':>7} {'norm every':>11}")
    for method in args.methods:
        run(method, base, loader, 3, False)                       # warm-up: caches, allocator
        plain, watched, mons = [], [], []
        for _ in range(args.repeats):
            res, _ = run(method, base, loader, args.steps, False)
            plain.append(res.train_time)
            res_m, mon = run(method, base, loader, args.steps, True)
            watched.append(res_m.train_time)
            mon.wait()                                            # the final background draw
            mons.append(mon)
            assert mon.steps == list(range(1, args.steps + 1))    # every step arrived
            assert [h["loss"] for h in res.history] == mon.losses  # and the same training
        a, b = statistics.median(plain), statistics.median(watched)
        self_frac = statistics.median(m.overhead for m in mons) / b
        print(f"{method:<6} {res.trainable:>11,} {a:>12.2f} {b:>10.2f} {b / a:>7.3f} "
              f"{100 * self_frac:>12.1f}% {mons[-1].draws:>6} "
              f"{mons[-1].draw_time / max(1, mons[-1].draws):>7.2f} {mons[-1].norm_every:>11}")
    print("ratio: median wall time of the loop with / without the monitor (machine noise "
          "included);\nmonitor self: seconds spent inside its callbacks / loop time (the final "
          "draw runs in a background thread after fit and is not in either).")


if __name__ == "__main__":
    main()
