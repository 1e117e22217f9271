"""fit(): the one training loop every method uses.

It is the plain PyTorch loop, written once, with the chores done:

    for batch in train:
        loss = loss_fn(model, batch) + pl.regularization(model)   # AdaLoRA's penalty, else 0
        loss.backward()
        clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step(); scheduler.step()
        pl.after_step(model, step)     # AdaLoRA re-allocates ranks, selection re-masks
        optimizer.zero_grad()

plus device placement, seeding, a tqdm progress bar, evaluation per epoch, optional mixed
precision on GPU, callbacks (what the TrainingMonitor widget listens to) and measurement.
No method gets a private code path: a hand-written loop with the same calls trains the same.

Batches: a dict of tensors with a "labels" entry (text; the model returns logits or an
object with .logits), or a tuple (inputs, labels) (vision). A TextSplit from pl.data plus
`tokenizer=` is turned into a DataLoader for you.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from peftlab import measure
from peftlab.registry import after_step, regularization
from peftlab.runtime import get_device, seed_everything


# --- batches and loss -----------------------------------------------------------------------

def to_device(batch, device):
    if isinstance(batch, dict):
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch.to(device) if torch.is_tensor(batch) else batch


def split_batch(batch):
    """(model inputs, labels) from a dict batch {..., "labels"} or a tuple (x, y)."""
    if isinstance(batch, dict):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return inputs, batch.get("labels")
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(f"A batch must be a dict with 'labels' or a tuple (inputs, labels); got "
                    f"{type(batch).__name__}.")


def logits_of(model: nn.Module, inputs) -> torch.Tensor:
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out if torch.is_tensor(out) else out.logits


def forward(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) for a batch already on the model's device."""
    inputs, labels = split_batch(batch)
    return logits_of(model, inputs), labels


def loss_fn(model: nn.Module, batch) -> torch.Tensor:
    """Cross-entropy of the model on a batch (moved to the model's device). The default loss of
    fit(), and a ready `loss_fn` for pl.selection.apply."""
    device = next(model.parameters()).device
    logits, labels = forward(model, to_device(batch, device))
    return F.cross_entropy(logits.float(), labels)


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable, device=None) -> dict:
    """Mean loss and accuracy over `data` (model put in eval mode, restored after)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    for batch in data:
        logits, labels = forward(model, to_device(batch, device))
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(-1) == labels).sum().item()
        total += labels.numel()
    model.train(was_training)
    if total == 0:
        raise ValueError("evaluate() got no batches.")
    return {"loss": loss_sum / total, "accuracy": correct / total, "n": total}


# --- state passed to callbacks -------------------------------------------------------------

@dataclass
class FitState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    step: int = 0                 # optimizer steps done so far (1-based inside on_step_end)
    total_steps: int = 0
    loss: float = float("nan")
    lr: float = 0.0
    step_time: float = 0.0
    eval_metrics: dict = field(default_factory=dict)


@dataclass
class FitResult:
    history: list[dict]           # one row per step: step, epoch, loss, lr, time
    evals: list[dict]             # one row per epoch: epoch, loss, accuracy
    trainable: int
    total: int
    step_time: float              # median seconds per training step after warm-up
    train_time: float             # wall seconds of the whole loop (evaluation included)
    memory: dict                  # training_state_bytes (+ cuda_peak on GPU)
    device: str

    @property
    def final(self) -> dict:
        return self.evals[-1] if self.evals else {}

    def __repr__(self) -> str:
        acc = self.final.get("accuracy")
        acc_s = f"{acc:.4f}" if acc is not None else "-"
        return (f"FitResult(steps={len(self.history)}, eval_accuracy={acc_s}, "
                f"trainable={self.trainable:,}/{self.total:,}, "
                f"step_time={self.step_time * 1000:.0f} ms, "
                f"memory={measure.human_bytes(self.memory.get('total'))})")


def _call(callbacks, hook: str, state: FitState) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(state)
        elif hook == "on_step_end" and callable(cb):
            cb(state)


def _schedule(name: str, total: int, warmup: int) -> Callable[[int], float]:
    if name == "constant":
        return lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
    if name == "linear":
        return lambda s: ((s + 1) / warmup if s < warmup
                          else max(0.0, (total - s) / max(1, total - warmup)))
    if name == "cosine":
        return lambda s: ((s + 1) / warmup if s < warmup else
                          0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    raise ValueError(f"Unknown lr schedule {name!r}: use 'linear', 'cosine' or 'constant'.")


# --- the loop ------------------------------------------------------------------------------

def fit(model: nn.Module, train, eval=None, *, epochs: float = 1, lr: float = 1e-3,
        batch_size: int = 32, tokenizer=None, max_length: int = 32,
        optimizer: str | Callable = "adamw", weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0, schedule: str = "linear", warmup: float = 0.06,
        max_steps: int | None = None, device=None, seed: int = 0, amp: bool = False,
        loss: Callable | None = None, callbacks: Iterable = (), progress: bool = True,
        eval_every_epoch: bool = True) -> FitResult:
    """Train the model's trainable parameters on `train`; evaluate on `eval` each epoch.

    train / eval: DataLoaders (or any re-iterable of batches), or pl.data TextSplits with
    `tokenizer=`. epochs may be fractional; max_steps caps the total. optimizer: "adamw",
    "sgd", or a callable params -> optimizer. warmup: fraction of steps (or an int count).
    loss: loss(model, batch) -> scalar; default cross-entropy (train.loss_fn).
    """
    if not (isinstance(epochs, (int, float)) and epochs > 0):
        raise ValueError(f"epochs must be > 0, got {epochs!r}")
    if max_steps is not None and max_steps <= 0:
        raise ValueError(f"max_steps must be > 0, got {max_steps!r}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    device = get_device(device)
    seed_everything(seed)
    train = _as_loader(train, tokenizer, batch_size, True, seed, max_length, "train")
    eval = _as_loader(eval, tokenizer, batch_size * 2, False, seed, max_length, "eval")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters: apply a method first "
                         "(e.g. pl.lora.apply) or pl.full.apply(model, pl.full.FullConfig()).")
    model.to(device)
    if isinstance(optimizer, str):
        if optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        elif optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
        else:
            raise ValueError(f"Unknown optimizer {optimizer!r}: 'adamw', 'sgd' or a callable.")
    else:
        opt = optimizer(params)
    steps_per_epoch = len(train)
    total = math.ceil(steps_per_epoch * epochs)
    total = min(total, max_steps) if max_steps else total
    n_warm = int(warmup * total) if isinstance(warmup, float) else int(warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(schedule, total, n_warm))
    loss_f = loss or loss_fn
    use_amp = amp and device.type == "cuda"
    callbacks = list(callbacks)
    state = FitState(model=model, optimizer=opt, total_steps=total)
    history, evals, times = [], [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc="training", disable=not progress, leave=False)
    t_start = time.perf_counter()
    model.train()
    _call(callbacks, "on_train_begin", state)
    step, epoch = 0, 0
    while step < total:
        for batch in train:
            t0 = time.perf_counter()
            batch = to_device(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss_val = loss_f(model, batch) + regularization(model)
            loss_val.backward()
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            sched.step()
            after_step(model, step)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            step += 1
            state.step, state.epoch, state.loss = step, epoch, loss_val.item()
            state.lr, state.step_time = opt.param_groups[0]["lr"], dt
            _call(callbacks, "on_step_end", state)   # grads still there for the monitor
            opt.zero_grad(set_to_none=True)
            times.append(dt)
            history.append({"step": step, "epoch": epoch, "loss": state.loss,
                            "lr": state.lr, "time": dt})
            bar.update(1)
            bar.set_postfix(loss=f"{state.loss:.4f}")
            if step >= total:
                break
        epoch += 1
        if eval is not None and (eval_every_epoch or step >= total):
            metrics = evaluate(model, eval, device)
            evals.append({"epoch": epoch, "step": step, **metrics})
            state.eval_metrics = metrics
            bar.write(f"epoch {epoch}: eval loss {metrics['loss']:.4f}, "
                      f"accuracy {metrics['accuracy']:.4f}") if progress else None
        _call(callbacks, "on_epoch_end", state)
    bar.close()
    _call(callbacks, "on_train_end", state)
    trainable, n_total = measure.count_parameters(model)
    memory = measure.training_state_bytes(model, opt)
    if device.type == "cuda":
        memory["cuda_peak"] = measure.peak_memory_bytes(device)
    return FitResult(history=history, evals=evals, trainable=trainable, total=n_total,
                     step_time=measure.median_step_time(times),
                     train_time=time.perf_counter() - t_start, memory=memory,
                     device=str(device))


def _as_loader(data, tokenizer, batch_size, shuffle, seed, max_length, what):
    if data is None:
        return None
    if hasattr(data, "loader") and hasattr(data, "texts"):
        if tokenizer is None:
            raise ValueError(f"fit() got a TextSplit for {what} but no tokenizer=: pass the "
                             f"tokenizer from pl.models.text_classifier, or a DataLoader.")
        return data.loader(tokenizer, batch_size=batch_size, shuffle=shuffle, seed=seed,
                           max_length=max_length)
    if isinstance(data, torch.utils.data.Dataset) and not hasattr(data, "__iter__"):
        g = torch.Generator()
        g.manual_seed(seed)
        return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle,
                                           generator=g)
    try:
        len(data)
    except TypeError:
        data = list(data)  # a generator: materialise so it can be re-iterated per epoch
    if len(data) == 0:
        raise ValueError(f"fit() got an empty {what} set.")
    return data
