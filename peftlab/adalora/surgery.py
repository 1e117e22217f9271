"""AdaLoRA: SVD-form adapters whose ranks move to where they matter (Zhang et al., ICLR 2023).

    cfg = pl.adalora.AdaLoraConfig(init_r=12, target_r=4, targets=["query", "value"],
                                   total_steps=300, tinit=30, tfinal=60)
    pl.adalora.apply(model, cfg)
    ... loss = loss_fn(model, batch) + pl.regularization(model)    # orthogonality penalty
        loss.backward(); opt.step(); pl.after_step(model, step); opt.zero_grad()
    pl.adalora.rank_pattern(model)     # {"...layer.0.attention.self.query": 5, ...}
    pl.adalora.history(model)          # steps, budget, ranks per matrix (for plots, widgets)
    pl.adalora.to_lora(model)          # plain LoRA layers of the final ranks
    pl.adalora.merge(model); pl.adalora.unmerge(model)   # W <- W +- scale * P diag(lambda) Q
    pl.adalora.unload(model, merge=True)                 # a plain model (merge=False: the base)

The math (SVDLinear, the budget schedule, importance scores, the allocator) is in
peftlab/adalora/adalora.py; this file is the surgery on a model and what the allocator did;
saving and the Hugging Face PEFT format are in peftlab/adalora/format.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from peftlab.adalora.adalora import SVDLinear, allocate, budget_schedule, orthogonality_penalty
from peftlab.core.adapt import Plan, adapt, heads_for
from peftlab.core.errors import check_number
from peftlab.core.layers import LINEAR_TYPES
from peftlab.core.state import get_config, get_method, mark, method_state, restore, unmark
from peftlab.core.targets import find_targets, replace_module
from peftlab.lora.lora import LoraLayer, LoraLinear
from peftlab.lora.surgery import LoraConfig


@dataclass
class AdaLoraConfig:
    """AdaLoRA: SVD-form adapters P diag(lambda) Q whose ranks move to where they matter,
    under a budget that falls from init_r to target_r per matrix on average.

    init_r: rank every matrix starts with (paper: about 1.5x the final average).
    target_r: average rank at the end; final budget = target_r * number of matrices.
    targets: modules to adapt (Linear / Conv1D), matched as in peftlab/core/targets.py.
    total_steps: optimizer steps of the whole run; the budget schedule is laid out on it.
    tinit: warm-up steps at the full budget before any rank is dropped.
    tfinal: last steps with the mask fixed (>= 1: fixed from step total_steps - tfinal).
    delta_t: re-mask every delta_t steps while the budget falls.
    beta1: EMA factor of the sensitivity |w * grad| (paper: 0.85).
    beta2: EMA factor of its uncertainty |I - I_bar| (paper: 0.85).
    orth_reg_weight: weight of the orthogonality penalty added by pl.regularization.
    alpha: the update scale is alpha / init_r (PEFT: lora_alpha / ranknum).
    dropout: dropout on the adapter's input only.
    modules_to_save: modules also trained in full; None: the detected output head; []: none
        (the one heads rule, peftlab/core/adapt.py).
    """

    method = "adalora"
    init_r: int = 12
    target_r: int = 8
    targets: list = field(default_factory=lambda: ["query", "value"])
    total_steps: int = 1000
    tinit: int = 0
    tfinal: int = 1
    delta_t: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.1
    alpha: float = 16.0
    dropout: float = 0.0
    modules_to_save: list | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field and the fix; called again by apply()."""
        def need(ok, msg):
            if not ok:
                raise ValueError(f"AdaLoraConfig: {msg}")
        for f in ("init_r", "target_r", "total_steps", "tinit", "tfinal", "delta_t"):
            v = getattr(self, f)
            need(isinstance(v, int) and not isinstance(v, bool), f"{f} must be an int, got {v!r}.")
        need(self.init_r >= 1, f"init_r must be >= 1, got {self.init_r}.")
        need(1 <= self.target_r <= self.init_r,
             f"target_r={self.target_r} must be between 1 and init_r={self.init_r}: the budget "
             f"only shrinks. Raise init_r (paper: ~1.5x target_r) or lower target_r.")
        need(self.total_steps >= 1, f"total_steps must be >= 1 (the optimizer steps you will "
             f"run, e.g. len(loader) * epochs), got {self.total_steps}.")
        need(self.tinit >= 0, f"tinit must be >= 0, got {self.tinit}.")
        need(self.tfinal >= 1, f"tfinal must be >= 1 (the final mask is fixed at step "
             f"total_steps - tfinal, which must be a step that is taken), got {self.tfinal}.")
        need(self.tinit + self.tfinal < self.total_steps,
             f"tinit + tfinal = {self.tinit} + {self.tfinal} leaves no steps for the budget to "
             f"fall in total_steps={self.total_steps}; lower tinit/tfinal or raise total_steps.")
        need(self.delta_t >= 1, f"delta_t must be >= 1 (steps between re-masks), "
             f"got {self.delta_t}.")
        for f in ("beta1", "beta2"):
            v = getattr(self, f)
            need(isinstance(v, (int, float)) and 0 < v < 1, f"{f} must be in (0, 1) (an EMA "
                 f"factor; paper: 0.85), got {v!r}.")
        check_number("AdaLoraConfig", "orth_reg_weight", self.orth_reg_weight, low=0)
        check_number("AdaLoraConfig", "alpha", self.alpha, low=0, low_open=True,
                     hint=" (scale = alpha / init_r)")
        check_number("AdaLoraConfig", "dropout", self.dropout, low=0)
        need(self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}.")
        need(not isinstance(self.targets, str), f"targets must be a list, e.g. "
             f"[{self.targets!r}], got the string {self.targets!r}.")


# --- apply -------------------------------------------------------------------------------------

def apply(model: nn.Module, config: AdaLoraConfig | None = None) -> nn.Module:
    """Wrap every target Linear in an SVDLinear, freeze the rest; the model, changed in place.

    Everything is checked first (config, targets, modules_to_save): on error nothing changed.
    """
    config = config or AdaLoraConfig()
    if not isinstance(config, AdaLoraConfig):
        raise TypeError(f"pl.adalora.apply needs an AdaLoraConfig, got {type(config).__name__}.")
    config.validate()

    def plan() -> Plan:
        names = find_targets(model, config.targets, allowed=LINEAR_TYPES, method="AdaLoRA")
        keep = heads_for(model, config.modules_to_save, names, "an AdaLoRA")
        new = {n: SVDLinear(model.get_submodule(n), config.init_r, config.alpha, config.dropout,
                            config.total_steps) for n in names}
        return Plan(names, keep, parts=new)

    def attach(p: Plan) -> None:
        for n, layer in p.parts.items():
            replace_module(model, n, layer)

    return adapt(model, "adalora", config, plan, attach)


def layers(model: nn.Module) -> dict[str, SVDLinear]:
    """{module name: SVDLinear} in model order; raises if the model carries no AdaLoRA."""
    found = {n: m for n, m in model.named_modules() if isinstance(m, SVDLinear)}
    if get_method(model) != "adalora" or not found:
        raise ValueError("This model carries no AdaLoRA adapter: apply it first with "
                         "pl.adalora.apply(model, pl.adalora.AdaLoraConfig(...)). (pl.after_step "
                         "and pl.regularization are no-ops on models without a method.)")
    return found


def _config(model: nn.Module) -> AdaLoraConfig:
    return get_config(model)


def after_step(model: nn.Module, step: int) -> None:
    """Score importance from the step's gradients and re-allocate ranks (see the allocator)."""
    allocate(layers(model), _config(model), step)


def check_total_steps(model: nn.Module, steps: int) -> None:
    """Raise (before training) if a run of `steps` optimizer steps would never reach the final
    budget: the mask is fixed at step total_steps - tfinal, which must be among them.
    (pl.train.fit calls this; more steps than total_steps are fine: the mask stays fixed.)"""
    cfg = _config(model)
    if steps <= cfg.total_steps - cfg.tfinal:
        raise ValueError(
            f"AdaLoRA's schedule is laid out on total_steps={cfg.total_steps} (final budget "
            f"fixed at step {cfg.total_steps - cfg.tfinal}), but this run takes {steps} steps, "
            f"so the target budget (target_r={cfg.target_r}) would never be reached. Apply "
            f"AdaLoRA with total_steps={steps} (and tinit + tfinal < {steps}), or train for "
            f"{cfg.total_steps} steps.")


def regularization(model: nn.Module) -> torch.Tensor:
    """orth_reg_weight * mean over layers of ||P^T P - I||_F^2 + ||Q Q^T - I||_F^2.

    (PEFT uses the unsquared norm averaged over the 2n matrices; we follow the paper.)
    """
    found, weight = layers(model), _config(model).orth_reg_weight
    first = next(iter(found.values())).lora_P
    if weight == 0:
        return torch.zeros((), device=first.device)
    total = sum(orthogonality_penalty(layer.lora_P, layer.lora_Q) for layer in found.values())
    return weight * total / len(found)


# --- what the allocator did --------------------------------------------------------------------

def rank_pattern(model: nn.Module) -> dict[str, int]:
    """{adapted matrix: number of kept triplets} now."""
    return {n: layer.rank for n, layer in layers(model).items()}


def history(model: nn.Module) -> dict:
    """The allocation so far: {"steps": [...], "budget": [...], "ranks": {name: [...]},
    "kept": [...], "init_r", "target_r", "total_steps"}.

    steps are the 0-based steps after_step has recorded; budget the schedule b(t); kept the
    triplets actually kept (equal to the budget right after each re-mask)."""
    found, cfg = layers(model), _config(model)
    hist = torch.stack([layer.rank_history.cpu() for layer in found.values()])   # (n, T)
    steps = torch.nonzero((hist >= 0).all(dim=0)).flatten().tolist()
    ranks = {n: hist[i, steps].tolist() for i, n in enumerate(found)}
    return {"steps": steps,
            "budget": [budget_schedule(cfg, s, len(found)).budget for s in steps],
            "kept": hist[:, steps].sum(dim=0).tolist(),
            "ranks": ranks, "init_r": cfg.init_r, "target_r": cfg.target_r,
            "total_steps": cfg.total_steps}


def final_parameter_count(model: nn.Module) -> int:
    """Adapter parameters the kept triplets use: sum over kept triplets of out + in + 1."""
    return sum(layer.rank * (layer.out_features + layer.in_features + 1)
               for layer in layers(model).values())


# --- AdaLoRA -> LoRA ----------------------------------------------------------------------------

@torch.no_grad()
def to_lora(model: nn.Module) -> nn.Module:
    """Turn every SVD layer into a plain peftlab LoRA layer of its final rank k; in place.

        B = P[:, kept] diag(lambda[kept])   (out, k),    A = Q[kept]   (k, in)
        LoRA alpha = AdaLoRA alpha * k / init_r, so the LoRA scale alpha / k is unchanged

    and B A = P diag(lambda) Q: the outputs stay the same. A matrix that kept no triplet
    goes back to its plain base layer. The model is then marked as a "lora" model whose
    config has r = the largest final rank and the other ranks (and their alphas) in
    rank_pattern / alpha_pattern, so pl.lora.merge, save_adapter and load_adapter (peftlab
    and Hugging Face formats) work on it.
    """
    found, cfg = layers(model), _config(model)
    if any(layer.merged for layer in found.values()):
        raise ValueError("to_lora needs the unmerged AdaLoRA: call pl.adalora.unmerge(model).")
    originals = method_state(model).originals
    new = {}
    for name, layer in found.items():
        slots = stored_slots(layer)
        k = int(slots.sum())
        if k == 0:
            new[name] = layer.base_layer
            continue
        lo = LoraLinear(layer.base_layer, r=k, alpha=cfg.alpha * k / cfg.init_r,
                        dropout=cfg.dropout)
        lo.lora_A.weight.copy_(layer.lora_Q[slots])                              # (k, in)
        lo.lora_B.weight.copy_(layer.lora_P[:, slots] * layer.lora_lambda[slots])  # (out, k)
        assert abs(lo.scale - layer.scale) < 1e-12 * max(1.0, layer.scale)
        new[name] = lo
    for name, module in new.items():
        replace_module(model, name, module)
    kept = [n for n, m in new.items() if isinstance(m, LoraLayer)]
    r_max = max((new[n].r for n in kept), default=1)
    alpha = cfg.alpha * r_max / cfg.init_r
    lcfg = LoraConfig(r=r_max, alpha=alpha, dropout=cfg.dropout,
                      targets=kept, modules_to_save=list(cfg.modules_to_save or []),
                      rank_pattern={n: new[n].r for n in kept if new[n].r != r_max},
                      alpha_pattern={n: new[n].alpha for n in kept if new[n].alpha != alpha})
    unmark(model)
    mark(model, "lora", lcfg, kept, originals=originals)
    return model


# --- merge / unload -------------------------------------------------------------------------------

def merge(model: nn.Module) -> nn.Module:
    """W <- W + scale * P diag(lambda) Q in every SVD layer (merging twice is a no-op): the
    forward pass then skips the adapter. Unmerge before training on."""
    for layer in layers(model).values():
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """W <- W - scale * P diag(lambda) Q in every merged SVD layer (the base to float rounding)."""
    for layer in layers(model).values():
        layer.unmerge()
    return model


def unload(model: nn.Module, merge: bool = False) -> nn.Module:
    """Replace each SVD layer by its base layer; returns a plain model. merge=False (the
    default, as for every method) throws the adapter away and puts back the modules_to_save
    weights recorded at apply: the base model. merge=True bakes the update in
    (modules_to_save keep what they learned)."""
    found = layers(model)
    for layer in found.values():
        layer.merge() if merge else layer.unmerge()
    if not merge:
        restore(model)
    for name, layer in found.items():
        replace_module(model, name, layer.base_layer)
    unmark(model)
    return model


def stored_slots(layer: SVDLinear) -> torch.Tensor:
    """(init_r,) bool: triplets that still act: kept by the mask, or with lambda not exactly 0
    (between two re-masks a dropped lambda can drift from 0 and still act)."""
    return layer.lora_mask | (layer.lora_lambda.detach() != 0)
