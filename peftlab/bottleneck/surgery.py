"""Bottleneck adapters on a model: the config, finding each block's attention and FFN, apply,
unload.

    pl.bottleneck.apply(model, pl.bottleneck.BottleneckConfig())          # Houlsby, serial
    pl.bottleneck.apply(model, pl.bottleneck.BottleneckConfig(            # He et al.'s
        style="parallel", placement="ffn", reduction_factor=2, non_linearity="relu",
        scaling=4.0))                                                     # parallel adapter
    pl.bottleneck.unload(model)            # the base model back, bit for bit

Each transformer block is found by its layout (LAYOUTS: the names transformers gives the
modules of a BERT-, Llama- or GPT-2-style block); the math is peftlab/bottleneck/bottleneck.py.

Compared with the `adapters` package (AdapterHub), whose outputs tests/test_bottleneck.py
matches: the same placement in a BERT block (serial: on the output projection's output,
before the skip connection and LayerNorm; parallel: reading the sublayer's input, added
before the LayerNorm), the same hidden // reduction_factor and nonlinearities. Differences:
the up-projection starts at zero for both styles (adapters' default "bert" init draws it
from N(0, 0.02)); in training mode BERT's hidden dropout acts on h + f(h) here, on h there
(the same in eval); in a pre-LN decoder a parallel adapter reads the sublayer's own input
(the normalised hidden states, as in He et al.'s figure) where adapters reads the residual
stream before the norm.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

from torch import nn

from peftlab.bottleneck.bottleneck import (
    ACTIVATIONS,
    WRAPPERS,
    Bottleneck,
    ParallelAdapter,
    ParallelAdapterPostLN,
    SerialAdapter,
)
from peftlab.core.adapt import Plan, adapt, heads_for
from peftlab.core.errors import TargetError
from peftlab.core.layers import LINEAR_TYPES, AdapterLayer, linear_dims
from peftlab.core.registry import cannot_merge
from peftlab.core.state import get_method, restore, unmark
from peftlab.core.targets import describe_modules, replace_module

PLACEMENTS = ("attention", "ffn")


@dataclass
class BottleneckConfig:
    """Bottleneck adapters in every transformer block. pl.bottleneck.apply(model, BottleneckConfig(...)).
    The defaults are Houlsby et al.'s adapter as the `adapters` package defines it
    (DoubleSeqBnConfig); He et al.'s parallel adapter is style="parallel", placement="ffn",
    reduction_factor=2, non_linearity="relu", scaling=4.0 (adapters' ParBnConfig).

    reduction_factor: the bottleneck is m = hidden // reduction_factor wide; a larger factor
        means fewer parameters (2 * hidden * m + m + hidden per adapter) and less capacity.
    bottleneck_size: m directly (overrides reduction_factor), e.g. to match a LoRA budget.
    non_linearity: the activation between the projections ("relu", "gelu", "swish" = SiLU,
        "tanh"); it is what makes an adapter more than a rank-m linear map (LoRA's kind).
    placement: where in each block: "attention" (after self-attention), "ffn" (after the
        feed-forward network), or both. Houlsby uses both; He et al. find the FFN the better
        place for a parallel adapter.
    style: "serial" (Houlsby: the adapter reads the sublayer's output, h + f(h)) or
        "parallel" (He et al.: it reads the sublayer's input, h + f(x), a side branch).
    scaling: the adapter's output is multiplied by this constant; He et al. use 4 for the
        parallel adapter, so that the branch is not drowned by h.
    modules_to_save: whole modules trained as usual and saved with the adapter; None = the
        model's classification head if it has one; [] = none (the one heads rule,
        peftlab/core/adapt.py).
    """

    method = "bottleneck"
    reduction_factor: float = 16
    bottleneck_size: int | None = None
    non_linearity: str = "swish"
    placement: list[str] = field(default_factory=lambda: ["attention", "ffn"])
    style: str = "serial"
    scaling: float = 1.0
    modules_to_save: list[str] | None = None

    def __post_init__(self):
        rf = self.reduction_factor
        if isinstance(rf, bool) or not isinstance(rf, (int, float)) or not math.isfinite(rf) \
                or rf <= 0:
            raise ValueError(f"BottleneckConfig.reduction_factor must be a positive number (the "
                             f"bottleneck is hidden // reduction_factor wide), got {rf!r}.")
        m = self.bottleneck_size
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"BottleneckConfig.bottleneck_size must be None (use "
                             f"reduction_factor) or a positive int, got {m!r}.")
        if self.non_linearity not in ACTIVATIONS:
            raise ValueError(f"BottleneckConfig.non_linearity must be one of "
                             f"{', '.join(ACTIVATIONS)}; got {self.non_linearity!r}.")
        if isinstance(self.placement, str):
            self.placement = [self.placement]
        bad = [p for p in self.placement or [] if p not in PLACEMENTS]
        if bad or not self.placement:
            raise ValueError(f"BottleneckConfig.placement must name 'attention' and/or 'ffn'; "
                             f"got {self.placement!r}.")
        self.placement = [p for p in PLACEMENTS if p in self.placement]   # one order, no repeats
        if self.style not in ("serial", "parallel"):
            raise ValueError(f"BottleneckConfig.style must be 'serial' (Houlsby) or 'parallel' "
                             f"(He et al.), got {self.style!r}.")
        s = self.scaling
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) \
                or s == 0:
            raise ValueError(f"BottleneckConfig.scaling must be a finite non-zero number, "
                             f"got {s!r}.")
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]


# --- where the adapters go: each block's layout -------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """How one family of transformers blocks names its parts (paths relative to the block).

    attention / ffn: the output projection of the sublayer (a serial adapter wraps it; its
    output size is the hidden size d). parallel_attention / parallel_ffn: what a parallel
    adapter wraps: the sublayer itself in a pre-LN block, the residual module that ends it
    (forward(hidden_states, input_tensor)) in a post-LN block (post_ln=True).
    """

    name: str
    attention: str
    ffn: str
    parallel_attention: str
    parallel_ffn: str
    post_ln: bool


LAYOUTS = (
    Layout("BERT-style post-LN (BERT, RoBERTa, MiniLM, ELECTRA)", "attention.output.dense",
           "output.dense", "attention.output", "output", post_ln=True),
    Layout("Llama-style pre-LN (Llama, Mistral, Qwen2, SmolLM2)", "self_attn.o_proj",
           "mlp.down_proj", "self_attn", "mlp", post_ln=False),
    Layout("GPT-2-style pre-LN", "attn.c_proj", "mlp.c_proj", "attn", "mlp", post_ln=False),
)


def _get(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def blocks(model: nn.Module) -> list[tuple[str, Layout]]:
    """[(block name, its Layout)] of every transformer block in the model, in model order (a
    block is a module holding both output projections of a layout)."""
    found: list[tuple[str, Layout]] = []
    for name, module in model.named_modules():
        if any(name.startswith(b + ".") for b, _ in found):
            continue
        for layout in LAYOUTS:
            if _get(module, layout.attention) is not None and _get(module, layout.ffn) is not None:
                found.append((name, layout))
                break
    return found


def _join(block: str, path: str) -> str:
    return f"{block}.{path}" if block else path


def sites(model: nn.Module, config: BottleneckConfig) -> list[tuple[str, type, int]]:
    """[(module to wrap, wrapper class, hidden size d)] for `config`, in model order.

    Changes nothing; raises TypeError for a model that is not a transformers model, and
    TargetError when no block's attention / FFN output modules can be found.
    """
    found = blocks(model)
    if not found:
        if getattr(model, "config", None) is None:
            raise TypeError(f"Bottleneck adapters need a Hugging Face transformers model (they "
                            f"sit after each transformer block's attention and FFN); "
                            f"{type(model).__name__} has no such blocks. For other models use "
                            f"pl.lora or pl.full.")
        known = "; ".join(f"{lay.name}: {lay.attention} / {lay.ffn}" for lay in LAYOUTS)
        raise TargetError(f"peftlab cannot find the attention and FFN output modules of "
                          f"{type(model).__name__}'s blocks: it knows the layouts {known}; "
                          f"{describe_modules(model)}. Add this model's layout to LAYOUTS in "
                          f"peftlab/bottleneck/surgery.py, or use pl.lora on its linear layers.")
    out = []
    for block, layout in found:
        for where in config.placement:
            proj_name = _join(block, getattr(layout, where))
            proj = model.get_submodule(proj_name)
            if isinstance(proj, AdapterLayer):
                raise TargetError(f"{proj_name} is already wrapped by a peftlab "
                                  f"{proj.method} layer; start from a fresh base model.")
            if not isinstance(proj, LINEAR_TYPES):
                raise TargetError(f"{proj_name} ({type(proj).__name__}) is where a bottleneck "
                                  f"adapter reads the {where} output, but it is not a linear "
                                  f"layer, so its hidden size is unknown. Leave {where!r} out "
                                  f"of placement.")
            d = linear_dims(proj)[1]
            if config.style == "serial":
                out.append((proj_name, SerialAdapter, d))
                continue
            name = _join(block, getattr(layout, f"parallel_{where}"))
            if layout.post_ln:
                params = list(inspect.signature(model.get_submodule(name).forward).parameters)
                if params[:2] != ["hidden_states", "input_tensor"]:
                    raise TargetError(f"A parallel adapter in the post-LN block {block} adds "
                                      f"its output to input_tensor of {name}.forward, but that "
                                      f"takes ({', '.join(params)}). Use style='serial'.")
                out.append((name, ParallelAdapterPostLN, d))
            else:
                out.append((name, ParallelAdapter, d))
    return out


def bottleneck_width(config: BottleneckConfig, d: int, where: str = "the model") -> int:
    """m for hidden size d: bottleneck_size, or d // reduction_factor (as the `adapters`
    package); ValueError when it is 0 or wider than d (that would not be a bottleneck)."""
    m = config.bottleneck_size if config.bottleneck_size is not None \
        else int(d // config.reduction_factor)
    if m < 1:
        raise ValueError(f"reduction_factor={config.reduction_factor} leaves no bottleneck at "
                         f"{where}: hidden size {d} // {config.reduction_factor} = 0. Use "
                         f"reduction_factor <= {d}, or set bottleneck_size.")
    if m > d:
        raise ValueError(f"The bottleneck ({m}) is larger than the hidden size {d} of {where}: "
                         f"a bottleneck adapter projects down, so use bottleneck_size <= {d} "
                         f"(or reduction_factor >= 1).")
    return m


# --- plan / apply / unload -------------------------------------------------------------------

def plan(model: nn.Module, config: BottleneckConfig) -> tuple[list[tuple[str, type, int, int]],
                                                              list[str]]:
    """([(module name, wrapper class, d, m)], modules_to_save names) for `config`; changes
    nothing, raises before any change (see sites and bottleneck_width)."""
    rows = [(name, cls, d, bottleneck_width(config, d, name))
            for name, cls, d in sites(model, config)]
    return rows, heads_for(model, config.modules_to_save, [r[0] for r in rows],
                           "a bottleneck adapter")


def count_parameters(model: nn.Module, config: BottleneckConfig) -> int:
    """Parameters `config` would add to `model` (every adapter's projections), unchanged model."""
    rows, _ = plan(model, config)
    return sum(Bottleneck.count(d, m) for _, _, d, m in rows)


def apply(model: nn.Module, config: BottleneckConfig | None = None) -> nn.Module:
    """Insert a bottleneck adapter at each planned place, freeze the base, train the adapters
    and modules_to_save. In place; returns the model; a bad config raises before anything
    changes (the skeleton in peftlab/core/adapt.py)."""
    config = config or BottleneckConfig()
    if not isinstance(config, BottleneckConfig):
        raise TypeError(f"pl.bottleneck.apply needs a BottleneckConfig, got "
                        f"{type(config).__name__}.")

    def _plan() -> Plan:
        rows, heads = plan(model, config)
        like = next(model.parameters())
        wrappers = {name: cls(model.get_submodule(name), d, m, config.non_linearity,
                              config.scaling, like)                     # model untouched
                    for name, cls, d, m in rows}
        return Plan(list(wrappers), heads, parts=wrappers)

    def _attach(p: Plan) -> None:
        for name, wrapper in p.parts.items():
            replace_module(model, name, wrapper)

    return adapt(model, "bottleneck", config, _plan, _attach)


def bottleneck_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{name: wrapper} of every bottleneck adapter in the model, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, WRAPPERS)}


def unload(model: nn.Module, merge: bool = False) -> nn.Module:
    """Take the adapters out: each wrapper gives its base module back, and the
    modules_to_save weights recorded at apply are put back: the base model, bit for bit.

    merge=True is refused before anything changes: the nonlinearity inside the adapter
    makes it no linear map, so there is no weight to fold it into."""
    if get_method(model) != "bottleneck":
        raise ValueError("unload() needs a model carrying bottleneck adapters "
                         "(pl.bottleneck.apply).")
    if merge:
        raise ValueError(cannot_merge("bottleneck"))
    for name, wrapper in bottleneck_layers(model).items():
        replace_module(model, name, wrapper.base_layer)
    restore(model)
    unmark(model)
    return model
