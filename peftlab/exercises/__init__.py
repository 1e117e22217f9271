"""Checkers for the course exercises: test your implementation against the library.

Each checker takes your function, runs it on a few seeded inputs next to peftlab's own
implementation, and says in plain words what is wrong (or that all is well):

    from peftlab.exercises import check_lora_forward
    check_lora_forward(my_lora_forward)        # prints a verdict, returns a CheckResult

| checker | your function | notebook |
|---|---|---|
| check_lora_forward     | (x, W, b, A, B, alpha, r) -> y                       | 02 |
| check_lora_merge       | (W, A, B, alpha, r) -> merged W                      | 02 |
| check_lora_count       | (d_in, d_out, r) -> number of LoRA parameters        | 02 |
| check_prefix_attention | (q, k, v, prefix_k, prefix_v, mask) -> attention output | 03 |
| check_topk_mask        | (scores, k) -> bool mask of the k largest entries    | 04 |
| check_row_mask         | (scores, k_per_row) -> bool mask, top k in every row | 04 |
| check_fisher_score     | (model, batches, loss_fn, name) -> empirical Fisher  | 04 |
| check_budget           | (step, init_budget, target_budget, tinit, tfinal, total_steps) -> budget | 05 |
| check_triplet_scores   | (layer) -> (r,) AdaLoRA triplet scores               | 05 |
| check_conv_lora_delta  | (A, B, scale) -> (C_out, C_in, k, k) kernel update   | 07 |
| check_pareto_front     | (points) -> names on the accuracy/cost Pareto front  | 06 |
| check_mixed_lora       | (x, W, b, adapters, names) -> y, row i via adapter names[i] | 09 |

Every checker compares with the library's own function (peftlab.lora's layers,
peftlab.prefix.prefix_attention, peftlab.selection.compute_scores / make_masks,
peftlab.adalora.budget_schedule / triplet_scores, peftlab.lora's routed mixed batches,
peftlab.compare.report.pareto_front).
Solutions are kept apart, in notebooks/solutions/, so an instructor can hand out the course
without them.
"""

from __future__ import annotations

from peftlab.exercises._common import CheckResult
from peftlab.exercises.adalora import check_budget, check_triplet_scores
from peftlab.exercises.compare import check_pareto_front
from peftlab.exercises.lora import (check_conv_lora_delta, check_lora_count, check_lora_forward,
                                    check_lora_merge)
from peftlab.exercises.prefix import check_prefix_attention, prefix_attention
from peftlab.exercises.selection import check_fisher_score, check_row_mask, check_topk_mask
from peftlab.exercises.serve import check_mixed_lora

CHECKERS = {
    "check_lora_forward": check_lora_forward,
    "check_lora_merge": check_lora_merge,
    "check_lora_count": check_lora_count,
    "check_prefix_attention": check_prefix_attention,
    "check_topk_mask": check_topk_mask,
    "check_row_mask": check_row_mask,
    "check_fisher_score": check_fisher_score,
    "check_budget": check_budget,
    "check_triplet_scores": check_triplet_scores,
    "check_conv_lora_delta": check_conv_lora_delta,
    "check_mixed_lora": check_mixed_lora,
    "check_pareto_front": check_pareto_front,
}

__all__ = ["CHECKERS", "CheckResult", "prefix_attention", *CHECKERS]
