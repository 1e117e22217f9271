"""AdaLoRA: adaptive budget allocation (Zhang et al., ICLR 2023).

    adalora.py  SVDLinear (W + scale * P diag(lambda) Q), the budget schedule, importance
                scores and the allocator that keeps the best triplets of the whole model
    surgery.py  AdaLoraConfig, apply, after_step, regularization, rank_pattern, to_lora,
                merge / unmerge / unload
    format.py   saving / loading and the Hugging Face PEFT format

    pl.adalora.apply(model, pl.adalora.AdaLoraConfig(init_r=12, target_r=4, total_steps=300))
"""

from peftlab.adalora.adalora import (
    Budget,
    SVDLinear,
    allocate,
    budget_schedule,
    mask_to_budget,
    orthogonality_penalty,
    triplet_scores,
    update_importance,
)
from peftlab.adalora.format import (
    adapter_state_dict,
    from_hf_peft,
    load_adapter_state,
    to_hf_peft,
)
from peftlab.adalora.surgery import (
    AdaLoraConfig,
    after_step,
    apply,
    check_total_steps,
    final_parameter_count,
    history,
    layers,
    merge,
    rank_pattern,
    regularization,
    stored_slots,
    to_lora,
    unload,
    unmerge,
)

__all__ = [
    "AdaLoraConfig", "Budget", "SVDLinear", "adapter_state_dict", "after_step", "allocate",
    "apply", "budget_schedule", "check_total_steps", "final_parameter_count", "from_hf_peft",
    "history", "layers", "load_adapter_state", "mask_to_budget", "merge",
    "orthogonality_penalty", "rank_pattern", "regularization", "stored_slots", "to_hf_peft",
    "to_lora", "triplet_scores", "unload", "unmerge", "update_importance",
]
