"""AdaLoRA declares itself (see peftlab/core/methodspec.py). Loaded without the method's code."""

from peftlab.core.methodspec import CompareEntry, MethodSpec, Option, TrainEntry

DEFAULT_TARGETS = ["query", "value"]     # `peftlab train` without --targets


def schedule(total_steps: int) -> tuple[int, int]:
    """(tinit, tfinal) for a run of `total_steps`: 10% warm-up, 20% at the final budget;
    very short runs get no warm-up phase."""
    tinit, tfinal = max(0, total_steps // 10), max(1, total_steps // 5)
    if tinit + tfinal >= total_steps:
        tinit, tfinal = 0, 1
    return tinit, tfinal


def describe(s: dict) -> str:
    """'adalora rank 8 -> 4 on query,value'"""
    targets = ",".join(s.get("targets") or DEFAULT_TARGETS)
    return f"adalora rank {s['r']} -> {s['target_r'] or max(1, s['r'] // 2)} on {targets}"


def build_train(model, tokenizer, s: dict, train_split, total_steps: int) -> None:
    from peftlab import adalora
    tinit, tfinal = schedule(total_steps)
    adalora.apply(model, adalora.AdaLoraConfig(
        init_r=s["r"], target_r=s.get("target_r") or max(1, s["r"] // 2),
        targets=s.get("targets") or DEFAULT_TARGETS, total_steps=max(2, total_steps),
        tinit=tinit, tfinal=tfinal, alpha=s.get("alpha") or 2 * s["r"], dropout=s["dropout"]))


def build_compare(model, ctx) -> None:
    """Rank 1.5 r -> r on average (LoRA's budget), alpha 32, on the task's LoRA targets."""
    from peftlab import adalora
    steps = ctx["total_steps"]
    tinit, tfinal = schedule(steps)
    r = ctx.get("lora_r", 8)
    adalora.apply(model, adalora.AdaLoraConfig(
        init_r=r + r // 2, target_r=r, targets=ctx["lora_targets"], total_steps=max(2, steps),
        tinit=tinit, tfinal=tfinal, alpha=32.0))


SPEC = MethodSpec(
    name="adalora", module="peftlab.adalora", config="AdaLoraConfig", order=50,
    paper="Zhang et al. 2023, Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning",
    hf_peft_type="ADALORA",
    options=(
        Option("--r", "positive_int", 8, "LoRA rank / AdaLoRA starting rank (default 8)"),
        Option("--target-r", "positive_int", None, "AdaLoRA average final rank (default r / 2)"),
        Option("--alpha", "positive_float", None,
               "LoRA / AdaLoRA scale numerator (default 2 x r)"),
        Option("--dropout", "unit_float", 0.0, "dropout on the adapter input (default 0)"),
        Option("--targets", "name_list", None,
               "modules to adapt: suffixes, re:<regex> or all-linear (default: query,value)"),
    ),
    train=(TrainEntry("adalora", 3e-2, describe, build_train),),
    compare=(CompareEntry("adalora", "chat", "SVD adapters on all linear layers, rank 12 -> 8 "
                                             "avg (LoRA's budget)", 5e-3, build_compare),
             CompareEntry(
        "adalora", "text",
        "SVD adapters on all linear layers, rank 12 -> 8 avg (LoRA's budget) + head", 1e-2,
        build_compare),),
)
