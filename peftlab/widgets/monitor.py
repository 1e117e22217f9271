"""TrainingMonitor: live loss, metrics, step time and per-layer gradient / update norms.

    monitor = pl.widgets.TrainingMonitor()
    monitor                                   # show it (last value of a cell)...
    pl.train.fit(model, ds.train, ds.validation, tokenizer=tok, callbacks=[monitor])
    monitor.steps, monitor.losses, monitor.grad_norms, monitor.figure()   # ...or read it

It is a plain fit() callback (on_train_begin / on_step_end / on_epoch_end / on_train_end),
so a hand-written loop can call the same methods with a train.FitState.

Cost, kept to a few percent of training by construction:
  * norms: one fused pass over the trainable tensors (torch._foreach_norm), summed per layer
    on the device, one transfer to the CPU. Gradient norm of layer l at step t:
        g_l = sqrt(sum_{p in l} ||grad_p||^2)       (after fit's gradient clipping)
    update norm: u_l = sqrt(sum_{p in l} ||p_t - p_{t-1}||^2), which needs a copy of the
    trainable weights from the step before; taken only before the steps where norms are
    measured (every `norm_every` steps; by default every step below 2M trainable parameters,
    every 10th above).
  * redraws: the status line (a few bytes of HTML) updates every `min_interval` seconds; the
    figure costs a few hundred milliseconds on a laptop CPU, so it is redrawn only when the
    time spent drawing stays under `budget` of the elapsed time
    (interval = max(min_interval, mean draw cost / budget); before the first draw the cost
    is estimated from the empty dashboard drawn at construction). The final picture is drawn
    in a background thread after training, so fit() returns at once; `monitor.wait()` waits
    for it (a script that reads `monitor.image` right after fit should call it).
`monitor.overhead` is the seconds spent inside the monitor; `overhead_fraction` relates it
to the summed step times.
"""

from __future__ import annotations

import math
import threading
import time

import ipywidgets as W
import numpy as np
import torch
from torch import nn

from peftlab.core.layers import AdapterLayer
from peftlab.measure import human_bytes
from peftlab.widgets._base import (
    WidgetBase,
    esc,
    image_widget,
    label_margin,
    new_figure,
    set_ticks,
    short_names,
    show_figure,
)


def layer_groups(model: nn.Module) -> tuple[list[str], list[nn.Parameter], list[int]]:
    """(layer names, trainable params, group index of each param).

    A parameter belongs to the nearest AdapterLayer above it (so lora_A and lora_B of one
    wrapped `query` form one layer), else to the module that owns it.
    """
    adapters = {n for n, m in model.named_modules() if isinstance(m, AdapterLayer)}
    names, params, index, seen = [], [], [], set()
    for pname, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        owner = pname.rpartition(".")[0]
        parts = owner.split(".")
        layer = next((".".join(parts[:k]) for k in range(len(parts), 0, -1)
                      if ".".join(parts[:k]) in adapters), owner) or "(root)"
        if layer not in names:
            names.append(layer)
        params.append(p)
        index.append(names.index(layer))
    return names, params, index


def _norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    if hasattr(torch, "_foreach_norm"):
        return torch.stack(torch._foreach_norm(tensors))
    return torch.stack([t.norm() for t in tensors])


class TrainingMonitor(WidgetBase):
    """A fit() callback that plots loss, metrics, step time and per-layer norms as it trains."""

    def __init__(self, min_interval: float = 0.5, budget: float = 0.02,
                 norm_every: int | None = None, smoothing: float = 0.9):
        if min_interval < 0 or not 0 < budget <= 1:
            raise ValueError(f"TrainingMonitor needs min_interval >= 0 and 0 < budget <= 1; got "
                             f"{min_interval!r}, {budget!r}.")
        if norm_every is not None and norm_every < 1:
            raise ValueError(f"norm_every must be >= 1 (or None for automatic), got {norm_every}")
        self.min_interval, self.budget = min_interval, budget
        self.norm_every_arg, self.smoothing = norm_every, smoothing
        self.status = W.HTML("<i>waiting for pl.train.fit(..., callbacks=[monitor])</i>")
        self.image = image_widget()
        self.widget = W.VBox([self.status, self.image])
        self._reset()
        self._thread: threading.Thread | None = None
        t0 = time.perf_counter()
        show_figure(self.image, self.figure())   # an empty, labelled dashboard
        self._estimate = 2 * (time.perf_counter() - t0)   # a full one costs about twice that

    def _reset(self) -> None:
        self.steps, self.losses, self.lrs, self.step_times = [], [], [], []
        self.evals: list[dict] = []             # {"step", "epoch", **eval metrics}
        self.layers: list[str] = []
        self.norm_steps: list[int] = []         # steps where norms were measured
        self.grad_norms: list[list[float]] = []     # per norm step, one value per layer
        self.update_norms: list[list[float]] = []   # per norm step, one value per layer
        self.overhead, self.draw_time, self.draws = 0.0, 0.0, 0
        self.total_steps, self._snapshot = 0, None
        self._last_draw = self._last_status = time.perf_counter()

    # --- the callback protocol --------------------------------------------------------------
    def on_train_begin(self, state) -> None:
        self.wait()                     # a final draw of an earlier run may still be going
        t0 = time.perf_counter()
        self._reset()
        self.total_steps = state.total_steps
        self.layers, self._params, idx = layer_groups(state.model)
        p0 = next(state.model.parameters(), None)
        self._cuda = p0.device if p0 is not None and p0.device.type == "cuda" else None
        n = sum(p.numel() for p in self._params)
        self.norm_every = self.norm_every_arg or (1 if n <= 2_000_000 else 10)
        dev = self._params[0].device if self._params else "cpu"
        self._index = torch.tensor(idx, device=dev)
        self._last_draw = self._last_status = time.perf_counter()
        self.status.value = self.summary_html()
        if self.norm_every == 1:
            self._take_snapshot()
        self.overhead += time.perf_counter() - t0

    def on_step_end(self, state) -> None:
        t0 = time.perf_counter()
        s = state.step
        self.steps.append(s)
        self.losses.append(state.loss)
        self.lrs.append(state.lr)
        self.step_times.append(state.step_time)
        if self._params and s % self.norm_every == 0:
            self._measure(s)
        if self._params and (s + 1) % self.norm_every == 0:
            self._take_snapshot()       # the weights before step s+1
        self._maybe_draw()
        self.overhead += time.perf_counter() - t0

    def on_epoch_end(self, state) -> None:
        if state.eval_metrics and (not self.evals or self.evals[-1]["step"] != state.step):
            self.evals.append({"step": state.step, "epoch": state.epoch, **state.eval_metrics})

    def on_train_end(self, state) -> None:
        t0 = time.perf_counter()
        self._snapshot = None
        self.status.value = self.summary_html()
        self._thread = threading.Thread(target=self.redraw, name="TrainingMonitor draw",
                                        daemon=True)
        self._thread.start()
        self.overhead += time.perf_counter() - t0

    def wait(self, timeout: float | None = None) -> None:
        """Block until the final picture (drawn in a background thread) is in place."""
        if self._thread is not None:
            self._thread.join(timeout)

    # --- measurement ----------------------------------------------------------------------
    def _take_snapshot(self) -> None:
        with torch.no_grad():
            self._snapshot = [p.detach().clone() for p in self._params]

    @torch.no_grad()
    def _measure(self, step: int) -> None:
        g = [p.grad if p.grad is not None else torch.zeros((), device=p.device)
             for p in self._params]
        rows = [_norms(g)]
        if self._snapshot is not None:
            rows.append(_norms(torch._foreach_sub([p.detach() for p in self._params],
                                                  self._snapshot)))
        per_layer = []
        for r in rows:   # sqrt of the per-layer sum of squared tensor norms
            acc = torch.zeros(len(self.layers), device=r.device, dtype=torch.float32)
            per_layer.append(acc.index_add_(0, self._index, r.float() ** 2).sqrt())
        vals = torch.stack(per_layer).cpu().tolist()       # one device -> host transfer
        self.norm_steps.append(step)
        self.grad_norms.append(vals[0])
        self.update_norms.append(vals[1] if len(vals) > 1 else [math.nan] * len(self.layers))
        self._snapshot = None

    @property
    def overhead_fraction(self) -> float:
        busy = sum(self.step_times)
        return self.overhead / busy if busy else 0.0

    # --- drawing --------------------------------------------------------------------------
    def _maybe_draw(self) -> None:
        now = time.perf_counter()
        cost = self.draw_time / self.draws if self.draws else self._estimate
        if now - self._last_draw >= max(self.min_interval, cost / self.budget):
            self.redraw()
        elif now - self._last_status >= self.min_interval:
            self.status.value = self.summary_html()
            self._last_status = now

    def redraw(self) -> None:
        """Update the status line and the figure now (fit calls this at most a few times)."""
        t0 = time.perf_counter()
        self.status.value = self.summary_html()
        show_figure(self.image, self.figure())
        self._last_draw = self._last_status = time.perf_counter()
        self.draw_time += self._last_draw - t0
        self.draws += 1

    def summary(self) -> str:
        if not self.steps:
            return "no steps yet"
        last = self.evals[-1] if self.evals else {}
        ev = "".join(f", eval {k} {v:.4f}" for k, v in last.items()
                     if k in ("loss", "accuracy"))
        return (f"step {self.steps[-1]}/{self.total_steps}: loss {self.losses[-1]:.4f}, "
                f"lr {self.lrs[-1]:.2e}, step {1000 * float(np.median(self.step_times)):.0f} ms"
                f"{ev}{self._cuda_text()}; monitor overhead {100 * self.overhead_fraction:.1f}%")

    def _cuda_text(self) -> str:
        if getattr(self, "_cuda", None) is None:
            return ""
        return f", CUDA peak {human_bytes(torch.cuda.max_memory_allocated(self._cuda))}"

    def summary_html(self) -> str:
        return f"<b>TrainingMonitor</b> · {esc(self.summary())}"

    def smoothed_losses(self) -> list[float]:
        out, m = [], None
        for i, x in enumerate(self.losses):   # bias-corrected exponential moving average
            m = x if m is None else self.smoothing * m + (1 - self.smoothing) * x
            out.append(m if i else x)
        return out

    def figure(self):
        """The dashboard as a matplotlib Figure: loss + eval, step time, norm heat maps."""
        fig = new_figure(11, 6.5, layout=None)
        (ax_loss, ax_time), (ax_g, ax_u) = fig.subplots(2, 2)
        labels = short_names(self.layers) if self.layers else []
        fig.subplots_adjust(left=label_margin(labels, 11, least=0.08), right=0.95, top=0.95, bottom=0.08, hspace=0.35,
                            wspace=0.42)
        ax_loss.set(title="loss", xlabel="step")
        handles = []
        if self.steps:
            handles += ax_loss.plot(self.steps, self.losses, color="#bbb", lw=0.8,
                                    label="train (step)")
            handles += ax_loss.plot(self.steps, self.smoothed_losses(), color="C0",
                                    label="train (smoothed)")
        if self.evals:
            handles += ax_loss.plot([e["step"] for e in self.evals],
                                    [e["loss"] for e in self.evals], "o-", color="C3",
                                    label="eval loss")
            if "accuracy" in self.evals[-1]:     # its own axis (0-1), in the same legend
                ax_acc = ax_loss.twinx()
                handles += ax_acc.plot([e["step"] for e in self.evals],
                                       [e.get("accuracy", math.nan) for e in self.evals],
                                       "s--", color="C2", label="eval accuracy (right axis)")
                ax_acc.set_ylabel("eval accuracy", color="C2")
        if handles:
            ax_loss.legend(handles=handles, loc="upper right", fontsize=8)
        ax_time.set(title="step time", xlabel="step", ylabel="ms")
        if self.steps:
            ax_time.plot(self.steps, [1000 * t for t in self.step_times], color="C1", lw=0.8)
        for ax, data, title in ((ax_g, self.grad_norms, "gradient norm per layer (log10)"),
                                (ax_u, self.update_norms, "update norm, same rows (log10)")):
            ax.set(title=title, xlabel="step")
            if not data or not self.layers:
                ax.text(0.5, 0.5, "appears once training starts", ha="center", va="center",
                        transform=ax.transAxes, color="#777")
                continue
            arr = np.log10(np.asarray(data, dtype=float).T + 1e-12)   # (layers, norm steps)
            im = ax.imshow(arr, aspect="auto", interpolation="nearest", cmap="viridis",
                           extent=(self.norm_steps[0] - 0.5, self.norm_steps[-1] + 0.5,
                                   len(self.layers) - 0.5, -0.5))
            fig.colorbar(im, ax=ax, shrink=0.8)
            # row labels once, on the left map (the right one has the same rows)
            set_ticks(ax, "y", labels if ax is ax_g else [""] * len(labels))
        return fig
