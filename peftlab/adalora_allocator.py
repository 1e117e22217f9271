"""AdaLoRA's rank allocator: importance scores, the budget schedule, re-masking.

The rule (Zhang et al., ICLR 2023, section 3), run once per training step by
`pl.after_step(model, step)` after optimizer.step() and before zero_grad():

  1. importance of every entry w of P, lambda and Q, from the step's gradient g:
         I       = |w * g|                                  (sensitivity)
         I_bar   = beta1 * I_bar + (1 - beta1) * I          (smoothed sensitivity, EMA)
         U_bar   = beta2 * U_bar + (1 - beta2) * |I - I_bar|   (uncertainty, EMA)
         s(w)    = I_bar * U_bar
  2. score of triplet i of a layer (P column i, lambda_i, Q row i):
         S_i = s(lambda_i) + mean_j s(P[j, i]) + mean_j s(Q[i, j])
  3. the budget b(t) (triplets kept over all layers) falls on a cubic schedule
     (budget_schedule); every delta_t steps the b(t) best triplets of the whole model keep
     their lambda, the others get lambda = 0. P and Q stay, so a triplet can come back.
  4. at step total_steps - tfinal the mask is fixed at target_r * n_matrices triplets and
     re-applied every later step.

All state lives in buffers of the SVD layers (see peftlab/adalora.py): the EMAs `ipt_*` and
`unc_*`, the `lora_mask` of kept triplets and the `rank_history` of ranks per step. So
model.to(device) and state_dict() carry it, and there is no side object to keep.

Formulas and order of operations follow Hugging Face PEFT's RankAllocator
(peft/tuners/adalora/layer.py), except that we keep exactly b(t) triplets (a stable sort)
where PEFT's `<= threshold` can drop more on ties.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class Budget(NamedTuple):
    budget: int   # number of triplets kept over all adapted matrices at this step
    mask: bool    # whether the allocator re-masks at this step


def budget_schedule(config, step: int, n_matrices: int = 1) -> Budget:
    """The budget b(t) after step `step` (0-based) for `n_matrices` adapted matrices.

        b0 = init_r * n,  bT = target_r * n,  T = total_steps
        t <= tinit:               b = b0                          (warm-up, no masking)
        tinit < t <= T - tfinal:  b = floor((b0 - bT) * (1 - (t - tinit) / (T - tfinal - tinit))**3
                                            + bT)
                                  masking when t % delta_t == 0
        t > T - tfinal:           b = bT, mask fixed              (final fine-tuning)

    A pure function of the config: plot it before training.
    """
    b0, bT = config.init_r * n_matrices, config.target_r * n_matrices
    T, t0, tf = config.total_steps, config.tinit, config.tfinal
    if step <= t0:
        return Budget(b0, False)
    if step > T - tf:
        return Budget(bT, True)
    left = 1 - (step - t0) / (T - tf - t0)
    return Budget(int((b0 - bT) * left ** 3 + bT), step % config.delta_t == 0)


# --- importance ------------------------------------------------------------------------------

def _triples(layer) -> list[tuple[str, nn.Parameter]]:
    return [("P", layer.lora_P), ("lambda", layer.lora_lambda), ("Q", layer.lora_Q)]


@torch.no_grad()
def update_importance(layers: dict, beta1: float, beta2: float) -> None:
    """Step 1: fold this step's |w * grad| into the EMA buffers of every layer."""
    if all(p.grad is None for layer in layers.values() for _, p in _triples(layer)):
        raise RuntimeError(
            "AdaLoRA's after_step found no gradients on the adapter: call pl.after_step(model, "
            "step) after loss.backward() and optimizer.step(), before optimizer.zero_grad().")
    for layer in layers.values():
        for key, p in _triples(layer):
            if p.grad is None:        # the layer took no part in this forward pass
                continue
            ipt, unc = getattr(layer, f"ipt_{key}"), getattr(layer, f"unc_{key}")
            sens = (p * p.grad).abs().to(ipt.dtype)                 # I = |w * g|
            ipt.mul_(beta1).add_(sens, alpha=1 - beta1)             # I_bar
            unc.mul_(beta2).add_((sens - ipt).abs(), alpha=1 - beta2)   # U_bar


def triplet_scores(layer) -> torch.Tensor:
    """Step 2: S_i = s(lambda_i) + mean_j s(P[j, i]) + mean_j s(Q[i, j]); shape (init_r,)."""
    s_p = layer.ipt_P * layer.unc_P             # (out, r)
    s_l = layer.ipt_lambda * layer.unc_lambda   # (r,)
    s_q = layer.ipt_Q * layer.unc_Q             # (r, in)
    return s_l + s_p.mean(dim=0) + s_q.mean(dim=1)


@torch.no_grad()
def mask_to_budget(layers: dict, budget: int) -> None:
    """Step 3: keep the `budget` best-scoring triplets of the model; zero the other lambdas."""
    names = list(layers)
    scores = torch.cat([triplet_scores(layers[n]).float().cpu() for n in names])   # (sum r,)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    if budget > 0:
        order = torch.argsort(scores, descending=True, stable=True)   # ties: earlier first
        keep[order[:budget]] = True
    start = 0
    for n in names:
        layer = layers[n]
        r = layer.lora_mask.numel()
        layer.lora_mask.copy_(keep[start:start + r])
        start += r
        apply_mask(layer)


@torch.no_grad()
def apply_mask(layer) -> None:
    """lambda_i = 0 wherever the layer's mask says the triplet is dropped."""
    layer.lora_lambda.masked_fill_(~layer.lora_mask, 0.0)


# --- the per-step entry point ------------------------------------------------------------------

def allocate(layers: dict, config, step: int) -> None:
    """One allocator step (what pl.after_step does for AdaLoRA); `step` is 0-based.

    Follows PEFT's update_and_allocate: score while t < T - tfinal and re-mask on the
    schedule; at t == T - tfinal mask to the final budget; later re-apply that fixed mask.
    """
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"after_step needs the 0-based index of the step just taken "
                         f"(an int >= 0), got {step!r}.")
    T, tf, n = config.total_steps, config.tfinal, len(layers)
    if step < T - tf:
        update_importance(layers, config.beta1, config.beta2)
        budget, mask_now = budget_schedule(config, step, n)
        if mask_now:
            mask_to_budget(layers, budget)
    elif step == T - tf:
        mask_to_budget(layers, config.target_r * n)
    else:
        for layer in layers.values():
            apply_mask(layer)
    if step < T:
        for layer in layers.values():
            layer.rank_history[step] = layer.lora_mask.sum()      # no host sync on GPU
