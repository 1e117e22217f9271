"""The math of AdaLoRA (Zhang et al., "Adaptive Budget Allocation for Parameter-Efficient
Fine-Tuning", ICLR 2023): an SVD-form update and the allocator that moves rank between layers.

Each adapted weight W (out x in) gets an update in SVD form

    h = W x + scale * P diag(lambda) Q x,     scale = alpha / init_r
    P: (out, init_r) left vectors, lambda: (init_r,) singular values, Q: (init_r, in) right vectors

lambda starts at zero (training starts from the base model), P and Q ~ N(0, 0.02) as in
Hugging Face PEFT. Dropping a triplet i means lambda_i = 0, nothing else: P[:, i] and Q[i]
stay, so the allocator can bring it back. The penalty ||P^T P - I||_F^2 + ||Q Q^T - I||_F^2
(orthogonality, in surgery.regularization) keeps P and Q near-orthogonal, so lambda behaves
like singular values and dropping the small ones loses little.

The allocator (section 3 of the paper), run once per training step by
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

All state lives in buffers of the SVD layers (SVDLinear below): the EMAs `ipt_*` and
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

from peftlab.core.layers import AdapterLayer, adapter_dtype, is_conv1d, linear_dims

# --- the layer ---------------------------------------------------------------------------------

class SVDLinear(AdapterLayer):
    """A frozen Linear plus scale * P diag(lambda) Q, with the allocator's state as buffers.

    Parameters: lora_P (out, r), lora_lambda (r,), lora_Q (r, in); fp32 on fp16 / bf16 bases
    (the update is cast back to the base's dtype), else the base's dtype.
    Buffers: lora_mask (r,) bool, kept triplets; ipt_* / unc_* the importance EMAs, shaped like
    P, lambda, Q; rank_history (total_steps,) int32, rank after each step (-1: not yet).
    merge() folds the update into the base weight (`merged` flag; merging twice is a no-op).
    """

    method = "adalora"

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float,
                 total_steps: int):
        super().__init__()
        self.base_layer = base_layer
        w = base_layer.weight
        self.in_features, self.out_features = linear_dims(base_layer)
        self.r, self.scale = r, alpha / r
        self.merged = False   # True while scale * P diag(lambda) Q sits inside the base weight
        kw = dict(device=w.device, dtype=adapter_dtype(w))
        self.lora_P = nn.Parameter(torch.randn(self.out_features, r, **kw) * 0.02)  # (out, r)
        self.lora_lambda = nn.Parameter(torch.zeros(r, **kw))                      # (r,)
        self.lora_Q = nn.Parameter(torch.randn(r, self.in_features, **kw) * 0.02)   # (r, in)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.register_buffer("lora_mask", torch.ones(r, dtype=torch.bool, device=w.device))
        for key, p in (("P", self.lora_P), ("lambda", self.lora_lambda), ("Q", self.lora_Q)):
            self.register_buffer(f"ipt_{key}", torch.zeros_like(p, dtype=torch.float32))
            self.register_buffer(f"unc_{key}", torch.zeros_like(p, dtype=torch.float32))
        self.register_buffer("rank_history",
                             torch.full((total_steps,), -1, dtype=torch.int32, device=w.device))

    def delta_weight(self) -> torch.Tensor:
        """scale * P diag(lambda) Q, shape (out, in) like nn.Linear's weight."""
        return (self.lora_P * self.lora_lambda) @ self.lora_Q * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + scale * P diag(lambda) Q (transposed for a Conv1D base). No-op if merged."""
        if not self.merged:
            self.base_layer.weight.add_(self._delta_for_merge())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - scale * P diag(lambda) Q. A no-op when not merged."""
        if self.merged:
            self.base_layer.weight.sub_(self._delta_for_merge())
            self.merged = False

    def _delta_for_merge(self) -> torch.Tensor:
        d = self.delta_weight().float()
        return (d.T if is_conv1d(self.base_layer) else d).to(self.base_layer.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)                                     # (..., out)
        if self.merged:
            return out
        h = self.dropout(x).to(self.lora_Q.dtype) @ self.lora_Q.T    # (..., r)
        h = h * (self.lora_lambda * self.scale)                    # (..., r)
        return out + (h @ self.lora_P.T).to(out.dtype)               # (..., out)

    @property
    def rank(self) -> int:
        """Triplets the allocator keeps now."""
        return int(self.lora_mask.sum())

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, init_r={self.r}, "
                f"rank={self.rank}, merged={self.merged}")


def orthogonality_penalty(P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """||P^T P - I||_F^2 + ||Q Q^T - I||_F^2 in fp32, P: (out, r), Q: (r, in) (the paper's R).

    (PEFT uses the unsquared norm averaged over the 2n matrices; we follow the paper.)"""
    P, Q = P.float(), Q.float()
    eye = torch.eye(P.shape[1], device=P.device)
    return ((P.T @ P - eye) ** 2).sum() + ((Q @ Q.T - eye) ** 2).sum()


# --- the budget ---------------------------------------------------------------------------------

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
def update_importance(layers: dict, beta1: float, beta2: float) -> bool:
    """Step 1: fold this step's |w * grad| into the EMA buffers of every layer.

    A step whose adapter gradients are not all finite (an fp16 overflow: the loss scaler
    skipped that optimizer step) is skipped here too, so one bad step cannot fill the EMAs
    with inf / NaN for good. Returns whether the EMAs were updated."""
    grads = [p.grad for layer in layers.values() for _, p in _triples(layer) if p.grad is not None]
    if not grads:
        raise RuntimeError(
            "AdaLoRA's after_step found no gradients on the adapter: call pl.after_step(model, "
            "step) after loss.backward() and optimizer.step(), before optimizer.zero_grad().")
    if not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
        return False
    for layer in layers.values():
        for key, p in _triples(layer):
            if p.grad is None:        # the layer took no part in this forward pass
                continue
            ipt, unc = getattr(layer, f"ipt_{key}"), getattr(layer, f"unc_{key}")
            sens = (p * p.grad).abs().to(ipt.dtype)                 # I = |w * g|
            ipt.mul_(beta1).add_(sens, alpha=1 - beta1)             # I_bar
            unc.mul_(beta2).add_((sens - ipt).abs(), alpha=1 - beta2)   # U_bar
    return True


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
    If the step T - tfinal was never seen (a loss scaler skipped it), the first later step
    masks to the final budget instead. Steps with non-finite gradients do not score.
    """
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"after_step needs the 0-based index of the step just taken "
                         f"(an int >= 0), got {step!r}.")
    if any(layer.merged for layer in layers.values()):
        raise RuntimeError("AdaLoRA is merged into the base weights: call "
                           "pl.adalora.unmerge(model) before training on.")
    T, tf, n = config.total_steps, config.tfinal, len(layers)
    first = next(iter(layers.values()))
    if step < T - tf:
        if update_importance(layers, config.beta1, config.beta2):
            budget, mask_now = budget_schedule(config, step, n)
            if mask_now:
                mask_to_budget(layers, budget)
    elif step == T - tf or int(first.rank_history[T - tf]) < 0:
        mask_to_budget(layers, config.target_r * n)
    else:
        for layer in layers.values():
            apply_mask(layer)
    if step < T:
        for layer in layers.values():
            layer.rank_history[step] = layer.lora_mask.sum()      # no host sync on GPU
