"""Every checker passes its solution and rejects deliberately wrong answers, in words."""

import re
import sys
from pathlib import Path

import pytest
import torch

from peftlab import exercises

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks" / "solutions"))
import exercise_solutions as sol  # noqa: E402


def _per_batch_fisher(model, batches, loss_fn, name):
    p = dict(model.named_parameters())[name]
    gs = [torch.autograd.grad(loss_fn(model, b), [p])[0] for b in batches]
    return sum(g ** 2 for g in gs) / len(gs)


def _summed_fisher(model, batches, loss_fn, name):
    n = sum(len(y) for _, y in batches)
    return sol.fisher_score(model, batches, loss_fn, name) * n


def _training_step(model, batches, loss_fn, name):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn(model, batches[0]).backward()
    opt.step()
    return sol.fisher_score(model, batches, loss_fn, name)


def _unscaled_conv(A, B, scale):
    return sol.conv_lora_delta(A, B, 1.0)


def _matrix_view(A, B, scale):
    return scale * B[:, :, 0, 0] @ A.reshape(A.shape[0], -1)


# checker -> [(wrong function, words the message must contain), ...]
WRONG = {
    "check_lora_forward": [(lambda x, W, b, A, B, alpha, r: x @ W.T + b + x @ A.T @ B.T,
                            "not scaled"),
                           (lambda x, W, b, A, B, alpha, r: x @ W.T + b, "missing")],
    "check_lora_merge": [(lambda W, A, B, alpha, r: (W + (alpha / r) * B @ A).T, "transposed")],
    "check_lora_count": [(lambda d_in, d_out, r: d_in * d_out, "full matrix"),
                         (lambda d_in, d_out, r: d_in * r, "only one")],
    "check_prefix_attention": [(
        lambda q, k, v, pk, pv, mask: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask.bool()[:, None, None, :]), "without the prefix")],
    "check_topk_mask": [(lambda s, k: sol.topk_mask(-s, k), "smallest")],
    "check_row_mask": [(lambda s, k: sol.row_mask(s.T, k).T if s.shape[0] >= k else None,
                        "rows keep|ranked along columns|shaped")],
    "check_fisher_score": [(_per_batch_fisher, "per-batch estimator"),
                           (_summed_fisher, "summed over the 10 examples"),
                           (_training_step, "changed the model's weights")],
    "check_budget": [(lambda step, b0, bT, t0, tf, T: b0 - (b0 - bT) * step / T, "at step")],
    "check_triplet_scores": [
        (lambda m: m.ipt_lambda * m.unc_lambda + (m.ipt_P * m.unc_P).sum(0)
         + (m.ipt_Q * m.unc_Q).sum(1), "summed s\\(P\\)"),
        (lambda m: m.ipt_lambda + m.ipt_P.mean(0) + m.ipt_Q.mean(1), "uncertainty"),
        (lambda m: m.ipt_lambda * m.unc_lambda, "Only lambda")],
    "check_conv_lora_delta": [(_unscaled_conv, "not scaled"), (_matrix_view, "matrix view"),
                              (lambda A, B, s: sol.conv_lora_delta(A, B, s).transpose(0, 1),
                               "expected shape")],
    "check_mixed_lora": [
        (lambda x, W, b, ad, names: sol.mixed_lora(x, W, b, ad, [names[0]] * len(names)),
         "first row"),
        (lambda x, W, b, ad, names: x @ W.T + b + sum(s * (x @ A.T @ B.T) for A, B, s in ad.values()),
         "every adapter's update to every row"),
        (lambda x, W, b, ad, names: x @ W.T + b, "base layer alone"),
        (lambda x, W, b, ad, names: sol.mixed_lora(x, W, b, ad, [n or "sales" for n in names]),
         "None must get the base"),
        (lambda x, W, b, ad, names: sol.mixed_lora(
            x, W, b, {k: (A, B, 1.0) for k, (A, B, s) in ad.items()}, names), "scale")],
    "check_pareto_front": [
        (lambda pts: [n for n, _, _ in sorted(pts, key=lambda p: p[1])], "is dominated"),
        (lambda pts: sol.pareto_front(pts)[::-1], "cheapest first"),
        (lambda pts: sol.pareto_front(pts)[:-1], "is missing")],
}


def test_every_checker_has_a_solution_and_a_wrong_answer():
    assert set(exercises.CHECKERS) == set(sol.SOLUTIONS) == set(WRONG)
    for name in exercises.CHECKERS:
        assert getattr(exercises, name) is exercises.CHECKERS[name]     # importable by name


@pytest.mark.parametrize("name", sorted(exercises.CHECKERS))
def test_checker_accepts_solution(name, capsys):
    result = exercises.CHECKERS[name](sol.SOLUTIONS[name])
    assert result.passed, result.message
    assert "PASS" in capsys.readouterr().out


@pytest.mark.parametrize("name,case", [(n, i) for n in sorted(WRONG) for i in range(len(WRONG[n]))])
def test_checker_rejects_wrong_answer_in_words(name, case):
    wrong, words = WRONG[name][case]
    result = exercises.CHECKERS[name](wrong, quiet=True)
    assert not result.passed
    assert "NOT YET" in str(result)
    assert re.search(words, result.message), result.message


def test_checker_reports_an_exception():
    def broken(*args):
        raise KeyError("oops")
    for checker in exercises.CHECKERS.values():
        result = checker(broken, quiet=True)
        assert not result.passed and "KeyError" in result.message


def test_fisher_checker_agrees_with_autograd_by_hand():
    """The reference itself: compute_scores' per-example Fisher equals a loop of autograd calls."""
    from peftlab.exercises.selection import _fisher_case, _loss
    from peftlab.selection import compute_scores

    model, batches = _fisher_case()
    want = sol.fisher_score(model, batches, _loss, "0.weight")
    got = compute_scores(model, batches, loss_fn=_loss, kind="fisher")["0.weight"]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-9)


def test_conv_delta_reference_is_the_kernel_of_the_lora_layer():
    """delta_weight, folded into a plain conv, reproduces the LoRA conv's output."""
    from peftlab.lora import LoraConv2d

    torch.manual_seed(0)
    layer = LoraConv2d(torch.nn.Conv2d(3, 4, 3, padding=1), r=2, alpha=4.0)
    torch.nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(1, 3, 5, 5)
    base = layer.base_layer
    with torch.no_grad():
        merged = torch.nn.functional.conv2d(x, base.weight + layer.delta_weight(), base.bias,
                                            padding=1)
        assert torch.allclose(merged, layer(x), atol=1e-5)


def test_expected_numbers_agree_with_independent_counts():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks" / "solutions"))
    import expected_numbers as ex

    assert ex.layer_params() == ex.layer_params_by_hand()
    r, count, budget = ex.largest_rank_under_qv_budget()
    assert count < budget and ex.lora_count(384, 384, 8) == 6144
    six_per_rank = 6 * (4 * (384 + 384) + 2 * (384 + 1536))        # one rank on six maps x 6 blocks
    assert r == (budget - 1) // six_per_rank
    name, n = ex.largest_conv_lora(r=4)
    import peftlab as pl
    model = pl.models.vision_classifier(5)
    pl.lora.apply(model, pl.lora.LoraConfig(r=4, alpha=8, targets=[name]))
    assert n == sum(p.numel() for k, p in model.named_parameters() if "lora_" in k)
    assert ex.llama_qv_lora(r=4) == 2 * (4 * (64 + 64) + 4 * (64 + 32)) + 64 * 2
