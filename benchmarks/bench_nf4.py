"""NF4 speed, side by side: our dequantize vs the matmul it feeds, bitsandbytes' CPU
dequantize, and a QLoRA training step vs our fp32 LoRA step.

    .venv/bin/python benchmarks/bench_nf4.py [--rounds 30] [--steps 12] [--threads 1]

--threads (default 1): torch's intra-op threads. On a shared machine with more runnable
processes than cores, torch's OpenMP threads wait on each other at every barrier and the
timings measure the contention, not the kernels (2 threads on a loaded 2-core machine: the
matmul 3x slower, the dequantize 25x); one thread gives ratios that hold.

Part 1, one weight of the chat model's MLP (1536 x 576, NF4, block 64, double quant) and
424 tokens: each round times, in turn, our dequantize (peftlab/qlora/nf4.py: one 256-entry
byte -> pair lookup and one multiply), the fp32 matmul (424 x 576) @ (576 x 1536) it feeds,
and bitsandbytes' dequantize_4bit on the CPU (when installed). Medians over rounds, and the
ratios to the matmul (targets: ours <= 0.5x).

Part 2, a Llama with the chat model's widths (hidden 576, 9 heads / 3 kv heads, MLP 1536;
4 layers, a 2,048-token vocabulary) on batches of 4 x 106 = 424 tokens: AdamW steps of
pl.lora and pl.qlora (r=8, all-linear, the same batches), interleaved step by step; the
median step time and the paired ratio qlora / lora (target <= 1.5x). Ratios from one run
on one machine: a busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import peftlab as pl
from peftlab.qlora import nf4


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def dequantize_vs_matmul(rounds: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(1536, 576) * 0.02
    x = torch.randn(424, 576)
    q = nf4.quantize(w, 64, double_quant=True)
    fns = {"ours dequantize": lambda: nf4.dequantize_weight(q),
           "matmul 424x576 @ 576x1536": lambda: x @ w.T}
    try:
        import bitsandbytes.functional as bnb
        p, st = bnb.quantize_4bit(w, quant_type="nf4", blocksize=64, compress_statistics=True)
        fns["bitsandbytes dequantize_4bit"] = lambda: bnb.dequantize_4bit(p, st,
                                                                          quant_type="nf4")
    except ImportError:
        pass
    times = {k: [] for k in fns}
    for r in range(rounds + 3):                      # interleaved; 3 warm-up rounds
        for k, fn in fns.items():
            t = timed(fn)
            if r >= 3:
                times[k].append(t)
    mm = statistics.median(times["matmul 424x576 @ 576x1536"])
    print(f"part 1: NF4 dequantize vs the matmul it feeds ({rounds} rounds, "
          f"{torch.get_num_threads()} threads)")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"  {k:<30} {med * 1e3:8.3f} ms   {med / mm:5.2f}x the matmul")


def llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=2048, hidden_size=576, intermediate_size=1536, num_hidden_layers=4,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=256,
        tie_word_embeddings=True)).train()


def training_steps(steps: int) -> None:
    base = llama()
    models = {"lora": pl.lora.apply(copy.deepcopy(base), pl.lora.LoraConfig(
                  r=8, alpha=16, targets="all-linear")),
              "qlora": pl.qlora.apply(copy.deepcopy(base), pl.qlora.QLoraConfig(
                  r=8, alpha=16, targets="all-linear"))}
    opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
            for k, m in models.items()}
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(3, 2048, (4, 106), generator=g) for _ in range(steps + 2)]
    times = {k: [] for k in models}
    for i, ids in enumerate(batches):
        for k, m in models.items():
            def one(m=m, opt=opts[k], ids=ids):
                m(input_ids=ids, labels=ids).loss.backward()
                opt.step()
                opt.zero_grad()
            t = timed(one)
            if i >= 2:
                times[k].append(t)
    ratio = statistics.median(q / lo for q, lo in zip(times["qlora"], times["lora"]))
    print(f"part 2: training step, Llama 4 x 576 (MLP 1536), 424 tokens, r=8 all-linear "
          f"({steps} steps)")
    for k, ts in times.items():
        print(f"  {k:<8} {statistics.median(ts) * 1e3:8.1f} ms / step")
    print(f"  qlora / lora (paired median): {ratio:.2f}x")
    parts = pl.qlora.resident_bytes(models["qlora"])
    q = pl.qlora.quantized_layers(models["qlora"]).values()
    fp32 = sum(4 * m.in_features * m.out_features for m in q)
    print(f"  quantized layers: {parts['codes'] + parts['constants']:,} bytes = "
          f"{(parts['codes'] + parts['constants']) / fp32:.4f} of their fp32 {fp32:,}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dequantize_vs_matmul(a.rounds)
    training_steps(a.steps)


if __name__ == "__main__":
    main()
