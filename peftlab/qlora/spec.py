"""QLoRA declares itself (see peftlab/core/methodspec.py). Loaded without the method's code.

A `peftlab compare --task chat` row (none on the text and vision tasks: their tables stay as
they are). Its adapter
exports as Hugging Face PEFT "LORA" (qlora/format.py); hf_peft_type stays None so that a LORA
folder read back maps to pl.lora, the one method of that peft type."""

from peftlab.core.methodspec import CompareEntry, MethodSpec, Option, TrainEntry

DEFAULT_TARGETS = ["query", "value"]     # `peftlab train` without --targets (as LoRA)


def _alpha(s: dict) -> float:
    return s.get("alpha") or 2 * s["r"]


def describe(s: dict) -> str:
    """'qlora r=8 alpha=16 on query,value (NF4 base, double quant)'"""
    targets = ",".join(s.get("targets") or DEFAULT_TARGETS)
    return f"qlora r={s['r']} alpha={_alpha(s):g} on {targets} (NF4 base, double quant)"


def build_train(model, tokenizer, s: dict, train_split, total_steps: int) -> None:
    """keep_base: not a CLI option (the CLI never unloads); callers that need the float base
    back bit for bit set s["keep_base"] = True."""
    from peftlab import qlora
    qlora.apply(model, qlora.QLoraConfig(r=s["r"], alpha=_alpha(s), dropout=s["dropout"],
                                         targets=s.get("targets") or DEFAULT_TARGETS,
                                         keep_base=bool(s.get("keep_base", False))))


def build_compare(model, ctx) -> None:
    from peftlab import qlora
    r = ctx.get("lora_r", 8)
    qlora.apply(model, qlora.QLoraConfig(r=r, alpha=2 * r, targets=ctx["lora_targets"]))


SPEC = MethodSpec(
    name="qlora", module="peftlab.qlora", config="QLoraConfig", order=15,
    paper="Dettmers et al. 2023, QLoRA: Efficient Finetuning of Quantized LLMs",
    options=(
        Option("--r", "positive_int", 8, "LoRA rank / AdaLoRA starting rank (default 8)"),
        Option("--alpha", "positive_float", None,
               "LoRA / AdaLoRA scale numerator (default 2 x r)"),
        Option("--dropout", "unit_float", 0.0, "dropout on the adapter input (default 0)"),
        Option("--targets", "name_list", None,
               "modules to adapt: suffixes, re:<regex> or all-linear (default: query,value)"),
    ),
    train=(TrainEntry("qlora", 3e-3, describe, build_train),),
    compare=(CompareEntry("qlora", "text", "r=8 on all 36 linear layers of the NF4 base (double "
                                           "quant) + head", 3e-3, build_compare, default=False),
             CompareEntry("qlora", "chat", "r=8 on all 210 linear layers of the NF4 base "
                                           "(double quant)", 2e-3, build_compare),),
)
