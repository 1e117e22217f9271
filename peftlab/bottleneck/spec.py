"""Bottleneck adapters declare themselves (see peftlab/core/methodspec.py). Loaded without the
method's code. A `peftlab compare --task chat` row; none on the text and vision tasks (their
tables stay as they are)."""

from peftlab.core.methodspec import CompareEntry, MethodSpec, Option, TrainEntry


def _rf(s: dict) -> float:
    """--reduction-factor, or each choice's default (adapters' DoubleSeqBn 16 / ParBn 2)."""
    return s.get("reduction_factor") or (2 if s["method"] == "bottleneck_parallel" else 16)


def describe(s: dict) -> str:
    """'bottleneck (serial Houlsby, reduction factor 16)'"""
    style = "parallel on the FFN, scaling 4" if s["method"] == "bottleneck_parallel" \
        else "serial Houlsby"
    return f"bottleneck ({style}, reduction factor {_rf(s):g})"


def build_train(model, tokenizer, s: dict, train_split, total_steps: int) -> None:
    from peftlab import bottleneck
    if s["method"] == "bottleneck_parallel":       # He et al.'s parallel adapter
        cfg = bottleneck.BottleneckConfig(style="parallel", placement="ffn",
                                          reduction_factor=_rf(s), non_linearity="relu",
                                          scaling=4.0)
    else:                                          # Houlsby et al.'s serial adapter
        cfg = bottleneck.BottleneckConfig(reduction_factor=_rf(s))
    bottleneck.apply(model, cfg)


def build_compare(model, ctx) -> None:
    from peftlab import bottleneck
    bottleneck.apply(model, bottleneck.BottleneckConfig(reduction_factor=16))


def build_compare_parallel(model, ctx) -> None:
    """He et al.'s parallel adapter on the FFN, as `peftlab train --method bottleneck_parallel`."""
    build_train(model, None, {"method": "bottleneck_parallel"}, None, 0)


SPEC = MethodSpec(
    name="bottleneck", module="peftlab.bottleneck", config="BottleneckConfig", order=35,
    paper="Houlsby et al. 2019, Parameter-Efficient Transfer Learning for NLP; parallel: He "
          "et al. 2022, Towards a Unified View of Parameter-Efficient Transfer Learning",
    hf_peft_type=None, mergeable=False,
    cannot_merge="its nonlinearity between the down- and up-projection makes it no linear "
                 "map, so no weight can absorb it",
    options=(Option("--reduction-factor", "positive_float", None,
                    "bottleneck adapters: bottleneck = hidden // this (default 16 serial, "
                    "2 parallel)"),),
    train=(TrainEntry("bottleneck", 3e-3, describe, build_train),
           # 1e-3: chosen on validation over 3 seeds (mean validation 0.854 at 3e-4, 0.873 at
           # 1e-3, 0.617 at 3e-3, which collapsed 2 of 3 seeds to one class; see
           # notebooks/results/compare_family/parallel_lr.json)
           TrainEntry("bottleneck_parallel", 1e-3, describe, build_train)),
    compare=(CompareEntry("bottleneck", "text", "serial Houlsby adapters, reduction factor 16 "
                                                "+ head", 3e-3, build_compare, default=False),
             CompareEntry("bottleneck_parallel", "text", "parallel adapters on the FFN, "
                          "reduction factor 2, scaling 4 + head", 1e-3, build_compare_parallel,
                          default=False),
             CompareEntry("bottleneck", "chat", "serial Houlsby adapters, reduction factor 16",
                          3e-3, build_compare),),
)
