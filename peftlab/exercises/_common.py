"""What every checker shares: the verdict object and the plain-words comparison helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class CheckResult:
    """The verdict of an exercise checker: passed (also its truth value) and a message
    saying what is right or what to look at; prints as PASS / NOT YET."""

    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return ("PASS: " if self.passed else "NOT YET: ") + self.message

    def _repr_html_(self) -> str:
        color = "#2e7d32" if self.passed else "#c62828"
        return f"<p style='color:{color}'><b>{'PASS' if self.passed else 'NOT YET'}</b>: " \
               f"{self.message}</p>"


def verdict(passed: bool, message: str, quiet: bool) -> CheckResult:
    result = CheckResult(passed, message)
    if not quiet:
        print(result)
    return result


def call(fn: Callable, *args):
    """(result, None), or (None, a sentence) when the learner's function raised."""
    try:
        return fn(*args), None
    except Exception as e:  # the learner's code raised: report it in words
        return None, f"your function raised {type(e).__name__}: {e}"


def compare(got, want: torch.Tensor, what: str, atol: float = 1e-5, rtol: float = 1e-4) -> str | None:
    """None when `got` equals `want` (shape and values), else what differs, in words."""
    if not torch.is_tensor(got):
        return f"{what}: expected a tensor, got {type(got).__name__}."
    if tuple(got.shape) != tuple(want.shape):
        return f"{what}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}."
    if not torch.allclose(got.detach().float(), want.float(), atol=atol, rtol=rtol):
        err = (got.detach().float() - want.float()).abs().max().item()
        return f"{what}: values differ from the reference by up to {err:.3g}."
    return None


def close(got, want: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """`got` is a tensor shaped like `want` with (nearly) the same values: for diagnoses."""
    return (torch.is_tensor(got) and got.shape == want.shape
            and torch.allclose(got.detach().float(), want.float(), rtol=rtol, atol=atol))
