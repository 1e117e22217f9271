"""Every checker passes its solution and rejects a deliberately wrong answer, in words."""

import sys
from pathlib import Path

import pytest
import torch

from peftlab import exercises

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks" / "solutions"))
import exercise_solutions as sol  # noqa: E402

WRONG = {
    "check_lora_forward": (lambda x, W, b, A, B, alpha, r: x @ W.T + b + x @ A.T @ B.T,
                           "not scaled"),
    "check_lora_merge": (lambda W, A, B, alpha, r: (W + (alpha / r) * B @ A).T, "transposed"),
    "check_lora_count": (lambda d_in, d_out, r: d_in * d_out, "full matrix"),
    "check_prefix_attention": (
        lambda q, k, v, pk, pv, mask: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask.bool()[:, None, None, :]), "without the prefix"),
    "check_topk_mask": (lambda s, k: sol.topk_mask(-s, k), "smallest"),
    "check_row_mask": (lambda s, k: sol.row_mask(s.T, k).T if s.shape[0] >= k else None,
                       "rows keep|ranked along columns|shaped"),
    "check_budget": (lambda step, b0, bT, t0, tf, T: b0 - (b0 - bT) * step / T, "at step"),
}


def test_every_checker_has_a_solution_and_a_wrong_answer():
    assert set(exercises.CHECKERS) == set(sol.SOLUTIONS) == set(WRONG)


@pytest.mark.parametrize("name", sorted(exercises.CHECKERS))
def test_checker_accepts_solution(name, capsys):
    result = exercises.CHECKERS[name](sol.SOLUTIONS[name])
    assert result.passed, result.message
    assert "PASS" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(exercises.CHECKERS))
def test_checker_rejects_wrong_answer_in_words(name):
    wrong, words = WRONG[name]
    result = exercises.CHECKERS[name](wrong, quiet=True)
    assert not result.passed
    assert __import__("re").search(words, result.message), result.message


def test_checker_reports_an_exception():
    def broken(*args):
        raise KeyError("oops")
    result = exercises.check_lora_forward(broken, quiet=True)
    assert not result.passed and "KeyError" in result.message
