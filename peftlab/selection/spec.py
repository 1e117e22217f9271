"""Gradient-based selection declares itself (see peftlab/core/methodspec.py). Loaded without the
method's code."""

from peftlab.core.methodspec import CompareEntry, MethodSpec, Option, TrainEntry

SCORE_EXAMPLES = 1024      # FISH (Sung et al., 2021) scores Fisher on 1,024 examples


def describe(s: dict) -> str:
    """'selection of 0.50% of the weights'"""
    return f"selection of {s['fraction']:.2%} of the weights"


def build_train(model, tokenizer, s: dict, train_split, total_steps: int) -> None:
    """Fisher scores on 8 training batches, then the top `fraction` of the weights train."""
    from peftlab import selection, train
    cfg = selection.SelectionConfig(fraction=s["fraction"], per_example=False, max_batches=8,
                                    seed=s["seed"])
    loader = train_split.loader(tokenizer, batch_size=s["batch_size"], shuffle=True,
                                seed=s["seed"] + 1, max_length=s["max_length"])
    batches = [b for b, _ in zip(loader, range(cfg.max_batches))]
    selection.apply(model, cfg, batches=batches, loss_fn=train.loss_fn)


def build_compare(model, ctx) -> None:
    """Per-example Fisher on SCORE_EXAMPLES examples, ctx["selection_fraction"] of the weights."""
    from peftlab import selection, train
    batch_size = ctx["batch_size"]
    cfg = selection.SelectionConfig(fraction=ctx["selection_fraction"], per_example=True,
                                    max_batches=max(1, ctx.get("selection_examples",
                                                               SCORE_EXAMPLES) // batch_size),
                                    seed=ctx["seed"])
    batches = [b for b, _ in zip(ctx["score_loader"](), range(cfg.max_batches))]
    selection.apply(model, cfg, batches=batches, loss_fn=train.loss_fn)


SPEC = MethodSpec(
    name="selection", module="peftlab.selection", config="SelectionConfig", order=40,
    paper="Sung et al. 2021, Training Neural Networks with Fixed Sparse Masks (FISH)",
    options=(Option("--fraction", "unit_float", 0.005,
                    "selection: share of the weights trained (default 0.005)"),),
    train=(TrainEntry("selection", 1e-3, describe, build_train),),
    compare=(
        CompareEntry("selection", "text",
                     "0.5% of weights by per-example Fisher on 1,024 examples + head", 2e-3,
                     build_compare),
        CompareEntry("selection", "chat", "0.5% of weights by per-example Fisher on 64 "
                                          "examples", 1e-3, build_compare),
        CompareEntry("selection", "vision", "2% of weights by Fisher score + head", 1e-1,
                     build_compare),
    ),
)
