"""Training step time and memory: peftlab LoRA vs Hugging Face peft LoRA vs full fine-tuning.

    .venv/bin/python benchmarks/bench_lora.py [--steps 12] [--batch 32] [--seq 32] [--r 8]

One run, the embedded model (all-MiniLM-L6-v2 + 2-class head), the same batches and the same
config (r=8, alpha=16, query+value, classifier trained) for both LoRAs. Steps of the three
variants are interleaved (ours, peft, full, ours, ...) so a busy machine slows all of them
alike; the table shows the median step (forward + backward + AdamW step) after warm-up, and
the last line also the paired ratio (median over rounds of ours / peft within the round).
Ours is faster mainly by its fused LoRA step (peftlab/core/lowrank.py): three matmuls forward
and five backward, no elementwise pass for the scale, the add and the input-gradient sum.

Memory, two views:
  state    exact bytes of weights + gradients + AdamW moments (peftlab.measure), after a step
  peak     CUDA: the allocator's peak during one step (activations included);
           CPU: the peak resident memory of a fresh process that trains that variant alone
           (so imports and the model itself are in it: compare the differences)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time

import torch

import peftlab as pl
from peftlab import measure

VARIANTS = ("peftlab LoRA", "peft LoRA", "full fine-tuning")


def build(name: str, base, r: int):
    model = copy.deepcopy(base)
    if name == "peftlab LoRA":
        pl.lora.apply(model, pl.lora.LoraConfig(r=r, alpha=2 * r, targets=["query", "value"],
                                                modules_to_save=["classifier"]))
    elif name == "peft LoRA":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r,
                                                 target_modules=["query", "value"],
                                                 modules_to_save=["classifier"]))
    else:
        pl.full.apply(model, pl.full.FullConfig(mode="all"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, opt


def batches(tokenizer, n: int, batch: int, seq: int):
    ds = pl.data.load_dataset()
    loader = ds.train.loader(tokenizer, batch_size=batch, shuffle=True, seed=0, max_length=seq)
    out = []
    while len(out) < n:
        for b in loader:
            out.append(b)
            if len(out) == n:
                break
    return out


def step(model, opt, batch, device) -> float:
    t0 = time.perf_counter()
    loss = pl.train.loss_fn(model, pl.train.to_device(batch, device))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def run_alone(name: str, args) -> None:
    """Child process: train one variant a few steps, print its peak RSS as JSON."""
    device = pl.runtime.get_device(args.device)
    base, tok = pl.models.text_classifier(2, seed=0)
    data = batches(tok, 2, args.batch, args.seq)
    model, opt = build(name, base, args.r)
    del base
    model.to(device)
    for b in data:
        step(model, opt, b, device)
    print(json.dumps({"peak_rss": measure.peak_rss_bytes()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--alone", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--no-rss", action="store_true", help="skip the per-process peak RSS runs")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.alone:
        return run_alone(args.alone, args)

    device = pl.runtime.get_device(args.device)
    pl.runtime.seed_everything(0)
    base, tok = pl.models.text_classifier(2, seed=0)
    data = batches(tok, args.steps + args.warmup, args.batch, args.seq)
    runs = {v: build(v, base, args.r) for v in VARIANTS}
    times = {v: [] for v in VARIANTS}
    cuda_peak = {v: 0 for v in VARIANTS}
    for m, _ in runs.values():
        m.to(device)
    for i, b in enumerate(data):
        for v, (m, opt) in runs.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            dt = step(m, opt, b, device)
            if device.type == "cuda":
                cuda_peak[v] = max(cuda_peak[v], torch.cuda.max_memory_allocated(device) - before)
            if i >= args.warmup:
                times[v].append(dt)
    state = {v: measure.training_state_bytes(m, opt)["total"] for v, (m, opt) in runs.items()}
    trainable = {v: measure.count_parameters(m)[0] for v, (m, _) in runs.items()}
    rss = {}
    if not args.no_rss and device.type != "cuda":
        for v in VARIANTS:
            cmd = [sys.executable, __file__, "--alone", v, "--batch", str(args.batch),
                   "--seq", str(args.seq), "--r", str(args.r)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rss[v] = json.loads(out.strip().splitlines()[-1])["peak_rss"]

    med = {v: statistics.median(t) for v, t in times.items()}
    ref = "peft LoRA"
    print(f"device={device}, threads={torch.get_num_threads()}, batch={args.batch}, "
          f"seq={args.seq}, r={args.r}, {args.steps} timed steps after {args.warmup} warm-up\n")
    peak_name = "step peak (CUDA)" if device.type == "cuda" else "process peak RSS"
    print(f"{'variant':<18}{'trainable':>12}{'step ms':>10}{'x peft':>8}{'state':>11}"
          f"{'x peft':>8}{peak_name:>18}{'x peft':>8}")
    for v in VARIANTS:
        peak = cuda_peak[v] if device.type == "cuda" else rss.get(v)
        peak_ref = cuda_peak[ref] if device.type == "cuda" else rss.get(ref)
        peak_s = measure.human_bytes(peak) if peak else "-"
        peak_x = f"{peak / peak_ref:.2f}" if peak and peak_ref else "-"
        print(f"{v:<18}{trainable[v]:>12,}{1000 * med[v]:>10.1f}{med[v] / med[ref]:>8.2f}"
              f"{measure.human_bytes(state[v]):>11}{state[v] / state[ref]:>8.2f}"
              f"{peak_s:>18}{peak_x:>8}")
    paired = statistics.median(a / b for a, b in zip(times["peftlab LoRA"], times[ref]))
    spread = max(max(t) / min(t) for t in times.values())
    print(f"\nours / peft step time: {med['peftlab LoRA'] / med[ref]:.3f} (paired: the median of "
          f"per-round ratios, {paired:.3f}; < 1: ours faster); "
          f"full / ours: {med['full fine-tuning'] / med['peftlab LoRA']:.2f}")
    if spread > 1.5:
        print(f"note: steps of one variant vary up to {spread:.1f}x: the machine was busy; the "
              f"ratios are still fair (interleaved), the absolute times are not")


if __name__ == "__main__":
    main()
