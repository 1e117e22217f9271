"""Saving, loading and converting an AdaLoRA adapter (used by pl.save_adapter / load_adapter).

What is saved for each adapted matrix `name` (only the triplets that matter):

    name.lora_P        (out, k)   the stored columns of P
    name.lora_lambda   (k,)       their singular values
    name.lora_Q        (k, in)    the stored rows of Q
    name.lora_slots    (init_r,)  uint8, 1 where a triplet is stored (k ones)
    name.lora_mask     (init_r,)  uint8, the allocator's mask of kept triplets
    name.rank_history  (total_steps,) int32, the rank after each step (for plots)

A triplet is stored when it is kept or its lambda is not exactly 0 (between two re-masks
a dropped lambda can drift from 0 and still act), so loading restores the exact function.
After the final phase that is the kept triplets: sum(ranks) = target_r * n_matrices.
Modules trained in full (modules_to_save, e.g. the classifier) are saved by parameter name.
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.adapters import AdapterError


def _stored(layer) -> torch.Tensor:
    return layer.lora_mask | (layer.lora_lambda.detach() != 0)      # (init_r,) bool


def _full_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters outside the SVD layers (modules_to_save)."""
    return {n: p for n, p in model.named_parameters()
            if p.requires_grad and ".lora_" not in n and not n.startswith("lora_")}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    from peftlab.adalora import layers
    out = {}
    for name, layer in layers(model).items():
        slots = _stored(layer)
        out[f"{name}.lora_P"] = layer.lora_P.detach()[:, slots]
        out[f"{name}.lora_lambda"] = layer.lora_lambda.detach()[slots]
        out[f"{name}.lora_Q"] = layer.lora_Q.detach()[slots]
        out[f"{name}.lora_slots"] = slots.to(torch.uint8)
        out[f"{name}.lora_mask"] = layer.lora_mask.to(torch.uint8)
        out[f"{name}.rank_history"] = layer.rank_history.detach()
    out.update({n: p.detach() for n, p in _full_params(model).items()})
    return out


def _check(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Raise AdapterError listing what does not fit, before anything is copied."""
    from peftlab.adalora import layers
    problems, expected = [], set()
    for name, layer in layers(model).items():
        keys = {k: f"{name}.{k}" for k in
                ("lora_P", "lora_lambda", "lora_Q", "lora_slots", "lora_mask", "rank_history")}
        expected.update(keys.values())
        missing = [v for v in keys.values() if v not in tensors]
        if missing:
            problems.append(f"missing {', '.join(missing)}")
            continue
        slots = tensors[keys["lora_slots"]]
        if slots.shape != (layer.r,) or tensors[keys["lora_mask"]].shape != (layer.r,):
            problems.append(f"{name}: {tuple(slots.shape)} slots in the file, init_r={layer.r} "
                            f"in the model")
            continue
        k = int((slots != 0).sum())
        want = {"lora_P": (layer.out_features, k), "lora_lambda": (k,),
                "lora_Q": (k, layer.in_features), "rank_history": tuple(layer.rank_history.shape)}
        for short, shape in want.items():
            got = tuple(tensors[keys[short]].shape)
            if got != shape:
                problems.append(f"{keys[short]}: shape {got} in the file, {shape} expected")
    params = _full_params(model)
    for n, p in params.items():
        expected.add(n)
        if n not in tensors:
            problems.append(f"missing {n}")
        elif tuple(tensors[n].shape) != tuple(p.shape):
            problems.append(f"{n}: shape {tuple(tensors[n].shape)} in the file, "
                            f"{tuple(p.shape)} in the model")
    extra = sorted(set(tensors) - expected)
    if extra:
        problems.append(f"in the file but not in the model: {', '.join(extra[:5])}")
    if problems:
        raise AdapterError("The AdaLoRA adapter does not fit this model (another base model or "
                           "config?): " + "; ".join(problems[:8]) + ".")


@torch.no_grad()
def load_adapter_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Put the stored triplets back in their slots; dropped slots get lambda = 0."""
    from peftlab.adalora import layers
    _check(model, tensors)
    for name, layer in layers(model).items():
        slots = tensors[f"{name}.lora_slots"].to(layer.lora_mask.device) != 0
        layer.lora_lambda.zero_()
        layer.lora_P[:, slots] = tensors[f"{name}.lora_P"].to(layer.lora_P)
        layer.lora_lambda[slots] = tensors[f"{name}.lora_lambda"].to(layer.lora_lambda)
        layer.lora_Q[slots] = tensors[f"{name}.lora_Q"].to(layer.lora_Q)
        layer.lora_mask.copy_(tensors[f"{name}.lora_mask"] != 0)
        layer.rank_history.copy_(tensors[f"{name}.rank_history"])
    for n, p in _full_params(model).items():
        p.copy_(tensors[n].to(p))


@torch.no_grad()
def to_lora(model: nn.Module) -> nn.Module:
    """Turn every SVD layer into a plain peftlab LoRA layer of its final rank k; in place.

        B = P[:, kept] diag(lambda[kept])   (out, k),    A = Q[kept]   (k, in)
        LoRA alpha = AdaLoRA alpha * k / init_r, so the LoRA scale alpha / k is unchanged

    and B A = P diag(lambda) Q: the outputs stay the same. A matrix that kept no triplet
    goes back to its plain base layer. The model is then marked as a "lora" model (the
    recorded config has r = the largest final rank), so pl.lora.merge works on it.
    """
    import dataclasses

    from peftlab import lora
    from peftlab.adalora import _config, layers
    from peftlab.inject import mark, replace_module, unmark

    found, cfg = layers(model), _config(model)
    new = {}
    for name, layer in found.items():
        slots = _stored(layer)
        k = int(slots.sum())
        if k == 0:
            new[name] = layer.base_layer
            continue
        lo = lora.LoraLinear(layer.base_layer, r=k, alpha=cfg.alpha * k / cfg.init_r,
                             dropout=cfg.dropout)
        lo.lora_A.weight.copy_(layer.lora_Q[slots])                              # (k, in)
        lo.lora_B.weight.copy_(layer.lora_P[:, slots] * layer.lora_lambda[slots])  # (out, k)
        assert abs(lo.scale - layer.scaling) < 1e-12 * max(1.0, layer.scaling)
        new[name] = lo
    for name, module in new.items():
        replace_module(model, name, module)
    kept = [n for n, m in new.items() if isinstance(m, lora.LoraLayer)]
    r_max = max((new[n].r for n in kept), default=1)
    lcfg = lora.LoraConfig(r=r_max, alpha=cfg.alpha * r_max / cfg.init_r, dropout=cfg.dropout,
                           targets=kept, modules_to_save=list(cfg.modules_to_save or []))
    unmark(model)
    mark(model, "lora", dataclasses.replace(lcfg), kept)
    return model


# --- Hugging Face PEFT format (see peftlab/hf_peft.py) -------------------------------------------
# peft names: lora_A = Q (k, in), lora_B = P (out, k), lora_E = lambda as (k, 1); a saved
# rank_pattern {"<module>.lora_E": [bool] * init_r} says which triplets the file holds. peft
# scales by lora_alpha / (init_r + 1e-5), ours by alpha / init_r: outputs agree to ~1e-6.

def to_hf_peft(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json dict, tensors) that peft.PeftModel.from_pretrained loads."""
    from peftlab import hf_peft
    from peftlab.adalora import _config, layers
    from peftlab.lora import HF_UNSUPPORTED
    from peftlab.lora_layers import Conv1D

    cfg, found = _config(model), layers(model)
    tensors, pattern = {}, {}
    for name, layer in found.items():
        slots = _stored(layer)
        tensors[f"{name}.lora_A"] = layer.lora_Q.detach()[slots]                   # (k, in)
        tensors[f"{name}.lora_B"] = layer.lora_P.detach()[:, slots]                # (out, k)
        tensors[f"{name}.lora_E"] = layer.lora_lambda.detach()[slots].unsqueeze(1)  # (k, 1)
        pattern[f"{name}.lora_E"] = slots.tolist()
    tensors.update({n: p.detach() for n, p in _full_params(model).items()})
    hf_cfg = hf_peft.base_config(model, "ADALORA")
    hf_cfg.update({
        "r": 8, "init_r": cfg.init_r, "target_r": cfg.target_r, "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout, "target_modules": sorted(found),
        "modules_to_save": list(cfg.modules_to_save or []) or None,
        "fan_in_fan_out": Conv1D is not None and any(isinstance(m.base_layer, Conv1D)
                                                     for m in found.values()),
        "tinit": cfg.tinit, "tfinal": cfg.tfinal, "deltaT": cfg.delta_t, "beta1": cfg.beta1,
        "beta2": cfg.beta2, "orth_reg_weight": cfg.orth_reg_weight,
        "total_step": cfg.total_steps, "rank_pattern": pattern, "init_lora_weights": True,
        "layers_to_transform": None, "layers_pattern": None, "exclude_modules": None,
        **HF_UNSUPPORTED})
    return hf_cfg, hf_peft.add_prefix(tensors)


def from_hf_peft(hf_cfg: dict, tensors: dict[str, torch.Tensor]):
    """("adalora", AdaLoraConfig, tensors by our names) from a peft AdaLoRA adapter folder."""
    from peftlab import hf_peft
    from peftlab.adalora import AdaLoraConfig

    tensors = hf_peft.strip_prefix(tensors)
    targets = sorted({k.rsplit(".lora_", 1)[0] for k in tensors if ".lora_" in k})
    heads = sorted({k.rsplit(".", 1)[0] for k in tensors if ".lora_" not in k})
    if not targets:
        raise AdapterError("The Hugging Face AdaLoRA adapter holds no lora_A / lora_B / lora_E.")
    try:
        total = int(hf_cfg["total_step"])
        tfinal = max(1, int(hf_cfg.get("tfinal", 0)))            # ours fixes the mask at T - tfinal
        config = AdaLoraConfig(
            init_r=int(hf_cfg.get("init_r", 12)), target_r=int(hf_cfg.get("target_r", 8)),
            targets=targets, total_steps=total, tinit=min(int(hf_cfg.get("tinit", 0)),
                                                          max(0, total - tfinal - 1)),
            tfinal=tfinal, delta_t=int(hf_cfg.get("deltaT", 1)),
            beta1=float(hf_cfg.get("beta1", 0.85)), beta2=float(hf_cfg.get("beta2", 0.85)),
            orth_reg_weight=float(hf_cfg.get("orth_reg_weight", 0.5)),
            alpha=float(hf_cfg.get("lora_alpha", 8)), dropout=float(hf_cfg.get("lora_dropout", 0)),
            modules_to_save=heads)
    except (KeyError, TypeError, ValueError) as e:
        raise AdapterError(f"The Hugging Face AdaLoRA config cannot be read by peftlab: {e}") from e
    pattern = hf_cfg.get("rank_pattern") or {}
    ours = {k: v for k, v in tensors.items() if k.rsplit(".", 1)[0] in heads}
    for t in targets:
        k = tensors[f"{t}.lora_E"].shape[0] if f"{t}.lora_E" in tensors else -1
        slots = torch.tensor(pattern.get(f"{t}.lora_E", [True] * config.init_r), dtype=torch.bool)
        if int(slots.sum()) != k or slots.numel() != config.init_r:
            raise AdapterError(f"{t}: the file holds {k} triplets but its rank_pattern keeps "
                               f"{int(slots.sum())} of {slots.numel()} (init_r={config.init_r}).")
        ours[f"{t}.lora_P"] = tensors[f"{t}.lora_B"]
        ours[f"{t}.lora_lambda"] = tensors[f"{t}.lora_E"].reshape(-1)
        ours[f"{t}.lora_Q"] = tensors[f"{t}.lora_A"]
        ours[f"{t}.lora_slots"] = ours[f"{t}.lora_mask"] = slots.to(torch.uint8)
        ours[f"{t}.rank_history"] = torch.full((total,), -1, dtype=torch.int32)
    return "adalora", config, ours
