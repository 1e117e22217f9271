"""fit(): the one training loop every method uses.

It is the plain PyTorch loop, written once, with the chores done:

    for batch in train:
        loss = loss_fn(model, batch) + pl.regularization(model)   # AdaLoRA's penalty, else 0
        loss.backward()
        clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step(); scheduler.step()
        pl.after_step(model, step)     # AdaLoRA scores importance and re-allocates ranks
        optimizer.zero_grad()

plus device placement, seeding, a tqdm progress bar, evaluation per epoch, optional mixed
precision (train/precision.py: bf16 on CPUs that have it, bf16/fp16 on GPU), callbacks (what
the TrainingMonitor widget listens to), measurement (peftlab/measure.py) and multi-process data
parallelism under torchrun.
No method gets a private code path: a hand-written loop with the same calls trains the same.

Batches: a dict of tensors with a "labels" entry (text; the model returns logits or an
object with .logits), or a tuple (inputs, labels) (vision). A TextSplit from pl.data plus
`tokenizer=` is turned into a DataLoader for you.

More than one process (torchrun)
--------------------------------
Launched as `torchrun --nproc_per_node=N my_script.py`, fit() finds WORLD_SIZE > 1 in the
environment, joins the process group (gloo on CPU, nccl on CUDA, one GPU per process) and
wraps the model in DistributedDataParallel. `batch_size` stays the *global* batch: every
process reads the same batches in the same order and computes the loss on its 1/N slice of
each; DDP averages the gradients, weighted so the result is the gradient of the whole
batch's mean loss. So N processes take exactly the steps one process would take (up to
float rounding and dropout randomness), only faster. Only trainable parameters are
synchronised, so an adapter run sends adapter-sized gradients. Save from one process:

    result = pl.train.fit(model, ds.train, ds.validation, tokenizer=tok)
    if pl.train.is_main_process():
        pl.save_adapter(model, "adapter")
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from peftlab import measure
from peftlab.core.batches import loss_fn, to_device
from peftlab.core.registry import after_step, check_total_steps, regularization
from peftlab.runtime import get_device, seed_everything
from peftlab.train.batches import as_loader, check_labels, evaluate
from peftlab.train.distributed import init_distributed, shard, world
from peftlab.train import checkpoint
from peftlab.train.precision import Precision, announce, resolve_precision
from peftlab.train.results import FitResult, FitState

def _call(callbacks, hook: str, state: FitState) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(state)
        elif hook == "on_step_end" and callable(cb):
            cb(state)


def _schedule(name: str, total: int, warmup: int) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up, then constant / linear decay / cosine decay."""
    if name == "constant":
        return lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
    if name == "linear":
        return lambda s: ((s + 1) / warmup if s < warmup
                          else max(0.0, (total - s) / max(1, total - warmup)))
    if name == "cosine":
        return lambda s: ((s + 1) / warmup if s < warmup else
                          0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    raise ValueError(f"Unknown lr schedule {name!r}: use 'linear', 'cosine' or 'constant'.")


def _checkpointing(model: nn.Module, on: bool) -> bool:
    """Switch a transformers model's activation checkpointing on or off (non-reentrant, so
    frozen inputs need no requires_grad); returns whether it was on. transformers >= 5.2x
    calls it activation_checkpointing_*, older ones gradient_checkpointing_*."""
    new = hasattr(model, "activation_checkpointing_enable")
    prefix = "activation_checkpointing" if new else "gradient_checkpointing"
    was = bool(getattr(model, "is_" + prefix, False))
    if on:       # both take the checkpoint kwargs as their first argument
        getattr(model, prefix + "_enable")({"use_reentrant": False})
    else:
        getattr(model, prefix + "_disable")()
    return was


def _make_optimizer(optimizer, params, lr, weight_decay):
    if not isinstance(optimizer, str):
        return optimizer(params)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer {optimizer!r}: 'adamw', 'sgd' or a callable.")


# --- the loop ------------------------------------------------------------------------------

@dataclass
class _Run:
    """Everything one fit() call sets up: the pieces the step function works with."""

    model: nn.Module
    net: nn.Module                 # the model, or its DistributedDataParallel wrapper
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    loss: Callable
    device: torch.device
    precision: Precision
    max_grad_norm: float | None
    rank: int = 0
    world_size: int = 1


def _check_args(epochs, max_steps, lr, batch_size, schedule) -> None:
    if not (isinstance(epochs, (int, float)) and epochs > 0):
        raise ValueError(f"epochs must be > 0, got {epochs!r}")
    if max_steps is not None and max_steps <= 0:
        raise ValueError(f"max_steps must be > 0, got {max_steps!r}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    _schedule(schedule, 1, 0)  # validates the name before anything changes


def _train_step(run: _Run, batch, step: int) -> tuple[torch.Tensor, int]:
    """One optimizer step: forward, loss (+ regularization), backward, clip, step,
    after_step. Returns (the batch's task loss, activation bytes counted on step 0 or 0)."""
    model, opt = run.model, run.optimizer
    batch = to_device(batch, run.device)
    weight = 1.0
    if run.world_size > 1:
        batch, weight = shard(batch, run.rank, run.world_size)
    activations = 0
    # the first step also counts the activations autograd keeps for backward
    meter = measure.SavedTensorMeter(model) if step == 0 else None
    with run.precision.autocast(run.device):     # the loss itself is computed in float32
        if meter is not None:
            with meter:
                task_loss = run.loss(run.net, batch)
            activations = meter.bytes
        else:
            task_loss = run.loss(run.net, batch)
        loss_val = task_loss * weight + regularization(model)
    run.scaler.scale(loss_val).backward()
    if run.max_grad_norm:
        run.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(run.params, run.max_grad_norm)
    scale = run.scaler.get_scale() if run.scaler.is_enabled() else None
    run.scaler.step(opt)
    run.scaler.update()
    run.scheduler.step()
    # a loss scaler that found inf/NaN gradients skipped the step (and lowered its scale):
    # then there is no step for after_step (AdaLoRA's importance scores) to look at
    if scale is None or run.scaler.get_scale() >= scale:
        after_step(model, step)   # step: 0-based index of the step just taken
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    shown = task_loss.detach().float()
    if run.world_size > 1:    # the whole batch's mean loss, the same on every process
        shown = shown * weight / run.world_size
        torch.distributed.all_reduce(shown)
    return shown, activations


def _memory(run: _Run, activations: int) -> dict:
    memory = measure.training_state_bytes(run.model, run.optimizer)
    memory["activations"] = activations
    memory["rss_peak"] = measure.peak_rss_bytes()
    if run.device.type == "cuda":
        memory["cuda_peak"] = memory["peak"] = measure.peak_memory_bytes(run.device)
        memory["peak_kind"] = "CUDA allocator peak (torch.cuda.max_memory_allocated)"
    else:
        memory["peak"] = memory["total"] + activations
        memory["peak_kind"] = ("weights + gradients + optimizer state + activations saved for "
                               "backward (exact count, see peftlab.measure)")
    return memory


def fit(model: nn.Module, train, eval=None, *, epochs: float = 1, lr: float = 1e-3,
        batch_size: int = 32, tokenizer=None, max_length: int | str | None = None,
        optimizer: str | Callable = "adamw", weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0, schedule: str = "linear", warmup: float = 0.06,
        max_steps: int | None = None, device=None, seed: int = 0, amp: bool = False,
        precision: str = "fp32", loss: Callable | None = None, callbacks: Iterable = (),
        progress: bool = True, eval_every_epoch: bool = True,
        checkpoint_every: int | None = None, checkpoint_dir: str | Path | None = None,
        resume_from: str | Path | None = None, gradient_checkpointing: bool = False,
        generate_eval: int | None = 64) -> FitResult:
    """Train the model's trainable parameters on `train`; evaluate on `eval` each epoch.

    train / eval: DataLoaders (or any re-iterable of batches), or pl.data TextSplits /
    ChatSplits with `tokenizer=` (batch_size, max_length apply; max_length None: 32 tokens for
    texts, the longest example for conversations). A causal LM learns its answers only, with
    logits computed only there (peftlab/data/chat.py); eval gives the held-out loss per answer
    token each epoch and, at the end, exact match of greedy answers to the first
    `generate_eval` eval conversations (evals[-1]["exact_match"]; None or 0: skip).
    gradient_checkpointing: recompute each layer's activations in backward instead of keeping
    them (transformers models; result.memory["activations"] shows the saving). epochs may be
    fractional; max_steps caps the total. optimizer: "adamw", "sgd", or a callable params -> optimizer. warmup: fraction of
    steps (a float) or a step count (an int). schedule: "linear", "cosine" or "constant".
    loss: loss(model, batch) -> scalar; default cross-entropy (train.loss_fn).
    precision: "fp32" (default), "bf16", "fp16" (CUDA) or "auto" (see train/precision.py:
    bf16 autocast where the hardware has it; master weights, adapters, optimizer state and
    the loss stay float32); amp=True is a synonym of "auto". callbacks: objects with any of on_train_begin,
    on_step_end, on_epoch_end, on_train_end(state), or plain callables (called per step).
    seed: seeds Python, NumPy and torch's generators and the shuffling; fit switches no other
    global setting (for deterministic kernels call pl.runtime.seed_everything yourself).
    Under torchrun, trains data-parallel (see the module docstring). TextSplits with label
    names: the model's head must match (a clear error if not) and model.config.id2label gets
    the names. max_length="auto" chooses it from the texts.
    checkpoint_dir / checkpoint_every: save a checkpoint every N steps (and when a callback
    stops the run) in checkpoint_dir; resume_from: a checkpoint (or a folder of them) to
    continue from, with the same model setup and arguments: the run then ends with the same
    weights as an uninterrupted one (see train/checkpoint.py).
    """
    _check_args(epochs, max_steps, lr, batch_size, schedule)
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1 or checkpoint_dir is None):
        raise ValueError(f"checkpoint_every must be a positive int and needs checkpoint_dir=, "
                         f"got checkpoint_every={checkpoint_every!r}, "
                         f"checkpoint_dir={checkpoint_dir!r}")
    check_labels(model, train, eval)
    if gradient_checkpointing and not hasattr(model, "gradient_checkpointing_enable"):
        raise ValueError(f"gradient_checkpointing=True needs a transformers model (one with "
                         f"gradient_checkpointing_enable()); {type(model).__name__} has none. "
                         f"Wrap its blocks in torch.utils.checkpoint yourself, or leave it off.")
    device = get_device(device)
    world_size, rank, _ = world()
    if world_size > 1:
        device = init_distributed(device)
        progress = progress and rank == 0
    prec = resolve_precision(precision, device, amp)        # validates before any change
    announce(prec)
    seed_everything(seed, deterministic=False)
    eval_split = eval if hasattr(eval, "conversations") else None   # chat: scored at the end
    train = as_loader(train, tokenizer, batch_size, True, seed, max_length, "train")
    eval = as_loader(eval, tokenizer, batch_size * 2, False, seed, max_length, "eval")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters: apply a method first "
                         "(e.g. pl.lora.apply) or pl.full.apply(model, pl.full.FullConfig()).")
    model.to(device)
    net = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = _make_optimizer(optimizer, params, lr, weight_decay)
    total = math.ceil(len(train) * epochs)
    total = min(total, max_steps) if max_steps else total
    check_total_steps(model, total)   # e.g. AdaLoRA's schedule must fit in the run
    n_warm = int(warmup * total) if isinstance(warmup, float) else int(warmup)
    run = _Run(model=model, net=net, params=params, optimizer=opt,
               scheduler=torch.optim.lr_scheduler.LambdaLR(opt, _schedule(schedule, total,
                                                                          n_warm)),
               scaler=torch.amp.GradScaler("cuda", enabled=prec.scaler),
               loss=loss or loss_fn, device=device, precision=prec,
               max_grad_norm=max_grad_norm, rank=rank, world_size=world_size)
    callbacks = list(callbacks)
    state = FitState(model=model, optimizer=opt, total_steps=total)
    history, evals, times = [], [], []
    activations = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    measure.reset_peak_rss()

    checkpointing = _checkpointing(model, True) if gradient_checkpointing else None

    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc="training", disable=not progress, leave=False)
    t_start = time.perf_counter()
    model.train()
    point = checkpoint.restore(resume_from, run, total) if resume_from is not None else None
    step, epoch = (point.step, point.epoch) if point else (0, 0)
    state.step, state.epoch = step, epoch
    bar.update(step)
    _call(callbacks, "on_train_begin", state)
    stopped = False
    while step < total and not stopped:
        if point is not None:        # resuming: this epoch's order, its first batches skipped
            batches, epoch_state, in_epoch = point.batches(train)
            point = None
        else:
            epoch_state, in_epoch, batches = checkpoint.epoch_rng(train), 0, iter(train)
        for batch in batches:
            t0 = time.perf_counter()
            shown, counted = _train_step(run, batch, step)
            activations = counted if step == 0 else activations
            dt = time.perf_counter() - t0
            step += 1
            state.step, state.epoch, state.loss = step, epoch, shown.item()
            state.lr, state.step_time = opt.param_groups[0]["lr"], dt
            _call(callbacks, "on_step_end", state)   # grads still there for the monitor
            opt.zero_grad(set_to_none=True)
            times.append(dt)
            history.append({"step": step, "epoch": epoch, "loss": state.loss,
                            "lr": state.lr, "time": dt})
            bar.update(1)
            bar.set_postfix(loss=f"{state.loss:.4f}")
            in_epoch += 1
            stopped = state.stop and step < total
            if checkpoint_dir is not None and rank == 0 and step < total and (
                    stopped or (checkpoint_every and step % checkpoint_every == 0)):
                checkpoint.save(checkpoint_dir, run=run, step=step, epoch=epoch,
                                in_epoch=in_epoch, total=total, epoch_state=epoch_state,
                                loader=train)
            if step >= total or stopped:
                break
        if stopped:
            break
        epoch += 1
        state.epoch = epoch   # epochs completed, as in the evals rows
        if eval is not None and (eval_every_epoch or step >= total):
            metrics = evaluate(model, eval, device)
            evals.append({"epoch": epoch, "step": step, **metrics})
            state.eval_metrics = metrics
            if progress:
                bar.write(f"epoch {epoch}: eval loss {metrics['loss']:.4f}, "
                          f"accuracy {metrics['accuracy']:.4f}")
        _call(callbacks, "on_epoch_end", state)
    bar.close()
    if checkpointing is False:
        _checkpointing(model, False)
    if eval_split is not None and generate_eval and evals and not stopped:
        from peftlab.chat.generate import score
        scored = score(model, tokenizer, eval_split, max_examples=generate_eval)
        evals[-1].update(exact_match=scored["exact_match"], generated=scored["n"])
        state.eval_metrics = evals[-1]
        if progress:
            bar.write(f"greedy generation on {scored['n']} eval conversations: exact match "
                      f"{scored['exact_match']:.3f}")
    _call(callbacks, "on_train_end", state)
    trainable, n_total = measure.count_parameters(model)
    return FitResult(history=history, evals=evals, trainable=trainable, total=n_total,
                     step_time=measure.median_step_time(times),
                     train_time=time.perf_counter() - t_start,
                     memory=_memory(run, activations), device=str(device),
                     world_size=world_size, precision=prec.name, stopped=stopped)
