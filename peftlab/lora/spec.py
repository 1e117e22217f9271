"""LoRA declares itself: its config, its Hugging Face PEFT type, how `peftlab train` and
`peftlab compare` build it (see peftlab/core/methodspec.py). Loaded without the method's code."""

from peftlab.core.methodspec import CompareEntry, MethodSpec, Option, TrainEntry

DEFAULT_TARGETS = ["query", "value"]     # `peftlab train` without --targets


def _alpha(s: dict) -> float:
    return s.get("alpha") or 2 * s["r"]


def describe(s: dict) -> str:
    """'lora r=8 alpha=16 on query,value'"""
    targets = ",".join(s.get("targets") or DEFAULT_TARGETS)
    return f"lora r={s['r']} alpha={_alpha(s):g} on {targets}"


def build_train(model, tokenizer, s: dict, train_split, total_steps: int) -> None:
    from peftlab import lora
    lora.apply(model, lora.LoraConfig(r=s["r"], alpha=_alpha(s), dropout=s["dropout"],
                                      targets=s.get("targets") or DEFAULT_TARGETS))


def compare_build(targets_key: str):
    """build(model, ctx) for `peftlab compare`: rank ctx["lora_r"] (8), alpha = 2r, on the
    task's ctx[targets_key]."""
    def build(model, ctx):
        from peftlab import lora
        r = ctx.get("lora_r", 8)
        lora.apply(model, lora.LoraConfig(r=r, alpha=2 * r, targets=ctx[targets_key]))
    return build


build_all, build_qv = compare_build("lora_targets"), compare_build("lora_qv_targets")


def build_dora(model, ctx):
    """DoRA (Liu et al. 2024): LoRA's r and alpha, plus a trained magnitude per output."""
    from peftlab import lora
    r = ctx.get("lora_r", 8)
    lora.apply(model, lora.LoraConfig(r=r, alpha=2 * r, targets=ctx["lora_targets"],
                                      variant="dora"))


def build_vera(model, ctx):
    """VeRA (Kopiczko et al. 2024): frozen shared random A, B of rank 256; trained scales."""
    from peftlab import lora
    lora.apply(model, lora.VeraConfig(r=256, targets=ctx["lora_targets"]))

SPEC = MethodSpec(
    name="lora", module="peftlab.lora", config="LoraConfig", order=10,
    paper="Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models",
    hf_peft_type="LORA",
    options=(
        Option("--r", "positive_int", 8, "LoRA rank / AdaLoRA starting rank (default 8)"),
        Option("--alpha", "positive_float", None,
               "LoRA / AdaLoRA scale numerator (default 2 x r)"),
        Option("--dropout", "unit_float", 0.0, "dropout on the adapter input (default 0)"),
        Option("--targets", "name_list", None,
               "modules to adapt: suffixes, re:<regex> or all-linear (default: query,value)"),
    ),
    train=(TrainEntry("lora", 3e-3, describe, build_train),),
    compare=(
        CompareEntry("lora", "text", "r=8 on all 36 linear layers + head", 3e-3, build_all),
        CompareEntry("lora_qv", "text", "r=8 on query,value only (12 layers) + head", 3e-3,
                     build_qv),
        CompareEntry("lora", "vision", "r=4 on every conv + head", 1e-2, build_all),
        CompareEntry("lora", "chat", "r=8 on all 210 linear layers", 2e-3, build_all),
        CompareEntry("lora_qv", "chat", "r=8 on q_proj,v_proj only (60 layers)", 2e-3,
                     build_qv),
        CompareEntry("dora", "text", "DoRA r=8 on all 36 linear layers + head", 3e-3,
                     build_dora, default=False),
        CompareEntry("vera", "text", "VeRA r=256 on all 36 linear layers (shared frozen A, B) "
                                     "+ head", 1e-2, build_vera, default=False),
        CompareEntry("dora", "chat", "DoRA r=8 on all 210 linear layers", 2e-3, build_dora),
        CompareEntry("vera", "chat", "VeRA r=256 on all linear layers (shared frozen A, B)",
                     1e-2, build_vera),
    ),
)
