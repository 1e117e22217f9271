"""IA3 declares itself (see peftlab/core/methodspec.py). Loaded without the method's code.
A `peftlab compare --task chat` row, and a text row run only on request (the default text
table stays as it is)."""

from peftlab.core.methodspec import CompareEntry, MethodSpec, TrainEntry


def describe(s: dict) -> str:
    """'ia3 on key,value,output.dense' / 'ia3 on the model type's defaults'"""
    targets = s.get("targets")
    return f"ia3 on {','.join(targets)}" if targets else "ia3 on the model type's defaults"


def build_train(model, tokenizer, s: dict, train_split, total_steps: int) -> None:
    from peftlab import ia3
    ia3.apply(model, ia3.IA3Config(targets=s.get("targets") or None))


def build_compare(model, ctx) -> None:
    from peftlab import ia3
    ia3.apply(model, ia3.IA3Config())


SPEC = MethodSpec(
    name="ia3", module="peftlab.ia3", config="IA3Config", order=60,
    paper="Liu et al. 2022, Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper "
          "than In-Context Learning",
    hf_peft_type="IA3",
    train=(TrainEntry("ia3", 1e-2, describe, build_train),),
    compare=(CompareEntry("ia3", "text", "scales on key, value, output.dense (peft's BERT "
                                         "defaults) + head", 1e-2, build_compare, default=False),
             CompareEntry("ia3", "chat", "scales on k_proj, v_proj, down_proj (the Llama "
                                         "defaults)", 1e-2, build_compare),),
)
