"""Full fine-tuning, head-only and BitFit declare themselves (see peftlab/core/methodspec.py).
Loaded without the method's code."""

from peftlab.core.methodspec import CompareEntry, MethodSpec, TrainEntry

NAMES = {"full": "full fine-tuning", "head": "head only", "bitfit": "BitFit"}


def _mode(name: str) -> str:
    return "all" if name == "full" else name


def describe(s: dict) -> str:
    """'full fine-tuning' / 'head only' / 'BitFit'"""
    return NAMES[s["method"]]


def build_train(model, tokenizer, s: dict, train_split, total_steps: int) -> None:
    from peftlab import full
    full.apply(model, full.FullConfig(mode=_mode(s["method"])))


def compare_build(mode: str):
    def build(model, ctx):
        from peftlab import full
        full.apply(model, full.FullConfig(mode=mode))
    return build


build_all, build_head = compare_build("all"), compare_build("head")

SPEC = MethodSpec(
    name="full", module="peftlab.full", config="FullConfig", order=0,
    paper="the baselines; BitFit: Ben Zaken et al. 2022, BitFit: Simple Parameter-efficient "
          "Fine-tuning for Transformer-based Masked Language-models",
    train=(TrainEntry("full", 1e-4, describe, build_train),
           TrainEntry("head", 1e-2, describe, build_train),
           TrainEntry("bitfit", 1e-3, describe, build_train)),
    compare=(
        CompareEntry("full", "text", "every weight", 1e-4, build_all),
        CompareEntry("head", "text", "linear probe: Linear on the frozen mean-pooled encoder",
                     2e-2, build_head),
        CompareEntry("full", "vision", "every weight", 3e-3, build_all),
        CompareEntry("head", "vision", "fc head only", 3e-2, build_head),
        CompareEntry("full", "chat", "every weight", 5e-5, build_all),
    ),
)
