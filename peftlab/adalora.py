"""AdaLoRA: SVD-form adapters whose ranks move to where they matter (Zhang et al., ICLR 2023).

    cfg = pl.adalora.AdaLoraConfig(init_r=12, target_r=4, targets=["query", "value"],
                                   total_steps=300, tinit=30, tfinal=60)
    pl.adalora.apply(model, cfg)
    ... loss = loss_fn(model, batch) + pl.regularization(model)    # orthogonality penalty
        loss.backward(); opt.step(); pl.after_step(model, step); opt.zero_grad()
    pl.adalora.rank_pattern(model)     # {"...layer.0.attention.self.query": 5, ...}
    pl.adalora.history(model)          # steps, budget, ranks per matrix (for plots, widgets)
    pl.adalora.to_lora(model)          # plain LoRA layers of the final ranks

Each adapted weight W (out x in) gets an update in SVD form

    h = W x + scale * P diag(lambda) Q x,     scale = alpha / init_r
    P: (out, init_r) left vectors, lambda: (init_r,) singular values, Q: (init_r, in) right vectors

lambda starts at zero (training starts from the base model), P and Q ~ N(0, 0.02) as in
Hugging Face PEFT. Dropping a triplet i means lambda_i = 0, nothing else: P[:, i] and Q[i]
stay, so the allocator (peftlab/adalora_allocator.py) can bring it back. The penalty
||P^T P - I||_F^2 + ||Q Q^T - I||_F^2 keeps P and Q near-orthogonal, so lambda behaves like
singular values and dropping the small ones loses little.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from peftlab.adalora_allocator import (
    Budget,
    allocate,
    budget_schedule,
    triplet_scores,
    update_importance,  # noqa: F401  (public for teaching)
)
from peftlab.inject import (
    AdapterLayer,
    ensure_plain,
    find_targets,
    freeze,
    get_method,
    head_names,
    mark,
    replace_module,
    resolve_modules_to_save,
    unfreeze_modules,
)

__all__ = [
    "AdaLoraConfig",
    "Budget",
    "SVDLinear",
    "adapter_state_dict",
    "after_step",
    "apply",
    "budget_schedule",
    "final_parameter_count",
    "from_hf_peft",
    "history",
    "layers",
    "load_adapter_state",
    "rank_pattern",
    "regularization",
    "to_hf_peft",
    "to_lora",
    "triplet_scores",
]


def _linear_types() -> tuple[type, ...]:
    try:  # GPT-2 style Conv1D: a Linear with a transposed weight (in, out)
        from transformers.pytorch_utils import Conv1D
        return (nn.Linear, Conv1D)
    except ImportError:  # pragma: no cover
        return (nn.Linear,)


@dataclass
class AdaLoraConfig:
    method = "adalora"
    init_r: int = 12              # rank every matrix starts with (paper: ~1.5x the final average)
    target_r: int = 8             # average rank at the end: final budget = target_r * n_matrices
    # modules to adapt (Linear / Conv1D), matched by the rules of peftlab/inject.py
    targets: list = field(default_factory=lambda: ["query", "value"])
    total_steps: int = 1000       # optimizer steps of the whole run: the schedule is laid out on it
    tinit: int = 0                # warm-up steps at the full budget before any rank is dropped
    tfinal: int = 1               # last steps with the mask fixed (>= 1: fixed at step T - tfinal)
    delta_t: int = 1              # re-mask every delta_t steps while the budget falls
    beta1: float = 0.85           # EMA factor of the sensitivity |w * grad| (paper: 0.85)
    beta2: float = 0.85           # EMA factor of its uncertainty |I - I_bar| (paper: 0.85)
    orth_reg_weight: float = 0.1  # weight of the orthogonality penalty added by pl.regularization
    alpha: float = 16.0           # update scale is alpha / init_r (PEFT: lora_alpha / ranknum)
    dropout: float = 0.0          # dropout on the adapter's input only
    modules_to_save: list | None = None  # also trained in full; None: the detected output head

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
        need(self.orth_reg_weight >= 0, f"orth_reg_weight must be >= 0, "
             f"got {self.orth_reg_weight}.")
        need(self.alpha > 0, f"alpha must be > 0 (scale = alpha / init_r), got {self.alpha}.")
        need(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}.")
        need(not isinstance(self.targets, str), f"targets must be a list, e.g. "
             f"[{self.targets!r}], got the string {self.targets!r}.")


class SVDLinear(AdapterLayer):
    """A frozen Linear plus scale * P diag(lambda) Q, with the allocator's state as buffers.

    Parameters: lora_P (out, r), lora_lambda (r,), lora_Q (r, in).
    Buffers: lora_mask (r,) bool, kept triplets; ipt_* / unc_* the importance EMAs, shaped like
    P, lambda, Q; rank_history (total_steps,) int32, rank after each step (-1: not yet).
    """

    method = "adalora"

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float,
                 total_steps: int):
        super().__init__()
        self.base_layer = base_layer
        w = base_layer.weight
        self.in_features, self.out_features = (
            (w.shape[1], w.shape[0]) if isinstance(base_layer, nn.Linear) else w.shape)
        self.r, self.scaling = r, alpha / r
        kw = dict(device=w.device, dtype=w.dtype)
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
        return (self.lora_P * self.lora_lambda) @ self.lora_Q * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)                                     # (..., out)
        h = self.dropout(x).to(self.lora_Q.dtype) @ self.lora_Q.T    # (..., r)
        h = h * (self.lora_lambda * self.scaling)                    # (..., r)
        return out + (h @ self.lora_P.T).to(out.dtype)               # (..., out)

    @property
    def rank(self) -> int:
        return int(self.lora_mask.sum())

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, init_r={self.r}, rank={self.rank}"


# --- apply -------------------------------------------------------------------------------------

def apply(model: nn.Module, config: AdaLoraConfig | None = None) -> nn.Module:
    """Wrap every target Linear in an SVDLinear, freeze the rest; the model, changed in place.

    Everything is checked first (config, targets, modules_to_save): on error nothing changed.
    """
    config = config or AdaLoraConfig()
    if not isinstance(config, AdaLoraConfig):
        raise TypeError(f"pl.adalora.apply needs an AdaLoraConfig, got {type(config).__name__}.")
    config.validate()
    ensure_plain(model, "adalora")
    names = find_targets(model, config.targets, allowed=_linear_types(), method="AdaLoRA")
    keep = resolve_modules_to_save(model, names, config.modules_to_save, head_names(model),
                                   "an AdaLoRA")
    new = {n: SVDLinear(model.get_submodule(n), config.init_r, config.alpha, config.dropout,
                        config.total_steps) for n in names}
    freeze(model)
    for n, layer in new.items():
        replace_module(model, n, layer)
    unfreeze_modules(model, keep)
    mark(model, "adalora", dataclasses.replace(config, modules_to_save=keep), names)
    return model


def layers(model: nn.Module) -> dict[str, SVDLinear]:
    """{module name: SVDLinear} in model order; raises if the model carries no AdaLoRA."""
    found = {n: m for n, m in model.named_modules() if isinstance(m, SVDLinear)}
    if get_method(model) != "adalora" or not found:
        raise ValueError("This model carries no AdaLoRA adapter: apply it first with "
                         "pl.adalora.apply(model, pl.adalora.AdaLoraConfig(...)). (pl.after_step "
                         "and pl.regularization are no-ops on models without a method.)")
    return found


def _config(model: nn.Module) -> AdaLoraConfig:
    return model.__dict__["peftlab_config"]


def after_step(model: nn.Module, step: int) -> None:
    """Score importance from the step's gradients and re-allocate ranks (see the allocator)."""
    allocate(layers(model), _config(model), step)


def regularization(model: nn.Module) -> torch.Tensor:
    """orth_reg_weight * mean over layers of ||P^T P - I||_F^2 + ||Q Q^T - I||_F^2.

    (PEFT uses the unsquared norm averaged over the 2n matrices; we follow the paper.)
    """
    found, weight = layers(model), _config(model).orth_reg_weight
    first = next(iter(found.values())).lora_P
    if weight == 0:
        return torch.zeros((), device=first.device)
    total = torch.zeros((), device=first.device, dtype=torch.float32)
    for layer in found.values():
        P, Q = layer.lora_P.float(), layer.lora_Q.float()
        eye = torch.eye(layer.r, device=P.device)
        total = total + ((P.T @ P - eye) ** 2).sum() + ((Q @ Q.T - eye) ** 2).sum()
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


from peftlab.adalora_state import (  # noqa: E402  (it imports from this module)
    adapter_state_dict,
    from_hf_peft,
    load_adapter_state,
    to_hf_peft,
    to_lora,
)
