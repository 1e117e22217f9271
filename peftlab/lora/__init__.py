"""LoRA: low-rank adaptation (Hu et al., 2021).

    lora.py     the layers: y = W x + b + scale * B A x  (Linear, Conv1D, Conv2d, Embedding)
    surgery.py  the surgery: plan, apply, merge, unmerge, unload; spectra of the updates
    format.py   saving / loading and the Hugging Face PEFT format
    named.py    several named adapters on one base, mixed-adapter batches (heads.py: their
                heads; routing.py: the per-layer routing)
    fused.py    the fused fast path; variants.py: the LoRA variant seam (DoRA, VeRA, ...)
    dora.py     DoRA (Liu et al. 2024): LoraConfig(variant="dora")
    vera.py     VeRA (Kopiczko et al. 2024): VeraConfig(...) = LoraConfig(variant="vera") + knobs

    cfg = pl.lora.LoraConfig(r=8, alpha=16, targets=["query", "value"])
    pl.lora.apply(model, cfg); pl.lora.merge(model); pl.lora.unmerge(model)
    pl.lora.unload(model, merge=True)    # merged and plain; unload(model): the base back
"""

from peftlab.lora import dora, vera  # noqa: F401  (registers the variants)
from peftlab.lora.format import (
    HF_UNSUPPORTED,
    adapter_state_dict,
    from_hf_peft,
    load_adapter_state,
    to_hf_peft,
)
from peftlab.lora.heads import HeadBank
from peftlab.lora.lora import (
    SUPPORTED,
    LoraConv2d,
    LoraEmbedding,
    LoraLayer,
    LoraLinear,
    LoraParts,
    dims,
    lora_scale,
    max_rank,
)
from peftlab.lora.named import (
    active_adapter,
    adapter_names,
    delete_adapter,
    disable_adapters,
    load_named,
    named_adapter,
    rename_first,
    route,
    set_adapter,
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
from peftlab.lora.vera import VeraConfig

__all__ = [
    "HF_UNSUPPORTED",
    "SUPPORTED",
    "HeadBank",
    "LoraConfig",
    "LoraConv2d",
    "LoraEmbedding",
    "LoraLayer",
    "LoraLinear",
    "LoraParts",
    "VeraConfig",
    "active_adapter",
    "adapter_names",
    "adapter_state_dict",
    "apply",
    "count_parameters",
    "delete_adapter",
    "delta_weight",
    "dims",
    "disable_adapters",
    "from_hf_peft",
    "load_adapter_state",
    "load_named",
    "lora_layers",
    "lora_scale",
    "max_rank",
    "merge",
    "named_adapter",
    "plan",
    "rename_first",
    "route",
    "set_adapter",
    "spectrum",
    "to_hf_peft",
    "unload",
    "unmerge",
]
