"""Waiting in tests on a busy machine: deadlines from measured speed, and honest messages.

A test that waits (for a server to answer, a subprocess to exit, a page to show a step)
waits for that event; its deadline only guards against a hang. So a deadline here is the
time the wait needs on an idle machine, with room to spare, multiplied by how much slower
this machine runs *now*, measured when the wait starts (`slowdown()`). And running out of
time fails with a message that says the machine was slow, with the numbers, not that the
feature is broken:

    proc = timing.run([...], "the DDP run (2 processes)", 180, capture_output=True)
    timing.wait_until(lambda: server_up(), "peftlab serve to start", 240)
    deadline = time.monotonic() + timing.budget(30)

PEFTLAB_TEST_SLOWDOWN=3 multiplies every deadline further (a machine known to be slow).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

import pytest

T = TypeVar("T")
_worst = [1.0]        # the largest slowdown measured in this session


def contention(seconds: float = 0.1) -> float:
    """How many times longer than its own CPU time a CPU-bound loop takes right now: about
    1.0 on an idle machine, about 1.5 with two busy processes beside it on two cores."""
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    x = 0
    while time.perf_counter() - wall0 < seconds:
        for i in range(2000):
            x += i
    wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
    return wall / max(cpu, 1e-3)


def slowdown() -> float:
    """How much slower than idle this machine runs now (>= 1): the larger of the measured
    contention and the 1-minute load average per CPU, times PEFTLAB_TEST_SLOWDOWN."""
    load = os.getloadavg()[0] / (os.cpu_count() or 1) if hasattr(os, "getloadavg") else 0.0
    factor = max(1.0, contention(), load) * float(os.environ.get("PEFTLAB_TEST_SLOWDOWN", "1"))
    _worst[0] = max(_worst[0], factor)
    return factor


def worst() -> float:
    """The largest slowdown measured so far in this session (at least 1)."""
    return _worst[0]


def budget(idle_seconds: float) -> float:
    """A deadline in seconds: `idle_seconds` (generous on an idle machine) times the slowdown
    measured now."""
    return idle_seconds * slowdown()


def machine_note() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"load average {load} on {os.cpu_count()} CPUs; a CPU-bound loop runs "
            f"{contention():.1f}x its CPU time now; worst slowdown seen in this session "
            f"{worst():.1f}x")


def slow(what: str, waited: float, detail: str = "") -> NoReturn:
    """Fail saying the machine was too slow for `what`, not that the feature is broken."""
    pytest.fail(f"timed out: {what} took longer than {waited:.1f} s. This machine is busy or "
                f"slow ({machine_note()}); that is a timing failure, not evidence that the "
                f"feature is broken. Rerun on a quieter machine, or set PEFTLAB_TEST_SLOWDOWN "
                f"(e.g. 3) to allow more time.{' ' + detail if detail else ''}", pytrace=False)


def run(cmd, what: str, idle_seconds: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run with a timeout of budget(idle_seconds); running out fails as slow()."""
    limit = budget(idle_seconds)
    try:
        return subprocess.run(cmd, timeout=limit, check=kwargs.pop("check", False), **kwargs)
    except subprocess.TimeoutExpired as e:     # (fail outside the handler: no chained trace)
        tail = e.stderr or b""
    tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
    slow(what, limit, f"Its stderr so far ends: {tail[-1000:]!r}" if tail else "")


def wait_until(check: Callable[[], T], what: str, idle_seconds: float,
               interval: float = 0.2) -> T:
    """Call `check` until it returns something true, and return that; if it has not within
    budget(idle_seconds), fail as slow()."""
    limit = budget(idle_seconds)
    deadline = time.monotonic() + limit
    while not (result := check()):
        if time.monotonic() > deadline:
            slow(what, limit)
        time.sleep(interval)
    return result
