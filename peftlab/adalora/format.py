"""Saving and loading an AdaLoRA adapter, and its Hugging Face PEFT format (used by pl.save_adapter / load_adapter).

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

from peftlab.adalora.surgery import AdaLoraConfig, _config, layers, stored_slots
from peftlab.core.errors import AdapterError
from peftlab.core.layers import is_conv1d
from peftlab.io import hf_peft
from peftlab.lora.format import HF_UNSUPPORTED


def _full_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters outside the SVD layers (modules_to_save)."""
    return {n: p for n, p in model.named_parameters()
            if p.requires_grad and ".lora_" not in n and not n.startswith("lora_")}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of an AdaLoRA adapter: per SVDLinear only the kept slots of P, lambda and
    Q (with the slot indices, the mask and the rank history), plus modules_to_save."""
    out = {}
    for name, layer in layers(model).items():
        slots = stored_slots(layer)
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
    if any(layer.merged for layer in layers(model).values()):
        raise AdapterError("The AdaLoRA adapter is merged into the base weights; loading new "
                           "triplets now would make unmerge subtract the wrong update. Call "
                           "pl.adalora.unmerge(model) first.")
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


# --- Hugging Face PEFT format (see peftlab/io/hf_peft.py) -------------------------------------------
# peft names: lora_A = Q (k, in), lora_B = P (out, k), lora_E = lambda as (k, 1); a saved
# rank_pattern {"<module>.lora_E": [bool] * init_r} says which triplets the file holds. peft
# scales by lora_alpha / (init_r + 1e-5), ours by alpha / init_r: outputs agree to ~1e-6.

def to_hf_peft(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json dict, tensors) that peft.PeftModel.from_pretrained loads."""

    cfg, found = _config(model), layers(model)
    tensors, pattern = {}, {}
    for name, layer in found.items():
        slots = stored_slots(layer)
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
        "fan_in_fan_out": any(is_conv1d(m.base_layer) for m in found.values()),
        "tinit": cfg.tinit, "tfinal": cfg.tfinal, "deltaT": cfg.delta_t, "beta1": cfg.beta1,
        "beta2": cfg.beta2, "orth_reg_weight": cfg.orth_reg_weight,
        "total_step": cfg.total_steps, "rank_pattern": pattern, "init_lora_weights": True,
        "layers_to_transform": None, "layers_pattern": None, "exclude_modules": None,
        "alpha_pattern": {}, **HF_UNSUPPORTED})
    return hf_cfg, hf_peft.add_prefix(tensors)


def from_hf_peft(hf_cfg: dict, tensors: dict[str, torch.Tensor]):
    """("adalora", AdaLoraConfig, tensors by our names) from a peft AdaLoRA adapter folder."""

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
