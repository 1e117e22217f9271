"""Saving, loading and the Hugging Face PEFT format of a LoRA adapter.

Tensor names are the model's own (`...query.lora_A.weight`, `...query.lora_B.weight`,
`...word_embeddings.lora_embedding_A`) plus the parameters of modules_to_save; in the HF PEFT
layout the same names get the prefix "base_model.model." (see peftlab/io/hf_peft.py).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from peftlab.core.errors import AdapterError
from peftlab.core.layers import is_conv1d
from peftlab.core.state import get_config
from peftlab.io import hf_peft
from peftlab.io.files import check_state
from peftlab.lora import variants as lora_variants
from peftlab.lora.surgery import LoraConfig, lora_layers

# --- saving / loading (the registry protocol; see adapters.py) ----------------------------------

def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every lora_ tensor plus the parameters of modules_to_save, by their names in the model."""
    # only the first adapter: the others (pl.load_adapter(..., name=...)) sit under
    # "<layer>.others." and are never part of this adapter's file
    others = tuple(f"{n}.others." for n, m in lora_layers(model).items() if "others" in m._modules)
    state = {k: v.detach() for k, v in model.state_dict(keep_vars=True).items()
             if ".lora_" in k and not k.startswith(others)}
    for head in get_config(model).modules_to_save or []:
        for k, v in model.get_submodule(head).state_dict(keep_vars=True).items():
            state[f"{head}.{k}"] = v.detach()
    return state


def load_adapter_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved adapter tensors in, after checking every name and shape (nothing changes on error).

    Extra full base weights that Hugging Face PEFT sometimes saves (`<name>.base_layer.weight`
    for targeted embeddings) are accepted when the model has them with the same shape.
    """
    merged = [n for n, m in lora_layers(model).items() if m.merged]
    if merged:
        raise AdapterError(f"{merged[0]} is merged; loading new A, B now would make unmerge "
                           f"subtract the wrong update. Call pl.lora.unmerge(model) first.")
    expected = adapter_state_dict(model)
    full = model.state_dict(keep_vars=True)
    expected.update({k: full[k] for k in tensors if ".base_layer." in k and k in full})
    check_state(expected, tensors)
    with torch.no_grad():
        for k, v in tensors.items():
            expected[k].copy_(v.to(expected[k].dtype))


# --- Hugging Face PEFT format ----------------------------------------------------------------------

HF_UNSUPPORTED = {"use_dora": False, "lora_bias": False, "bias": "none",
                  "layer_replication": None, "trainable_token_indices": None,
                  "target_parameters": None, "use_qalora": False, "alora_invocation_tokens": None}


def to_hf_peft(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json dict, tensors) in the layout peft.PeftModel.from_pretrained reads.

    Per-layer ranks and alphas (AdaLoRA's to_lora) go to rank_pattern / alpha_pattern, keyed
    by full module name, only where they differ from r / lora_alpha."""
    cfg: LoraConfig = get_config(model)
    export = getattr(lora_variants.get(cfg.variant), "to_hf_peft", None)   # DoRA, VeRA
    if cfg.variant != "lora" and export is None:
        raise AdapterError(f"This LoRA uses the variant {cfg.variant!r}, which peftlab cannot "
                           f"write in the Hugging Face PEFT format (plain LoRA only); save it "
                           f"with format='peftlab'.")
    layers = lora_layers(model)
    rank_pattern = {n: m.r for n, m in layers.items() if m.r != cfg.r}
    alpha_pattern = {n: m.alpha for n, m in layers.items() if m.alpha != cfg.alpha}
    hf_cfg = hf_peft.base_config(model, "LORA")
    hf_cfg.update({
        "r": cfg.r, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
        "use_rslora": cfg.rslora, "target_modules": sorted(layers),   # full names: exact match
        "modules_to_save": list(cfg.modules_to_save) or None,
        "fan_in_fan_out": any(is_conv1d(m.base_layer) for m in layers.values()),
        "init_lora_weights": True, "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
        "layers_to_transform": None,
        "layers_pattern": None, "exclude_modules": None,
        **HF_UNSUPPORTED})
    tensors = hf_peft.add_prefix(adapter_state_dict(model))
    return export(model, hf_cfg, tensors) if export is not None else (hf_cfg, tensors)


def from_hf_peft(hf_cfg: dict, tensors: dict[str, torch.Tensor]):
    """("lora", LoraConfig, tensors by our names) from a Hugging Face PEFT LoRA adapter.

    Targets and modules_to_save are read off the tensor names (exact), r / alpha / dropout /
    rsLoRA off the config; each layer's rank off its tensors and its alpha off alpha_pattern
    (matched as peft does: the key is the full name or a suffix of it). Features peftlab's
    LoRA does not have raise AdapterError. use_dora=True reads as variant="dora"; a VeRA
    adapter (peft_type VERA) is read by peftlab/lora/vera.py.
    """
    if str(hf_cfg.get("peft_type", "")).upper() == "VERA":
        from peftlab.lora.vera import from_hf_peft as from_vera
        return from_vera(hf_cfg, tensors)
    variant = "dora" if hf_cfg.get("use_dora") is True else "lora"
    for key, plain in HF_UNSUPPORTED.items():
        if key == "use_dora" and variant == "dora":
            continue
        if hf_cfg.get(key) is not None and hf_cfg[key] != plain:
            raise AdapterError(f"This Hugging Face LoRA adapter uses {key}={hf_cfg[key]!r}, "
                               f"which peftlab's LoRA does not implement; load it with peft.")
    tensors = hf_peft.strip_prefix(tensors)
    if variant == "dora":
        from peftlab.lora.dora import from_hf_tensors
        tensors = from_hf_tensors(tensors)
    targets = sorted({k.split(".lora_")[0] for k in tensors if ".lora_" in k})
    heads = sorted({k.rsplit(".", 1)[0] for k in tensors
                    if ".lora_" not in k and ".base_layer." not in k})
    if not targets:
        raise AdapterError("The Hugging Face adapter holds no lora_A / lora_B tensors.")
    r, alpha = int(hf_cfg.get("r", 8)), float(hf_cfg.get("lora_alpha", 8))
    ranks = {k.split(".lora_")[0]: int(t.shape[0]) for k, t in tensors.items()
             if k.endswith(("lora_A.weight", "lora_embedding_A"))}
    alphas = {}
    for name in targets:
        hits = [k for k in hf_cfg.get("alpha_pattern") or {}
                if re.match(rf"(.*\.)?({k})$", name)]
        if hits:
            alphas[name] = float(hf_cfg["alpha_pattern"][max(hits, key=len)])
    try:
        config = LoraConfig(r=r, alpha=alpha,
                            dropout=float(hf_cfg.get("lora_dropout", 0.0)), targets=targets,
                            modules_to_save=heads, rslora=bool(hf_cfg.get("use_rslora", False)),
                            rank_pattern={n: k for n, k in ranks.items() if k != r},
                            alpha_pattern={n: a for n, a in alphas.items() if a != alpha},
                            variant=variant)
    except ValueError as e:
        raise AdapterError(f"The Hugging Face adapter config is not valid for peftlab: {e}") from e
    return "lora", config, tensors
