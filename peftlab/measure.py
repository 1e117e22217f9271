"""Honest measurement: parameters, step time, memory, adapter size.

Memory on CPU is reported as an exact count, not a sampled guess:
    training_state_bytes = parameters (all) + gradients (trainable) + optimizer state
which is what fine-tuning methods actually change. Activations are not in it (they depend
on batch and sequence length, and are the same for every method that runs the full forward).
On CUDA we report the allocator's peak (torch.cuda.max_memory_allocated), which includes
activations.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, each shared tensor counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def parameter_bytes(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(tensor_bytes(p) for p in {id(p): p for p in model.parameters()}.values()
               if p.requires_grad or not trainable_only)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes held by the optimizer's per-parameter state (Adam: exp_avg + exp_avg_sq + step)."""
    if optimizer is None:
        return 0
    total = 0
    for state in optimizer.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                total += tensor_bytes(v)
    return total


def training_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Exact bytes of weights + gradients + optimizer state (see the module docstring)."""
    weights = parameter_bytes(model)
    grads = parameter_bytes(model, trainable_only=True)
    opt = optimizer_state_bytes(optimizer)
    return {"weights": weights, "gradients": grads, "optimizer": opt,
            "total": weights + grads + opt}


def adam_state_bytes_estimate(model: nn.Module) -> dict:
    """The same count before any step: Adam keeps two fp32 moments per trainable parameter."""
    trainable, _ = count_parameters(model)
    weights = parameter_bytes(model)
    grads = parameter_bytes(model, trainable_only=True)
    opt = trainable * 2 * 4
    return {"weights": weights, "gradients": grads, "optimizer": opt,
            "total": weights + grads + opt}


def peak_memory_bytes(device: torch.device | str) -> int | None:
    """The CUDA allocator's peak since the last reset; None off CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux/macOS), in bytes."""
    import resource
    import sys
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def median_step_time(times: list[float], warmup: int = 2) -> float:
    """Median of per-step seconds, skipping the first `warmup` steps (allocations, caches)."""
    if not times:
        return float("nan")
    kept = times[warmup:] if len(times) > warmup else times
    return float(statistics.median(kept))


def folder_size(path: str | Path) -> int:
    """Total bytes of the files in a folder (an adapter) or of one file."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@torch.no_grad()
def inference_time(model: nn.Module, batch, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of one forward pass on `batch` (dict of tensors or a tensor)."""
    model.eval()
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        model(**batch) if isinstance(batch, dict) else model(batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def threads() -> int:
    return torch.get_num_threads() or os.cpu_count() or 1
