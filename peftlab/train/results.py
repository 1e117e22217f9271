"""What fit() hands to its callbacks while it trains (FitState) and returns (FitResult)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from peftlab import measure


@dataclass
class FitState:
    """What callbacks see. on_train_begin / on_step_end / on_epoch_end / on_train_end(state);
    inside on_step_end the step's gradients are still on the parameters.

    model: the model being trained. optimizer: its optimizer. epoch: the 0-based epoch in
    progress (in on_epoch_end: epochs completed). step: optimizer steps done so far (1-based
    inside on_step_end). total_steps: steps the run will take. loss: the last step's task
    loss. lr: the learning rate of the last step. step_time: its wall seconds. eval_metrics:
    the latest evaluation ({"loss", "accuracy", "n"}; {} before the first). stop: a callback
    sets it to True to end the run after this step (fit then saves a checkpoint if it has a
    checkpoint_dir, and the result says stopped=True).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    loss: float = float("nan")
    lr: float = 0.0
    step_time: float = 0.0
    eval_metrics: dict = field(default_factory=dict)
    stop: bool = False


@dataclass
class FitResult:
    """What fit() returns.

    history: one row per step taken by this call: step, epoch, loss, lr, time. evals: one row
    per evaluation: epoch, step, loss, accuracy, n. trainable: trainable parameters (each
    tensor once). total: all parameters. step_time: median seconds per training step after
    warm-up. train_time: wall seconds of the whole loop (evaluation included). memory: bytes
    of weights, gradients, optimizer, total (= those three), activations, peak, peak_kind,
    rss_peak (+ cuda_peak on GPU). device: where it trained. world_size: processes that
    trained together (torchrun). precision: what the forward pass ran in (fp32, bf16, fp16).
    stopped: True when a callback stopped the run before its last step (see FitState.stop).
    final (a property): the last evaluation row, or {}.
    """

    history: list[dict]
    evals: list[dict]
    trainable: int
    total: int
    step_time: float
    train_time: float
    memory: dict
    device: str
    world_size: int = 1
    precision: str = "fp32"
    stopped: bool = False

    @property
    def final(self) -> dict:
        """The last evaluation row ({} if fit() never evaluated)."""
        return self.evals[-1] if self.evals else {}

    def __repr__(self) -> str:
        acc = self.final.get("accuracy")
        acc_s = f"{acc:.4f}" if acc is not None else "-"
        return (f"FitResult(steps={len(self.history)}, eval_accuracy={acc_s}, "
                f"trainable={self.trainable:,}/{self.total:,}, "
                f"step_time={self.step_time * 1000:.0f} ms, "
                f"peak_memory={measure.human_bytes(self.memory.get('peak'))})")
