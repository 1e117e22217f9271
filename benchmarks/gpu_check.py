"""The CUDA paths the test suite cannot reach on a CPU machine, in one short script.

    python benchmarks/gpu_check.py            # one line per check: PASS / FAIL / SKIP
    python benchmarks/gpu_check.py --steps 8  # a few more training steps per check

Checks (tiny models built from configs, no downloads; well under 3 minutes on one GPU):
  * every method trains under fit(precision="bf16") and fit(precision="fp16") (autocast; fp16
    with a GradScaler): finite losses, adapters and their gradients in fp32;
  * an fp16 base model with LoRA under fp16 autocast and loss scaling (fp32 adapters: the
    scaler accepts their gradients) and a bf16 base with every adapter method (outputs bf16);
  * AdaLoRA under fp16 with one overflowing step: the scaler skips it, fit skips after_step,
    the importance scores stay finite;
  * prompt tuning and prefix tuning: static-cache generation on the GPU equals uncached;
  * CUDA memory measurement (FitResult.memory: cuda_peak, peak_kind) and the
    TrainingMonitor widget's CUDA readout;
  * DDP with the nccl backend in one process (pl.train.distributed.init_distributed): one
    step through DistributedDataParallel equals the same step without it.
On a machine without CUDA the CUDA-only checks print SKIP and the others run on the CPU.
Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import traceback

import torch
import torch.nn.functional as F

import peftlab as pl

CUDA = torch.cuda.is_available()
RESULTS: list[tuple[str, str]] = []


def check(name: str, needs_cuda: bool = False):
    """Decorator: run the check, print one line, record the outcome."""
    def wrap(fn):
        if needs_cuda and not CUDA:
            print(f"SKIP  {name}: no CUDA device", flush=True)
            RESULTS.append((name, "SKIP"))
            return fn
        t0 = time.perf_counter()
        try:
            detail = fn() or ""
            print(f"PASS  {name} ({time.perf_counter() - t0:.1f}s) {detail}", flush=True)
            RESULTS.append((name, "PASS"))
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            print(f"FAIL  {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(limit=3)
            RESULTS.append((name, "FAIL"))
        return fn
    return wrap


# --- tiny models and data --------------------------------------------------------------------

def bert(dtype=torch.float32):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=2)).to(dtype)


def lm(arch: str):
    import transformers as tf

    torch.manual_seed(0)
    if arch == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                                                n_positions=64, bos_token_id=1, eos_token_id=2))
    return tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
        eos_token_id=2))


def data(n: int, bs: int = 8):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(3, 100, (bs, 12), generator=g),
             "attention_mask": torch.ones(bs, 12, dtype=torch.long),
             "labels": torch.randint(0, 2, (bs,), generator=g)} for _ in range(n)]


def apply(method: str, model, steps: int):
    if method == "lora":
        pl.lora.apply(model, pl.lora.LoraConfig(r=4, targets=["query", "value"]))
    elif method == "adalora":
        pl.adalora.apply(model, pl.adalora.AdaLoraConfig(init_r=4, target_r=2,
                                                         targets=["query", "value"],
                                                         total_steps=steps, tfinal=1))
    elif method == "selection":
        pl.selection.apply(model, pl.selection.SelectionConfig(fraction=0.05),
                           batches=[{k: v.to(next(model.parameters()).device)
                                     for k, v in b.items()} for b in data(2)])
    elif method == "prefix":
        pl.prefix.apply(model, pl.prefix.PrefixConfig(num_virtual_tokens=4))
    elif method == "prompt":
        pl.prompt.apply(model, pl.prompt.PromptConfig(num_virtual_tokens=4, init="normal"))
    else:
        pl.full.apply(model, pl.full.FullConfig(mode=method.split("-")[1]))
    return model


METHODS = ["lora", "adalora", "selection", "prefix", "prompt", "full-bitfit", "full-all"]
ADAPTER = {"lora": "lora_", "adalora": "lora_", "selection": "parametrizations",
           "prefix": "prefix_encoder", "prompt": "prompt_encoder"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    steps = parser.parse_args().steps
    dev = "cuda" if CUDA else "cpu"
    print(f"torch {torch.__version__}, CUDA {'yes: ' + torch.cuda.get_device_name(0) if CUDA else 'no'}"
          f", bf16 on CUDA: {CUDA and torch.cuda.is_bf16_supported()}", flush=True)

    for precision in ("bf16", "fp16"):
        for method in METHODS:
            @check(f"fit precision={precision} {method}", needs_cuda=True)
            def _fit(method=method, precision=precision):
                if precision == "bf16" and not torch.cuda.is_bf16_supported():
                    return "this GPU has no bf16: fit falls back (see its note)"
                model = apply(method, bert().to(dev), steps)
                res = pl.train.fit(model, data(steps), data(1), precision=precision, lr=1e-3,
                                   progress=False, device=dev)
                losses = [h["loss"] for h in res.history]
                assert len(losses) == steps and all(map(torch.isfinite, torch.tensor(losses)))
                odd = [n for n, p in model.named_parameters()
                       if p.requires_grad and p.dtype != torch.float32]
                assert not odd, f"non-fp32 trainable parameters: {odd[:3]}"
                return f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, precision {res.precision}"

    @check("fp16 base + LoRA under fp16 autocast with a GradScaler", needs_cuda=True)
    def _fp16_base():
        model = pl.lora.apply(bert(torch.float16).to(dev), pl.lora.LoraConfig(
            r=4, targets=["query", "value"], modules_to_save=[]))
        scaler = torch.amp.GradScaler("cuda")
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        for b in data(steps):
            b = {k: v.to(dev) for k, v in b.items()}
            with torch.autocast("cuda", dtype=torch.float16):
                loss = F.cross_entropy(model(**{k: v for k, v in b.items() if k != "labels"})
                                       .logits.float(), b["labels"])
            scaler.scale(loss).backward()
            scaler.step(opt)      # raised "Attempting to unscale FP16 gradients" before
            scaler.update()
            opt.zero_grad()
        return f"final loss {loss.item():.3f}"

    for method in ["lora", "adalora", "selection", "prefix", "prompt"]:
        @check(f"bf16 base + {method}: fp32 adapter, bf16 outputs")
        def _bf16_base(method=method):
            model = apply(method, bert(torch.bfloat16).to(dev), steps)
            trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
            ours = {n: p for n, p in trainable.items() if ADAPTER[method] in n}
            assert ours and all(p.dtype == torch.float32 for p in ours.values()), \
                {n: p.dtype for n, p in ours.items()}
            b = {k: v.to(dev) for k, v in data(1)[0].items()}
            out = model(**{k: v for k, v in b.items() if k != "labels"}).logits
            assert out.dtype == torch.bfloat16, out.dtype
            F.cross_entropy(out.float(), b["labels"]).backward()
            assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.values())

    @check("AdaLoRA fp16: an overflowing step is skipped, scores stay finite", needs_cuda=True)
    def _adalora_overflow():
        model = apply("adalora", bert().to(dev), steps + 2)
        calls = []

        def loss(m, batch):
            calls.append(1)
            out = pl.train.loss_fn(m, batch)
            return out * float("inf") if len(calls) == 2 else out
        pl.train.fit(model, data(steps + 2), precision="fp16", loss=loss, progress=False,
                     device=dev)
        layers = pl.adalora.layers(model)
        hist = torch.stack([m.rank_history for m in layers.values()])
        assert (hist[:, 1] == -1).all(), "after_step ran on the skipped step"
        assert all(torch.isfinite(getattr(m, k)).all() for m in layers.values()
                   for k in ("ipt_P", "unc_P", "ipt_lambda", "unc_lambda", "ipt_Q", "unc_Q"))
        return f"ranks {sorted(pl.adalora.rank_pattern(model).values())}"

    for arch in ("gpt2", "llama"):
        for method in ("prompt", "prefix"):
            @check(f"{method} {arch}: static-cache generation equals uncached", needs_cuda=True)
            def _static(arch=arch, method=method):
                model = apply(method, lm(arch).to(dev).eval(), steps)
                ids = torch.tensor([[3, 4, 5, 6], [0, 0, 7, 8]], device=dev)
                kw = {"attention_mask": (ids != 0).long(), "max_new_tokens": 6,
                      "do_sample": False, "pad_token_id": 0}
                want = model.generate(ids, use_cache=False, **kw)
                got = model.generate(ids, cache_implementation="static", **kw)
                assert torch.equal(got, want), (got, want)

    @check("CUDA memory measurement and the TrainingMonitor's CUDA readout", needs_cuda=True)
    def _memory():
        model = apply("lora", bert().to(dev), steps)
        monitor = pl.widgets.TrainingMonitor()
        res = pl.train.fit(model, data(steps), precision="bf16" if torch.cuda.is_bf16_supported()
                           else "fp16", progress=False, callbacks=[monitor], device=dev)
        monitor.wait()
        mem = res.memory
        assert mem["cuda_peak"] and mem["peak"] == mem["cuda_peak"] and "CUDA" in mem["peak_kind"]
        assert "CUDA peak" in monitor.summary(), monitor.summary()
        return f"cuda_peak {pl.measure.human_bytes(mem['cuda_peak'])}; {monitor.summary()}"

    @check("DDP with nccl in one process equals a plain step", needs_cuda=True)
    def _ddp():
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP

        from peftlab.train.distributed import init_distributed

        os.environ.update(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29533"))
        device = init_distributed(torch.device("cuda"))
        try:
            assert dist.get_backend() == "nccl"
            a = apply("lora", bert().to(device), steps)
            b = copy.deepcopy(a)
            net = DDP(b, device_ids=[device.index])
            for model, runner in ((a, a), (b, net)):
                opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
                batch = {k: v.to(device) for k, v in data(1)[0].items()}
                pl.train.loss_fn(runner, batch).backward()
                opt.step()
            diff = max((pa - pb).abs().max().item() for pa, pb in
                       zip(a.parameters(), b.parameters()))
            assert diff < 1e-6, diff
            return f"max difference {diff:.1e}"
        finally:
            dist.destroy_process_group()

    failed = [n for n, r in RESULTS if r == "FAIL"]
    print(f"{sum(r == 'PASS' for _, r in RESULTS)} passed, {len(failed)} failed, "
          f"{sum(r == 'SKIP' for _, r in RESULTS)} skipped", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
