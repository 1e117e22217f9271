"""Step times that survive a busy machine: every method timed in turn, round robin.

Timing each method while it trains (method after method) lets a burst of background load (a
notebook kernel, a browser, a virus scan) land on one method only: that method then looks slow
and the ratios lie. Here, after training, a fresh copy of every method is built on one shared
batch and the methods take turns: a couple of steps of each, then again, for several rounds.
A burst then slows every method alike. The step time reported is the median over all timed
steps of a method; the spread (slowest turn - fastest turn) / median says how steady the
machine was. A spread above BUSY_SPREAD is reported as a warning next to the table.

One timed step is what pl.train.fit does per batch: forward (under the run's precision),
loss + regularization, backward, gradient clipping, AdamW step, pl.after_step, zero_grad.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

BUSY_SPREAD = 0.5      # (slowest turn - fastest turn) / median above this: "the machine was busy"


def _one_step(model, opt, params, batch, step: int, precision, device, loss_fn) -> None:
    from peftlab.core.registry import after_step, regularization
    with precision.autocast(device):
        loss = loss_fn(model, batch) + regularization(model)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    after_step(model, step)
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_step_times(specs: dict, task, *, seed: int, device, precision,
                           total_steps: Callable[[str], int], rounds: int = 4,
                           steps_per_turn: int = 2, warmup: int = 1,
                           batch_size: int = 32,
                           on_start: Callable[[], None] | None = None) -> dict[str, dict]:
    """{method: {"median": s, "spread": fraction, "samples": [s, ...]}} for specs
    {name: MethodSpec}, each applied to a fresh copy of task's base model and stepped on the
    same batch, round robin (warmup untimed steps each, then `rounds` turns of
    `steps_per_turn` steps). total_steps(name) is the length of that method's real run (AdaLoRA's
    schedule needs it). A method that fails to build or step gets {"error": message}."""
    from peftlab.core.batches import loss_fn, to_device
    data = task.subset(batch_size, seed)
    batch = to_device(next(iter(task.loader(data, batch_size, False, seed))), device)
    runs, out = {}, {}
    for name, spec in specs.items():
        try:
            model = task.make_model().to(device)
            ctx = {**task.ctx, "tokenizer": task.tokenizer, "seed": seed,
                   "total_steps": total_steps(name), "batch_size": batch_size,
                   "score_loader": lambda: [batch]}    # where to select does not change the cost
            torch.manual_seed(seed)
            spec.build(model, ctx)
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            runs[name] = [model, torch.optim.AdamW(params, lr=1e-6), params, 0, []]
        except Exception as e:  # noqa: BLE001  (report it, time the others)
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    if on_start is not None:
        on_start()

    def turn(name: str, n: int) -> float:
        model, opt, params, step, _ = run = runs[name]
        t0 = time.perf_counter()
        for _ in range(n):
            _one_step(model, opt, params, batch, step, precision, device, loss_fn)
            step += 1
        run[3] = step
        return (time.perf_counter() - t0) / n

    for rnd in range(warmup + rounds):
        for name in list(runs):
            try:
                dt = turn(name, 1 if rnd < warmup else steps_per_turn)
            except Exception as e:  # noqa: BLE001
                out[name] = {"error": f"{type(e).__name__}: {e}"}
                del runs[name]
                continue
            if rnd >= warmup:
                runs[name][4].append(dt)
    for name, (*_, samples) in runs.items():
        med = statistics.median(samples)
        out[name] = {"median": med, "spread": (max(samples) - min(samples)) / med,
                     "samples": samples}
    return {name: out[name] for name in specs if name in out}
