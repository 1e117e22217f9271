"""The chat model's training step and decoding speed, interleaved in one run.

    .venv/bin/python benchmarks/bench_chat.py [--rounds 6] [--batch 8] [--tokens 30] [--tiny]
                                              [--threads N]

On the embedded SmolLM2-135M-Instruct (or --tiny: the test suite's tiny Llama), LoRA r=8 on
every linear layer, one batch of 8 short conversations (about 53 tokens each, answers of a few
tokens, as in issue 27):

  step (training: forward + backward + AdamW step), three variants on the same batch:
    ours, answer-only logits   our LoRA, fit's batch: logits only for the last K positions
    ours, full logits          our LoRA, logits everywhere, the same loss
    HF PEFT, standard step     peft's LoRA, model(..., labels=...) (transformers' shifted loss)
  decode (greedy, pl.generate's loop, batch 1, --tokens new tokens), ms per token:
    base | LoRA unmerged | LoRA merged

Variants run in turn within each round (a busy machine slows all alike); the table gives the
median and the paired ratio (median over rounds of variant / reference within the round).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

import peftlab as pl
from peftlab.chat import ChatSplit, ChatTemplate, decode

WORDS = ["Paris", "Oslo", "Lima", "Cairo", "Tokyo", "Rome", "Quito", "Dakar"]


def conversations():
    return [[{"role": "user", "content": f"Extract the city from this sentence and answer with "
                                         f"its name only: Last spring I moved to {w} for work."},
             {"role": "assistant", "content": w}] for w in WORDS]


def load(tiny: bool):
    if tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from chat_fixtures import tiny_chat_model
        return tiny_chat_model()
    return pl.models.chat_model()


def lora_ours(base):
    m = copy.deepcopy(base)
    pl.lora.apply(m, pl.lora.LoraConfig(r=8, alpha=16, targets="all-linear"))
    return m


def lora_peft(base):
    from peft import LoraConfig, get_peft_model
    return get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16,
                                                          target_modules="all-linear"))


def step_fn(model, batch, hf: bool):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step():
        loss = model(**batch).loss if hf else pl.train.loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def table(title, times, ref, unit=1.0, label="s"):
    print(f"\n{title}")
    for name, ts in times.items():
        ratios = [t / r for t, r in zip(ts, times[ref])]
        print(f"  {name:<28} median {statistics.median(ts) * unit:8.3f} {label}   "
              f"paired ratio vs {ref}: {statistics.median(ratios):.3f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=30)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (1 times the code, not the crowd, on a busy machine)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base, tok = load(args.tiny)
    split = ChatSplit(conversations()[:args.batch], "bench")
    answer_only = next(iter(split.loader(tok, batch_size=args.batch)))
    full = next(iter(split.loader(tok, batch_size=args.batch, answer_only_logits=False)))
    # the HF standard step: labels = the input ids where supervised, transformers shifts them
    ids = full["input_ids"]
    hf_labels = torch.full_like(ids, -100)
    hf_labels[:, 1:] = full["labels"][:, :-1]
    hf_batch = {"input_ids": ids, "attention_mask": full["attention_mask"],
                "position_ids": full["position_ids"], "labels": hf_labels}
    print(f"batch {tuple(ids.shape)}, answer-only logits for the last "
          f"{answer_only['logits_to_keep']} of {ids.shape[1]} positions")
    ours, peft_model = lora_ours(base), lora_peft(base)
    steps = {"ours, answer-only logits": step_fn(ours, answer_only, False),
             "ours, full logits": step_fn(copy.deepcopy(ours), full, False),
             "HF PEFT, standard step": step_fn(peft_model, hf_batch, True)}
    losses = {}
    for fn in steps.values():
        fn()                                                  # warm-up
    times = {k: [] for k in steps}
    for _ in range(args.rounds):
        for name, fn in steps.items():
            dt, losses[name] = timed(fn)
            times[name].append(dt)
    table("training step (forward + backward + AdamW)", times, "HF PEFT, standard step")

    # decoding: base, unmerged LoRA (B random so it does something), merged
    lora = lora_ours(base)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    merged = pl.lora.merge(copy.deepcopy(lora))
    prompt = [ChatTemplate(tok).prompt_ids(conversations()[0][:1])]
    models = {"base": base, "LoRA unmerged": lora, "LoRA merged": merged}
    for m in models.values():
        m.eval()
        decode(m, prompt, pad=tok.pad_token_id, stop=set(), max_new_tokens=4)
    dtimes = {k: [] for k in models}
    for _ in range(args.rounds):
        for name, m in models.items():
            dt, _ = timed(lambda m=m: decode(m, prompt, pad=tok.pad_token_id, stop=set(),
                                             max_new_tokens=args.tokens))
            dtimes[name].append(dt / args.tokens)
    table(f"greedy decoding, batch 1, {args.tokens} new tokens (per token, incl. prefill)",
          dtimes, "base", unit=1000, label="ms")


if __name__ == "__main__":
    main()
