"""Memory peaks of a training run: the device's allocator peak (CUDA) or the process's
resident set (CPU), and the peak above a baseline taken when the base model is loaded.

Part of pl.measure (re-exported there); see peftlab/measure.py for what each number means.
"""

from __future__ import annotations

import torch


def peak_memory_bytes(device: torch.device | str) -> int | None:
    """The CUDA allocator's peak since the last reset; None off CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux only); True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux: VmHWM since the last reset_peak_rss;
    elsewhere the lifetime peak from getrusage), in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def rss_bytes() -> int | None:
    """Resident memory of this process now (Linux: VmRSS), in bytes; None where unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakAboveBaseline:
    """Measured peak memory of a phase, above the memory held when it starts.

        meter = PeakAboveBaseline(device)   # baseline: now (e.g. right after the model loaded)
        ... setup ...;  meter.sample()       # record the peak so far
        ... training (fit resets the counters itself) ...;  meter.sample()
        meter.peak                           # bytes above the baseline, the largest sample

    CPU: the kernel's peak resident set size (VmHWM, reset at the start) minus the resident
    size at the start: every byte the phase made resident, temporaries included. Honest only
    in a fresh process: memory an earlier phase freed may be reused without being counted
    (peftlab compare runs each method in its own process). CUDA: the allocator's peak
    (max_memory_allocated) minus what was allocated at the start. Elsewhere: None.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.peak = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "CUDA allocator peak above the model-loaded baseline"
        else:
            self.baseline = rss_bytes() if reset_peak_rss() else None
            self.kind = "peak RSS above the model-loaded baseline"

    def sample(self) -> int | None:
        if self.device.type == "cuda":
            now = torch.cuda.max_memory_allocated(self.device)
        elif self.baseline is not None:
            now = peak_rss_bytes()
        else:
            return None
        above = max(0, now - self.baseline)
        self.peak = above if self.peak is None else max(self.peak, above)
        return self.peak
