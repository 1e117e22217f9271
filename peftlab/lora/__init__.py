"""LoRA: low-rank adaptation (Hu et al., 2021).

    lora.py     the layers: y = W x + b + scale * B A x  (Linear, Conv1D, Conv2d, Embedding)
    surgery.py  the surgery: plan, apply, merge, unmerge, unload; spectra of the updates
    format.py   saving / loading and the Hugging Face PEFT format

    cfg = pl.lora.LoraConfig(r=8, alpha=16, targets=["query", "value"])
    pl.lora.apply(model, cfg); pl.lora.merge(model); pl.lora.unmerge(model); pl.lora.unload(model)
"""

from peftlab.lora.format import (
    HF_UNSUPPORTED,
    adapter_state_dict,
    from_hf_peft,
    load_adapter_state,
    to_hf_peft,
)
from peftlab.lora.lora import (
    SUPPORTED,
    LoraConv2d,
    LoraEmbedding,
    LoraLayer,
    LoraLinear,
    dims,
    lora_scale,
    max_rank,
)
from peftlab.lora.surgery import (
    LoraConfig,
    apply,
    count_parameters,
    delta_weight,
    lora_layers,
    merge,
    plan,
    spectrum,
    unload,
    unmerge,
)

__all__ = [
    "HF_UNSUPPORTED", "SUPPORTED", "LoraConfig", "LoraConv2d", "LoraEmbedding", "LoraLayer",
    "LoraLinear", "adapter_state_dict", "apply", "count_parameters", "delta_weight", "dims",
    "from_hf_peft", "load_adapter_state", "lora_layers", "lora_scale", "max_rank", "merge",
    "plan", "spectrum", "to_hf_peft", "unload", "unmerge",
]
