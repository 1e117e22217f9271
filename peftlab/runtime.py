"""Device choice and seeding: the two things every notebook cell starts with.

    device = pl.runtime.get_device()      # CUDA, then Apple MPS, then CPU
    pl.runtime.seed_everything(0)         # Python, NumPy and torch in one call

The environment variable PEFTLAB_DEVICE overrides the automatic choice (e.g. to force
"cpu" on a laptop with a small GPU); an explicit argument overrides both.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

_VALID = ("cpu", "cuda", "mps")


def get_device(device: str | torch.device | None = None) -> torch.device:
    """Return the device to train on.

    Order of precedence: the `device` argument, then $PEFTLAB_DEVICE, then the first
    available of CUDA, MPS, CPU. Asking for a device that is not there raises, naming what is.
    """
    if device is None:
        device = os.environ.get("PEFTLAB_DEVICE") or None
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device) if not isinstance(device, torch.device) else device
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in _VALID:
        raise ValueError(f"Unknown device {str(device)!r}: use one of {', '.join(_VALID)} "
                         f"(available here: {', '.join(available_devices())}).")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {str(device)!r} was requested but CUDA is not available here; "
                         f"available: {', '.join(available_devices())}. Pass device='cpu'.")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                  and torch.backends.mps.is_available()):
        raise ValueError(f"Device {str(device)!r} was requested but Apple MPS is not available "
                         f"here; available: {', '.join(available_devices())}.")
    return dev


def available_devices() -> list[str]:
    """Names of the device types this machine can use, CPU always last."""
    out = []
    if torch.cuda.is_available():
        out.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    out.append("cpu")
    return out


def seed_everything(seed: int = 0, deterministic: bool = True) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and all GPUs); return a torch.Generator seeded alike.

    With `deterministic=True`, torch picks deterministic kernels where it has them, so the
    same seed gives the same numbers on CPU (what lets nbval check notebook outputs).
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def online(host: str = "huggingface.co", port: int = 443, timeout: float = 2.0) -> bool:
    """True if the Hugging Face hub is reachable (and HF_HUB_OFFLINE is not set).

    Notebooks use it to skip their online-only cells cleanly on an offline machine.
    """
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or \
            os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("", "0"):
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
