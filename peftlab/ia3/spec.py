"""IA3 declares itself (see peftlab/core/methodspec.py). Loaded without the method's code.
No `peftlab compare` row by default (the default comparison's method list stays as it is)."""

from peftlab.core.methodspec import MethodSpec, TrainEntry


def describe(s: dict) -> str:
    """'ia3 on key,value,output.dense' / 'ia3 on the model type's defaults'"""
    targets = s.get("targets")
    return f"ia3 on {','.join(targets)}" if targets else "ia3 on the model type's defaults"


def build_train(model, tokenizer, s: dict, train_split, total_steps: int) -> None:
    from peftlab import ia3
    ia3.apply(model, ia3.IA3Config(targets=s.get("targets") or None))


SPEC = MethodSpec(
    name="ia3", module="peftlab.ia3", config="IA3Config", order=60,
    paper="Liu et al. 2022, Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper "
          "than In-Context Learning",
    hf_peft_type="IA3",
    train=(TrainEntry("ia3", 1e-2, describe, build_train),),
)
