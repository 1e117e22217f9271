"""VeRA: vector-based random matrix adaptation (Kopiczko et al., 2024), a LoRA variant.

One pair of random matrices A, B is drawn once, frozen, and shared by every adapted layer;
each layer trains only two scaling vectors:

    y = W x + b + Lambda_b B Lambda_d A x        A: (r, d_in), B: (d_out, r), frozen, shared
      = W x + b + b_vec * (B (d_vec * (A x)))    d_vec: (r,) = 0.1 at start, b_vec: (d_out,) = 0

so the update starts at zero and a layer trains r + d_out numbers (LoRA: r * (d_in + d_out)).
There is no alpha / r scale: the vectors are the scale. As in Hugging Face PEFT, A and B are
drawn at the largest (d_out, d_in) among the targets (kaiming-uniform from a CPU generator
seeded with `projection_seed`, A first) and each layer slices its own top-left part, so layers
of different shapes share one pair.

    pl.lora.apply(model, pl.lora.VeraConfig(r=256, targets=["query", "value"]))
    pl.lora.apply(model, pl.lora.LoraConfig(r=256, variant="vera"))   # the same, defaults

Where the pair lives: buffers `vera_A`, `vera_B` of one small module, registered on the target
whose name sorts first (`<that target>.lora_vera.vera_A`), so state_dict holds them once,
`.to(device)` moves them and unload removes them with the wrappers; every layer reads them
through a plain (unregistered) reference. save_projection=True (the default, as peft's) saves
the pair with the adapter; False saves only the seed and draws the pair again at load (same
numbers on the same torch). The Hugging Face format is peft_type VERA: `base_model.vera_A`,
`base_model.vera_B` and each layer's `vera_lambda_b` / `vera_lambda_d` (our lora_lambda_b / _d).

Supported: nn.Linear and GPT-2's Conv1D, one rank for all layers, one adapter per model
(named VeRA adapters are refused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.base import base_kind, base_weight
from peftlab.core.errors import AdapterError, TargetError
from peftlab.core.layers import adapter_dtype, is_conv1d
from peftlab.core.state import get_config
from peftlab.io import hf_peft
from peftlab.lora import variants
from peftlab.lora.surgery import LoraConfig, lora_layers


@dataclass
class VeraConfig(LoraConfig):
    """VeRA's knobs on top of LoraConfig (alpha and rslora are not used: no scale; dropout,
    targets, modules_to_save as in LoraConfig; rank_pattern and alpha_pattern are refused: one
    shared pair has one rank; variant is fixed to "vera").

    r: the rank of the shared random pair (the paper and peft: 256; it costs no trainable
        parameters beyond d_vec's r numbers per layer).
    d_initial: the start value of every d_vec entry (the paper's Table 6c: 0.1 or less).
    projection_seed: seeds the CPU generator that draws A and B (peft: projection_prng_key).
    save_projection: save A and B with the adapter (True), or only the seed (False).
    """

    r: int = 256
    variant: str = "vera"
    d_initial: float = 0.1
    projection_seed: int = 0
    save_projection: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.variant != "vera":
            raise ValueError(f"VeraConfig is the VeRA variant; got variant={self.variant!r} "
                             f"(use LoraConfig for other variants).")
        if isinstance(self.projection_seed, bool) or not isinstance(self.projection_seed, int):
            raise TypeError(f"VeraConfig.projection_seed must be an int, got "
                             f"{self.projection_seed!r}.")
        if not isinstance(self.d_initial, (int, float)) or not math.isfinite(self.d_initial):
            raise ValueError(f"VeraConfig.d_initial must be a number, got {self.d_initial!r}.")


def _setting(config, name: str, default):
    return getattr(config, name, default)         # LoraConfig(variant="vera"): the defaults


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """U(-bound, bound), bound = sqrt(3) * sqrt(2) / sqrt(fan_in), fan_in = shape[1] (peft's
    vera/model.py _kaiming_init, drawn from `generator`)."""
    t = torch.empty(shape)
    bound = math.sqrt(3.0) * math.sqrt(2) / math.sqrt(shape[1])
    with torch.no_grad():
        return t.uniform_(-bound, bound, generator=generator)


def projections(r: int, d_out: int, d_in: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared pair at the largest shape: A (r, d_in), then B (d_out, r), one generator."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    a = kaiming_uniform((r, d_in), g)
    return a, kaiming_uniform((d_out, r), g)


class VeraProjections(nn.Module):
    """The frozen pair every VeRA layer slices: vera_A (r, max d_in), vera_B (max d_out, r)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, persistent: bool = True):
        super().__init__()
        self.register_buffer("vera_A", a, persistent=persistent)
        self.register_buffer("vera_B", b, persistent=persistent)


@variants.register
class VeRA(variants.LoraVariant):
    name = "vera"
    rank_limited = False                              # r is the shared pair's, any size

    def build(self, layer, p):
        if p is not layer:
            raise ValueError("VeRA adapters cannot be loaded by name beside another (their "
                             "random pair is shared per model); load each onto its own base "
                             "model.")
        if base_kind(layer.base_layer).family != "linear":
            return                                    # prepare() refuses it by name
        w = p.lora_B.weight
        del p.lora_A, p.lora_B                        # VeRA trains no A, B of its own
        d_out = w.shape[0]
        p.lora_lambda_d = nn.Parameter(torch.full((layer.r,), 0.1, dtype=w.dtype,
                                                  device=w.device))           # (r,)
        p.lora_lambda_b = nn.Parameter(torch.zeros(d_out, dtype=w.dtype, device=w.device))

    def prepare(self, layers, config):
        for name, layer in layers.items():
            kind = base_kind(layer.base_layer)
            if kind.family != "linear":
                raise TargetError(f"VeRA adapts linear layers (nn.Linear, Conv1D), as peft's "
                                  f"does; target {name} is a {kind.name}. Leave it out of the "
                                  f"targets.")
        ranks = {layer.r for layer in layers.values()}
        if len(ranks) > 1:
            raise ValueError(f"VeRA shares one random pair, so every layer has the same rank; "
                             f"rank_pattern gives ranks {sorted(ranks)}. Drop rank_pattern.")
        shapes = [base_kind(m.base_layer).dims(m.base_layer) for m in layers.values()]
        d_in, d_out = max(s[0] for s in shapes), max(s[1] for s in shapes)
        r = ranks.pop()
        a, b = projections(r, d_out, d_in, _setting(config, "projection_seed", 0))
        first = layers[min(layers)]
        w = base_weight(first.base_layer)
        dt = adapter_dtype(w)
        shared = VeraProjections(a.to(w.device, dt), b.to(w.device, dt),
                                 persistent=_setting(config, "save_projection", True))
        first.lora_vera = shared                      # registered once: saved, moved, unloaded
        d0 = float(_setting(config, "d_initial", 0.1))
        for layer in layers.values():
            layer.__dict__["vera_shared"] = shared    # a plain reference: not registered again
            with torch.no_grad():
                layer.lora_lambda_d.fill_(d0)

    def count(self, d_in, d_out, r):
        return r + d_out                              # d_vec and b_vec

    @staticmethod
    def _pair(layer) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's slices: A[:, :d_in] (r, d_in), B[:d_out, :] (d_out, r)."""
        d_in, d_out = base_kind(layer.base_layer).dims(layer.base_layer)
        shared = layer.__dict__["vera_shared"]
        return shared.vera_A[:, :d_in], shared.vera_B[:d_out, :]

    def update(self, layer, p, x, y):
        """y + b_vec * (B (d_vec * (A dropout(x))))."""
        a, b = self._pair(layer)
        x = p.lora_dropout(x.to(p.lora_lambda_d.dtype))               # (..., d_in)
        h = p.lora_lambda_d * F.linear(x, a)                          # (..., r)
        return (y + p.lora_lambda_b * F.linear(h, b)).to(y.dtype)     # (..., d_out)

    def delta(self, layer, p):
        """W' - W = (b_vec B) @ (d_vec A), (d_out, d_in)."""
        a, b = self._pair(layer)
        return (p.lora_lambda_b.float()[:, None] * b.float()) @ \
            (p.lora_lambda_d.float()[:, None] * a.float())

    def to_hf_peft(self, model, hf_cfg, tensors):
        return to_hf_peft(model, hf_peft.strip_prefix(tensors))


# --- the Hugging Face PEFT format: peft_type VERA -----------------------------------------------

RENAME = (("lora_lambda_b", "vera_lambda_b"), ("lora_lambda_d", "vera_lambda_d"))


def to_hf_peft(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(adapter_config.json, tensors) as peft's VeRA saves them, from `state`, the adapter's
    tensors by our names (lora/format.py adapter_state_dict)."""
    cfg = get_config(model)
    layers = lora_layers(model)
    hf_cfg = hf_peft.base_config(model, "VERA")
    hf_cfg.update({
        "r": cfg.r, "target_modules": sorted(layers), "projection_prng_key":
        _setting(cfg, "projection_seed", 0), "save_projection":
        _setting(cfg, "save_projection", True), "vera_dropout": cfg.dropout,
        "d_initial": _setting(cfg, "d_initial", 0.1),
        "fan_in_fan_out": any(is_conv1d(m.base_layer) for m in layers.values()),
        "bias": "none", "modules_to_save": list(cfg.modules_to_save) or None,
        "init_weights": True, "layers_to_transform": None, "layers_pattern": None})
    out = {}
    for k, v in state.items():
        if ".lora_vera.vera_" in k:                    # the shared pair: model level in peft
            out["base_model." + k.rsplit(".", 1)[1]] = v
            continue
        for ours, theirs in RENAME:
            k = k.replace("." + ours, "." + theirs)
        out[hf_peft.PREFIX + k] = v
    return hf_cfg, out


def from_hf_peft(hf_cfg: dict, tensors: dict[str, torch.Tensor]):
    """("lora", VeraConfig, tensors by our names) from a Hugging Face PEFT VeRA adapter."""
    if hf_cfg.get("bias", "none") != "none":
        raise AdapterError(f"This Hugging Face VeRA adapter uses bias={hf_cfg['bias']!r}, which "
                           f"peftlab's VeRA does not implement; load it with peft.")
    tensors = dict(tensors)
    pair = {k: tensors.pop(f"base_model.{k}") for k in ("vera_A", "vera_B")
            if f"base_model.{k}" in tensors}
    ours = {}
    for k, v in hf_peft.strip_prefix(tensors).items():
        for mine, theirs in RENAME:
            k = k.replace("." + theirs, "." + mine)
        ours[k] = v
    targets = sorted({k.split(".lora_lambda_")[0] for k in ours if ".lora_lambda_" in k})
    if not targets:
        raise AdapterError("The Hugging Face VeRA adapter holds no vera_lambda_b / _d tensors.")
    heads = sorted({k.rsplit(".", 1)[0] for k in ours if ".lora_lambda_" not in k})
    save = bool(hf_cfg.get("save_projection", True))
    if save and len(pair) != 2:
        raise AdapterError("The Hugging Face VeRA adapter says save_projection=True but holds "
                           "no base_model.vera_A / vera_B.")
    if save:                                          # held by the target that sorts first
        ours.update({f"{targets[0]}.lora_vera.{k}": v for k, v in pair.items()})
    try:
        config = VeraConfig(r=int(hf_cfg.get("r", 256)), targets=targets, modules_to_save=heads,
                            dropout=float(hf_cfg.get("vera_dropout", 0.0)),
                            d_initial=float(hf_cfg.get("d_initial", 0.1)),
                            projection_seed=int(hf_cfg.get("projection_prng_key", 0)),
                            save_projection=save)
    except ValueError as e:
        raise AdapterError(f"The Hugging Face VeRA config is not valid for peftlab: {e}") from e
    return "lora", config, ours
