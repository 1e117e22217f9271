"""Honest measurement: parameters, step time, memory, adapter size, inference time.

What each number means (the comparison table prints these, so they must be exact):

trainable / total parameters
    `count_parameters`: each tensor counted once (tied weights are one tensor), adapters
    included in `total` (the same rule as Hugging Face PEFT's print_trainable_parameters).

training step time
    `median_step_time`: the median of the per-step wall times after the first `warmup` steps
    (first steps allocate buffers and warm caches). On CUDA each step ends with a synchronize,
    so the time is the GPU's, not the launch's. Wall time on a shared machine is noisy:
    compare *ratios* measured in one run.

memory
    On CUDA: the allocator's peak (`torch.cuda.max_memory_allocated`) since the start of
    training: weights, gradients, optimizer state, activations and temporaries, all of it.
    On CPU there is no allocator peak to ask for, so we report an exact *count* instead:

        peak_estimate = weights (all) + gradients (trainable) + optimizer state
                        + activations saved for backward (one training step)

    The first three are summed from the tensors themselves (`training_state_bytes`). The
    last is counted with autograd's saved-tensor hooks (`SavedTensorMeter`): every tensor the
    forward pass keeps for the backward pass, each storage once, parameters excluded (they
    are already in "weights"). Short-lived temporaries are not in it, so it is a lower
    bound of the true peak, but it is deterministic and moves exactly where PEFT methods
    save memory: fewer gradients, less optimizer state, fewer saved activations (a frozen
    layer saves no input for a weight gradient it does not need).
    We also record the process's peak resident set size (`peak_rss_bytes`, Linux: VmHWM,
    reset before training) for reference; it includes Python, torch's libraries and
    everything else the process holds, so it is not used for ratios.

adapter size
    `adapter_size`: bytes on disk of `pl.save_adapter(model, ...)` (safetensors + JSON).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from peftlab.core.base import base_kind
from peftlab.core.batches import logits_of
from peftlab.core.registry import method_module
from peftlab.core.state import eval_mode, get_method
from peftlab.io.adapters import save_adapter
from peftlab.memory import (  # noqa: F401  (part of pl.measure)
    PeakAboveBaseline,
    peak_memory_bytes,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
)

# --- parameters ------------------------------------------------------------------------------

def _unique_parameters(model: nn.Module) -> list[torch.nn.Parameter]:
    return list({id(p): p for p in model.parameters()}.values())


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, each shared tensor counted once."""
    params = _unique_parameters(model)
    return (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def parameter_bytes(model: nn.Module, trainable_only: bool = False) -> int:
    """Bytes of the model's parameters (each shared tensor once), or of its trainable ones."""
    return sum(tensor_bytes(p) for p in _unique_parameters(model)
               if p.requires_grad or not trainable_only)


def weights_bytes(model: nn.Module) -> int:
    """Bytes of everything that holds the model's weights: its parameters, plus the buffers of
    its base layers (peftlab/core/base.py: a quantized layer keeps its packed 4-bit weight and
    scales in buffers, not parameters). Dense models: parameter_bytes(model)."""
    seen = {id(p) for p in _unique_parameters(model)}
    extra = {}
    for m in model.modules():
        if base_kind(m) is not None:
            for b in m.buffers(recurse=False):
                if id(b) not in seen:
                    extra[id(b)] = tensor_bytes(b)
    return parameter_bytes(model) + sum(extra.values())


# --- training state: weights + gradients + optimizer state --------------------------------------

def optimizer_state_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes held by the optimizer's per-parameter state (Adam: exp_avg + exp_avg_sq + step)."""
    if optimizer is None:
        return 0
    return sum(tensor_bytes(v) for state in optimizer.state.values()
               for v in state.values() if torch.is_tensor(v))


def training_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Exact bytes of weights + gradients + optimizer state (see the module docstring)."""
    weights = weights_bytes(model)
    grads = parameter_bytes(model, trainable_only=True)
    opt = optimizer_state_bytes(optimizer)
    return {"weights": weights, "gradients": grads, "optimizer": opt,
            "total": weights + grads + opt}


def adam_state_bytes_estimate(model: nn.Module) -> dict:
    """The same count before any step: Adam keeps two moments (exp_avg, exp_avg_sq) of each
    trainable parameter's dtype, plus a 4-byte fp32 `step` counter per parameter tensor."""
    trainable = [p for p in _unique_parameters(model) if p.requires_grad]
    weights = weights_bytes(model)
    grads = parameter_bytes(model, trainable_only=True)
    opt = sum(2 * tensor_bytes(p) + 4 for p in trainable)
    return {"weights": weights, "gradients": grads, "optimizer": opt,
            "total": weights + grads + opt}


# --- activations saved for backward ------------------------------------------------------------

class SavedTensorMeter:
    """Count the bytes autograd saves for the backward pass while the block runs.

        with SavedTensorMeter(model) as meter:
            loss = loss_fn(model, batch)
        meter.bytes          # activations kept alive until loss.backward()

    Each storage is counted once (views and repeated saves share it); the model's parameters
    are excluded. The tensors are only looked at, never copied or changed.
    """

    def __init__(self, model: nn.Module | None = None):
        params = _unique_parameters(model) if model is not None else []
        self._param_ptrs = {p.untyped_storage().data_ptr() for p in params}
        self._seen: set[int] = set()
        self.bytes = 0
        self.count = 0
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.count += 1
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. sparse or meta tensors
            return t
        ptr = storage.data_ptr()
        if ptr and ptr not in self._param_ptrs and ptr not in self._seen:
            self._seen.add(ptr)
            self.bytes += storage.nbytes()
        return t

    def __enter__(self) -> SavedTensorMeter:  # noqa: PYI034
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)


# --- process and device peaks: peftlab/memory.py (re-exported here) ----------------------------

# --- time --------------------------------------------------------------------------------------

def median_step_time(times: list[float], warmup: int = 2) -> float:
    """Median of per-step seconds, skipping the first `warmup` steps (allocations, caches)."""
    if not times:
        return float("nan")
    kept = times[warmup:] if len(times) > warmup else times
    return float(statistics.median(kept))


def _sync(model: nn.Module) -> None:
    p = next(model.parameters(), None)
    if p is not None and p.device.type == "cuda":
        torch.cuda.synchronize(p.device)


@torch.no_grad()
def inference_time(model: nn.Module, batch, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of one forward pass on `batch` (a dict of tensors or a tensor, already on
    the model's device). The model's train/eval mode is restored afterwards."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    times = []
    with eval_mode(model):
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            model(**batch) if isinstance(batch, dict) else model(batch)
            _sync(model)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


def merge_functions(model: nn.Module):
    """(merge, unmerge) of the model's method if it can fold its adapter into the base
    weights (LoRA, AdaLoRA), else None."""
    name = get_method(model)
    if name is None:
        return None
    module = method_module(name)
    merge, unmerge = getattr(module, "merge", None), getattr(module, "unmerge", None)
    return (merge, unmerge) if merge and unmerge else None


def inference_times(model: nn.Module, batch, repeats: int = 5) -> dict:
    """Forward-pass time before merging and, where the method can merge, after merging
    (then unmerged again, so the model is left as it was).

    Returns {"unmerged": s, "merged": s or None, "max_abs_diff": float or None}; the last is
    the largest change of the outputs caused by merging (float rounding only).
    """
    out = {"unmerged": inference_time(model, batch, repeats), "merged": None,
           "max_abs_diff": None}
    fns = merge_functions(model)
    if fns is None:
        return out
    merge, unmerge = fns
    with torch.no_grad(), eval_mode(model):
        before = logits_of(model, batch).float()
        merge(model)
        try:
            after = logits_of(model, batch).float()
            out["merged"] = inference_time(model, batch, repeats)
        finally:
            unmerge(model)
    out["max_abs_diff"] = float((before - after).abs().max())
    return out


# --- files -------------------------------------------------------------------------------------

def folder_size(path: str | Path) -> int:
    """Total bytes of the files in a folder (an adapter) or of one file."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def adapter_size(model: nn.Module, path: str | Path | None = None) -> int:
    """Bytes on disk of the model's adapter as pl.save_adapter writes it (to `path`, or to a
    temporary folder that is removed afterwards)."""
    if path is not None:
        return folder_size(save_adapter(model, path))
    with tempfile.TemporaryDirectory(prefix="peftlab-size-") as tmp:
        return folder_size(save_adapter(model, Path(tmp) / "adapter"))


# --- formatting --------------------------------------------------------------------------------

def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 KB' (binary units, as the memory columns print them)."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def threads() -> int:
    return torch.get_num_threads() or os.cpu_count() or 1
