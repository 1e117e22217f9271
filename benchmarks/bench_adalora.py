"""AdaLoRA step time: peftlab vs Hugging Face PEFT on the embedded model, side by side.

Both train the same base (all-MiniLM-L6-v2 + 2-class head) on the same shipped batches with
the same AdaLoRA settings. One timed step is the whole training step each library asks for:

    peftlab:  loss = CE + pl.regularization(model); backward; opt.step();
              pl.after_step(model, step); zero_grad
    HF PEFT:  loss = model(**batch).loss (orthogonality penalty added inside forward);
              backward; opt.step(); model.base_model.update_and_allocate(step); zero_grad

The schedule (tinit=2) puts every timed step in the phase where the allocator scores and
re-masks on each step (delta_t=1), the most expensive phase. Run:

    .venv/bin/python benchmarks/bench_adalora.py [--steps 12] [--targets query,value]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

import peftlab as pl


def batches(tokenizer, n: int, batch_size: int = 32):
    ds = pl.data.load_dataset()
    loader = ds.train.loader(tokenizer, batch_size=batch_size, shuffle=True, seed=0, max_length=32)
    out = []
    while len(out) < n:
        out.extend(loader)
    return out[:n]


def run(step_fn, model, data, warmup: int):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    times, alloc = [], []
    for i, batch in enumerate(data):
        t0 = time.perf_counter()
        t_alloc = step_fn(model, opt, batch, i)
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
            alloc.append(t_alloc)
    return statistics.median(times), statistics.median(alloc)


def ours_step(model, opt, batch, i):
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    loss = F.cross_entropy(model(**inputs).logits, labels) + pl.regularization(model)
    loss.backward()
    opt.step()
    t = time.perf_counter()
    pl.after_step(model, i)
    t = time.perf_counter() - t
    opt.zero_grad(set_to_none=True)
    return t


def hf_step(model, opt, batch, i):
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    t = time.perf_counter()
    model.base_model.update_and_allocate(i)
    t = time.perf_counter() - t
    opt.zero_grad(set_to_none=True)
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="timed steps per library")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--targets", default="query,value")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from peft import AdaLoraConfig as HFConfig
    from peft import get_peft_model

    targets = args.targets.split(",")
    total = args.steps + args.warmup
    settings = dict(init_r=12, target_r=4, tinit=2, tfinal=1, beta1=0.85, beta2=0.85)
    base, tok = pl.models.text_classifier(2, seed=0)
    data = batches(tok, total)

    torch.manual_seed(0)
    ours = pl.adalora.apply(copy.deepcopy(base), pl.adalora.AdaLoraConfig(
        targets=targets, total_steps=total + 1, delta_t=1, orth_reg_weight=0.5, alpha=8,
        **settings)).train()
    torch.manual_seed(0)
    hf = get_peft_model(copy.deepcopy(base), HFConfig(
        target_modules=targets, total_step=total + 1, deltaT=1, orth_reg_weight=0.5,
        lora_alpha=8, task_type="SEQ_CLS", **settings)).train()
    n_ours = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    n_hf = sum(p.numel() for p in hf.parameters() if p.requires_grad)

    # alternate the two runs twice so a busy machine hurts both alike; keep the best median
    res = {"peftlab": [], "hf-peft": []}
    for _ in range(2):
        res["peftlab"].append(run(ours_step, ours, data, args.warmup))
        res["hf-peft"].append(run(hf_step, hf, data, args.warmup))
    (o_step, o_alloc), (h_step, h_alloc) = min(res["peftlab"]), min(res["hf-peft"])
    print(f"AdaLoRA on the embedded model, targets={targets}, init_r=12 -> target_r=4, "
          f"batch 32 x 32 tokens, {args.steps} timed steps, {torch.get_num_threads()} threads")
    print(f"{'':<10}{'trainable':>12}{'step (ms)':>12}{'allocator (ms)':>16}")
    print(f"{'peftlab':<10}{n_ours:>12,}{o_step * 1e3:>12.1f}{o_alloc * 1e3:>16.2f}")
    print(f"{'hf-peft':<10}{n_hf:>12,}{h_step * 1e3:>12.1f}{h_alloc * 1e3:>16.2f}")
    print(f"ratio peftlab / hf-peft: step {o_step / h_step:.3f}, allocator "
          f"{o_alloc / h_alloc:.3f}  (< 1: ours is faster)")


if __name__ == "__main__":
    main()
