"""Mixed precision: which number format the forward pass runs in, on CPU and GPU.

    fit(..., precision="fp32")   # everything in float32 (the default; what notebooks check)
    fit(..., precision="bf16")   # autocast to bfloat16 where the hardware has it
    fit(..., precision="fp16")   # CUDA only: float16 autocast with loss scaling
    fit(..., precision="auto")   # bf16 where supported and measured faster, else fp32 (CPU);
                                 # bf16, else fp16 with loss scaling (CUDA). amp=True means "auto".

What stays float32 under autocast (Micikevicius et al., 2018, "Mixed Precision Training"): the
master weights (every parameter, adapters included), their gradients, the optimizer state, and
the loss (peftlab's loss_fn casts the logits to float32 before the cross-entropy). Only the
matrix products inside the forward (and their backward) run in 16 bits. AdaLoRA's importance
scores and selection's Fisher scores are computed from these float32 gradients.

Why bf16 needs no loss scaling and fp16 does: bfloat16 keeps float32's 8 exponent bits (range
up to ~3e38, smallest normal ~1e-38) and gives up mantissa bits (8 instead of 24), so small
gradients do not underflow. float16 has 5 exponent bits (smallest normal ~6e-5): gradients
below that flush to zero unless the loss is scaled up first and the gradients scaled back
(torch.amp.GradScaler), which is what "fp16" does on CUDA.

On the CPU, bf16 is fast only where the processor has bf16 instructions (Intel AMX or
AVX512-BF16, Arm's BF16 extension); elsewhere PyTorch emulates it and it is much slower than
float32. `cpu_bf16_support()` reads the processor's flags once; asking for bf16 on a CPU
without them runs float32 and says so in one line.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
import warnings
from dataclasses import dataclass

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
# instruction-set flags (Linux /proc/cpuinfo) that make bf16 matrix products native
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")   # Intel AMX, Intel/AMD AVX512-BF16, Arm BF16
FORCE_ENV = "PEFTLAB_CPU_BF16"                      # "1" / "0": override the detection (tests)


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_support() -> dict:
    """What this CPU offers for bf16: {"supported", "flags", "isa", "processor", "source"}.

    supported: True when the processor has native bf16 instructions (see BF16_FLAGS). The
    environment variable PEFTLAB_CPU_BF16=1/0 overrides the answer (for tests and for
    processors this check does not know)."""
    flags = sorted(f for f in _cpu_flags() if f in BF16_FLAGS)
    forced = os.environ.get(FORCE_ENV)
    if forced in ("0", "1"):
        supported, source = forced == "1", f"${FORCE_ENV}={forced}"
    else:
        supported, source = bool(flags), "/proc/cpuinfo" if _cpu_flags() else "unknown"
    return {"supported": supported, "flags": flags, "source": source,
            "isa": torch.backends.cpu.get_cpu_capability(),
            "processor": platform.processor() or platform.machine()}


@functools.lru_cache(maxsize=1)
def _bf16_faster_on_cpu() -> bool:
    """A 30 ms micro-benchmark: is a bf16 matrix product faster than a float32 one here?"""
    a32, b32 = torch.randn(256, 1024), torch.randn(1024, 1024)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    times = {"fp32": [], "bf16": []}
    for _ in range(4):                      # interleaved, so a burst of load hits both alike
        for name, (a, b) in (("fp32", (a32, b32)), ("bf16", (a16, b16))):
            t0 = time.perf_counter()
            a @ b
            times[name].append(time.perf_counter() - t0)
    return min(times["bf16"]) < 0.8 * min(times["fp32"])


@dataclass(frozen=True)
class Precision:
    """The precision a run uses. name: what runs ("fp32", "bf16" or "fp16"); requested: what
    was asked for; dtype: the autocast dtype (None for fp32); scaler: fp16 loss scaling on;
    note: one line saying why the request was changed ("" when it was not)."""

    name: str
    requested: str
    dtype: torch.dtype | None = None
    scaler: bool = False
    note: str = ""

    def autocast(self, device: torch.device):
        """The autocast context for the forward pass and loss (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


def resolve_precision(precision: str = "fp32", device: torch.device | str = "cpu",
                      amp: bool = False) -> Precision:
    """The Precision to use for `precision` on `device`. amp=True is a synonym of "auto".

    Raises ValueError for an unknown name, and for fp16 on a CPU (float16 autocast is a CUDA
    technique: CPUs have no fast float16 matrix units in PyTorch, use bf16)."""
    if amp and precision in ("fp32", None):
        precision = "auto"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    device = torch.device(device)
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if precision == "fp32":
            return Precision("fp32", precision)
        if precision == "fp16" or (precision == "auto" and not bf16):
            return Precision("fp16", precision, torch.float16, scaler=True)
        if precision == "bf16" and not bf16:
            return Precision("fp16", precision, torch.float16, scaler=True,
                             note="this GPU has no bf16: using fp16 with loss scaling")
        return Precision("bf16", precision, torch.bfloat16)
    if device.type != "cpu" or precision == "fp32":
        note = "" if precision == "fp32" else \
            f"mixed precision is not supported on {device.type} here: using fp32"
        return Precision("fp32", precision, note=note)
    if precision == "fp16":
        raise ValueError("precision='fp16' needs a CUDA GPU; on the CPU use 'bf16' (or 'auto').")
    support = cpu_bf16_support()
    if not support["supported"]:
        note = "" if precision == "auto" else \
            (f"this CPU ({support['isa']}) has no bf16 instructions (AMX / AVX512-BF16), where "
             f"bf16 is emulated and much slower: using fp32")
        return Precision("fp32", precision, note=note)
    if precision == "auto" and not _bf16_faster_on_cpu():
        return Precision("fp32", precision)
    return Precision("bf16", precision, torch.bfloat16)


def announce(p: Precision) -> None:
    """Say, in one line, that the request was changed (a UserWarning, shown once per place)."""
    if p.note:
        warnings.warn(f"precision={p.requested!r}: {p.note}.", UserWarning, stacklevel=3)
