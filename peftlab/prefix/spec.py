"""Prefix tuning declares itself (see peftlab/core/methodspec.py). Loaded without the method's code."""

from peftlab.core.methodspec import CompareEntry, MethodSpec, Option, TrainEntry


def describe(s: dict) -> str:
    """'prefix with 10 virtual tokens'"""
    return f"prefix with {s['virtual_tokens']} virtual tokens"


def build_train(model, tokenizer, s: dict, train_split, total_steps: int) -> None:
    from peftlab import prefix
    prefix.apply(model, prefix.PrefixConfig(num_virtual_tokens=s["virtual_tokens"]))


def build_compare(model, ctx) -> None:
    from peftlab import prefix
    prefix.apply(model, prefix.PrefixConfig(num_virtual_tokens=10))


SPEC = MethodSpec(
    name="prefix", module="peftlab.prefix", config="PrefixConfig", order=20,
    paper="Li & Liang 2021, Prefix-Tuning: Optimizing Continuous Prompts for Generation",
    hf_peft_type="PREFIX_TUNING", mergeable=False,
    cannot_merge="its virtual tokens are extra inputs to every attention layer, not a "
                 "weight update",
    options=(Option("--virtual-tokens", "positive_int", 10,
                    "prefix / prompt length (default 10)"),),
    train=(TrainEntry("prefix", 3e-2, describe, build_train),),
    compare=(CompareEntry("prefix", "text", "10 key/value prefixes per layer + head", 3e-2,
                          build_compare),
             CompareEntry("prefix", "chat", "10 key/value prefixes per layer", 1e-2,
                          build_compare)),
)
