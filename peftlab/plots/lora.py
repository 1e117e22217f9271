"""Figures for LoRA: the spectrum of the learned update, the update itself, losses, budgets.

    from peftlab.plots import lora as lora_plots
    fig = lora_plots.spectrum(pl.lora.spectrum(model))        # singular values per layer
    fig = lora_plots.delta(pl.lora.delta_weight(layer))       # heat map of scale * B @ A
    fig = lora_plots.loss_curves({"LoRA": res.history, "full": full_res.history})
    fig = lora_plots.params_vs_rank(model, targets=["query", "value"])

Each takes data, draws on `ax` (or a new figure) and returns the Figure; nothing trains.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch


def _ax(ax, figsize=(6, 3.5)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def spectrum(spectra: dict[str, torch.Tensor], ax=None, normalise: bool = True,
             max_lines: int = 12):
    """Singular values of each layer's update, largest first (normalised to the largest).

    A fast fall-off means the task used fewer directions than the rank allowed.
    """
    fig, ax = _ax(ax)
    for i, (name, s) in enumerate(spectra.items()):
        if i >= max_lines:
            break
        s = s.detach().float().cpu()
        s = s / s[0] if normalise and s.numel() and s[0] > 0 else s
        short = ".".join(p for p in name.split(".") if p not in ("bert", "encoder", "attention",
                                                                 "self", "layer"))
        ax.plot(range(1, len(s) + 1), s.numpy(), marker="o", ms=3, lw=1, label=short)
    ax.set_xlabel("singular value index")
    ax.set_ylabel("sigma / sigma_1" if normalise else "sigma")
    ax.set_title("spectrum of the learned update scale * B @ A")
    if len(spectra) <= max_lines:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def delta(d: torch.Tensor, ax=None, title: str = "scale * B @ A", max_size: int = 128):
    """Heat map of an update matrix (the top-left max_size x max_size corner of it)."""
    fig, ax = _ax(ax, figsize=(4, 3.5))
    d = d.detach().float().cpu().reshape(d.shape[0], -1)[:max_size, :max_size]
    lim = d.abs().max().item() or 1.0
    im = ax.imshow(d.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    ax.set_xlabel("input dim")
    ax.set_ylabel("output dim")
    fig.tight_layout()
    return fig


def loss_curves(histories: dict[str, list], ax=None, smooth: int = 5):
    """Training loss per step for several runs ({label: FitResult.history or a list of floats})."""
    fig, ax = _ax(ax)
    for label, hist in histories.items():
        losses = [h["loss"] if isinstance(h, dict) else float(h) for h in hist]
        if smooth > 1 and len(losses) >= smooth:
            t = torch.tensor(losses)
            losses = torch.nn.functional.avg_pool1d(t[None, None], smooth, 1).flatten().tolist()
            steps = range(smooth, smooth + len(losses))
        else:
            steps = range(1, len(losses) + 1)
        ax.plot(list(steps), losses, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss" + (f" (mean of {smooth})" if smooth > 1 else ""))
    ax.legend()
    fig.tight_layout()
    return fig


def params_vs_rank(model, targets, ranks=(1, 2, 4, 8, 16, 32, 64), ax=None):
    """Trainable adapter parameters against r for `targets` (computed; the model is not changed)."""
    from peftlab import lora

    counts = [lora.count_parameters(model, lora.LoraConfig(r=r, targets=list(targets),
                                                           modules_to_save=[]))
              for r in ranks]
    total = sum(p.numel() for p in model.parameters())
    fig, ax = _ax(ax)
    ax.plot(ranks, [100 * c / total for c in counts], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rank r")
    ax.set_ylabel("adapter parameters, % of model")
    ax.set_title(f"LoRA on {', '.join(map(str, targets))}")
    fig.tight_layout()
    return fig
