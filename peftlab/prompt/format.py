"""Loading a prompt adapter, and the Hugging Face PEFT format (PROMPT_TUNING).

The adapter's tensors are `prompt_encoder.weight` (P, E) plus those of modules_to_save.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from peftlab.core.errors import AdapterError
from peftlab.core.state import get_targets
from peftlab.io import hf_peft
from peftlab.prompt.surgery import PromptConfig, apply


def prepare_load(model: nn.Module, config: PromptConfig, tensors) -> None:
    """Before loading a saved prompt onto a plain model: apply prompt tuning with a cheap
    init (the saved tensors replace it), so no tokenizer is needed."""
    apply(model, dataclasses.replace(config, init="normal"))


# --- Hugging Face PEFT format (PROMPT_TUNING) ------------------------------------------------

def to_hf_peft(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json, {"prompt_embeddings": (P, E)}) for peft's PromptTuningConfig.

    Only for decoders with the prompt at the start and no trained head: that is exactly what
    peft's CAUSAL_LM prompt tuning computes (it always puts the prompt first)."""
    pe = model.prompt_encoder
    if pe.start != 0 or get_targets(model):
        raise AdapterError("Hugging Face PEFT puts the prompt before every token and has no "
                           "place for a trained head here, so this adapter (prompt after the "
                           "first token, or with a trained classifier head) would compute "
                           "something else there; save it with format='peftlab'.")
    c = model.config
    hf_cfg = hf_peft.base_config(model, "PROMPT_TUNING")
    hf_cfg.update({"task_type": "CAUSAL_LM", "num_virtual_tokens": pe.weight.shape[0],
                   "token_dim": pe.weight.shape[1], "num_transformer_submodules": 1,
                   "num_attention_heads": getattr(c, "num_attention_heads", None),
                   "num_layers": getattr(c, "num_hidden_layers", None), "modules_to_save": None,
                   "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None,
                   "tokenizer_name_or_path": None, "tokenizer_kwargs": None})
    return hf_cfg, {"prompt_embeddings": pe.weight.detach()}


def from_hf_peft(hf_cfg: dict, tensors: dict[str, torch.Tensor]):
    """("prompt", PromptConfig(position="start"), {"prompt_encoder.weight": (P, E)})."""
    if set(tensors) != {"prompt_embeddings"} or hf_cfg.get("num_transformer_submodules", 1) != 1:
        raise AdapterError(f"peftlab reads Hugging Face prompt tuning adapters of decoder-only "
                           f"models holding just 'prompt_embeddings'; this one holds "
                           f"{sorted(tensors)}. Load it with peft.")
    w = tensors["prompt_embeddings"]
    config = PromptConfig(num_virtual_tokens=int(w.shape[0]), init="normal", position="start",
                          modules_to_save=[])
    return "prompt", config, {"prompt_encoder.weight": w}
