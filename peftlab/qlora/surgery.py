"""QLoRA (Dettmers et al. 2023): quantize the targeted base layers to NF4, then LoRA on top.

    cfg = pl.qlora.QLoraConfig(r=8, alpha=16, targets="all-linear", double_quant=True)
    pl.qlora.apply(model, cfg)           # each target: Linear -> LoraLinear(Linear4bit)
    pl.qlora.unload(model, merge=True)   # dequantize each base to float, add scale * B @ A
    pl.qlora.unload(model)               # the float base back (see keep_base)

The forward of an adapted layer is LoRA's formula over a 4-bit base (peftlab/lora/lora.py,
peftlab/qlora/linear4bit.py):

    y = dequant(W_nf4) x + b + scale * B A dropout(x)

Everything but the quantization is peftlab.lora's own machinery (the planner, LoraLinear,
saving, the HF PEFT format): Linear4bit is one more kind of base layer (core/base.py).

Note: the embedded chat model (SmolLM2-135M-Instruct) is itself shipped as a Q4_1 GGUF and
dequantized; NF4 on it re-quantizes an already 4-bit base, so "QLoRA minus LoRA" on it
measures NF4's rounding on top of Q4_1's, not against the original bf16 weights.

Choices:
  * unload(merge=False): QLoRA's point is memory, so by default only the codes are kept and
    unload(merge=False) gives back the *dequantized* base (the weights the adapter was
    trained against; NF4 rounding, not the original bits). keep_base=True also keeps a CPU
    copy of each original weight in the method state (not on the model's device, not in
    state_dict), and unload(merge=False) then gives the original base back bit for bit.
  * merging in place is refused (a 4-bit weight cannot hold W + delta): unload(merge=True)
    dequantizes each base to fp32 and adds scale * B @ A there, exactly the function the
    adapted model computes (up to fp32 rounding of one addition).
  * loading an adapter onto a plain base re-quantizes the base from its float weights: the
    quantization is deterministic, so the codes are the same as when the adapter was trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from peftlab.core.adapt import Plan, adapt
from peftlab.core.base import base_kind
from peftlab.core.errors import TargetError
from peftlab.core.layers import is_conv1d, tied_parameter_ids
from peftlab.core.state import get_method, method_state
from peftlab.core.targets import replace_module
from peftlab.lora import LoraConfig, LoraLinear, lora_layers
from peftlab.lora import plan as lora_plan
from peftlab.lora import unload as lora_unload
from peftlab.qlora import nf4
from peftlab.qlora.linear4bit import CANNOT_MERGE, Linear4bit
from peftlab.qlora.qlora import quantize_linear


@dataclass
class QLoraConfig(LoraConfig):
    """LoRA's config (r, alpha, dropout, targets, modules_to_save, rslora, rank_pattern,
    alpha_pattern; see pl.lora.LoraConfig; variant must stay "lora": plain LoRA on the 4-bit
    base) plus how the frozen base is stored:

    block_size: numbers per absmax scale (64 in the paper; bitsandbytes' sizes 32..4096).
    double_quant: also quantize the absmax scales to 8 bits (4.127 instead of 4.5 bits per
        parameter at block 64).
    keep_base: keep a CPU copy of each original weight so that unload(merge=False) gives the
        base back bit for bit (costs the fp32 bytes in CPU memory; off by default).
    """

    method = "qlora"
    block_size: int = 64
    double_quant: bool = True
    keep_base: bool = False

    def __post_init__(self):
        super().__post_init__()
        nf4.check_block_size(self.block_size)
        if self.variant != "lora":
            raise ValueError(f"QLoraConfig.variant must be 'lora' (plain LoRA on the 4-bit "
                             f"base), got {self.variant!r}.")
        for name in ("double_quant", "keep_base"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"QLoraConfig.{name} must be True or False, got "
                                 f"{getattr(self, name)!r}.")


def _check_quantizable(model: nn.Module, name: str, module: nn.Module, tied: set[int]) -> None:
    if not (isinstance(module, nn.Linear) or is_conv1d(module)):
        kind = base_kind(module)
        raise TargetError(f"QLoRA quantizes Linear layers (nn.Linear, GPT-2's Conv1D) to NF4, "
                          f"but target {name} is a {type(module).__name__}"
                          f"{f' ({kind.family})' if kind else ''}, which cannot be quantized "
                          f"here. Leave it out of the targets (e.g. targets='all-linear'), or "
                          f"use pl.lora for it.")
    if id(module.weight) in tied:
        raise TargetError(f"QLoRA cannot quantize {name}: its weight is tied to another module "
                          f"(e.g. the input embeddings), which would then read a 4-bit copy. "
                          f"Leave it out of the targets.")


def apply(model: nn.Module, config: QLoraConfig | None = None) -> nn.Module:
    """Quantize every target to NF4 (Linear4bit) and wrap it in a LoRA layer; freeze the
    base, train the adapters + modules_to_save. In place; returns the model. Everything is
    validated and quantized before the model changes (a bad target or a non-finite weight
    leaves it exactly as it was)."""
    config = config or QLoraConfig()
    if not isinstance(config, QLoraConfig):
        raise TypeError(f"pl.qlora.apply needs a QLoraConfig, got {type(config).__name__}.")

    def _plan() -> Plan:
        rows, heads = lora_plan(model, config)            # LoRA's planner: targets, ranks
        tied = tied_parameter_ids(model)
        for name, module, _ in rows:
            _check_quantizable(model, name, module, tied)
        layers = {}
        for name, module, _ in rows:                      # quantize: the model is untouched
            q = quantize_linear(module, config.block_size, config.double_quant, name)
            layers[name] = LoraLinear(q, r=config.rank_of(name), alpha=config.alpha_of(name),
                                      dropout=config.dropout, rslora=config.rslora)
        keep = [f"{name}.weight" for name in layers] if config.keep_base else []
        return Plan(list(layers), heads, keep=keep, parts=layers)

    def _attach(p: Plan) -> None:
        for name, layer in p.parts.items():
            replace_module(model, name, layer)

    return adapt(model, "qlora", config, _plan, _attach)


def merge(model: nn.Module) -> nn.Module:
    """Refused: the base weights are 4-bit codes (see unload(merge=True))."""
    raise ValueError(f"QLoRA: {CANNOT_MERGE}.")


def unload(model: nn.Module, merge: bool = False) -> nn.Module:
    """Replace each QLoRA layer by a float layer of the base's own class; returns a plain model.

    merge=True: W = dequant(W_nf4) + scale * B @ A (fp32), the fine-tuned model.
    merge=False: the base: the original weights bit for bit when the config kept them
    (keep_base=True), else the dequantized NF4 weights (the adapter's own base). The
    modules_to_save come back as recorded at apply in both cases of merge=False."""
    if get_method(model) != "qlora":
        raise ValueError(f"pl.qlora.unload needs a model carrying QLoRA, not "
                         f"{get_method(model)!r}.")
    state = method_state(model)
    layers = lora_layers(model)
    names = {f"{n}.weight" for n in layers}
    kept = {n: state.originals.pop(n) for n in list(state.originals) if n in names}
    for layer in layers.values():
        if isinstance(layer.base_layer, Linear4bit):
            layer.base_layer = layer.base_layer.to_float()     # dequantized fp32
    lora_unload(model, merge=merge)                            # LoRA's unload does the rest
    if not merge:
        with torch.no_grad():
            for n, t in kept.items():
                model.get_parameter(n).copy_(t)
    return model


def quantized_layers(model: nn.Module) -> dict[str, Linear4bit]:
    """{name: Linear4bit} of every 4-bit base layer in the model."""
    return {n: m for n, m in model.named_modules() if isinstance(m, Linear4bit)}


def resident_bytes(model: nn.Module) -> dict[str, int]:
    """The model's bytes by part: {"codes": packed 4-bit codes, "constants": absmax scales
    (and their 8-bit level), "float": every other parameter and buffer (embeddings, norms,
    biases, heads), "adapters": the lora_ tensors, "total": the sum}. Each tensor once."""
    seen: set[int] = set()
    out = {"codes": 0, "constants": 0, "float": 0, "adapters": 0}
    for q in quantized_layers(model).values():
        for part, n in q.nbytes_by_part().items():
            out[part] += n
        seen.update(id(b) for b in q.buffers(recurse=False))
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        out["adapters" if ".lora_" in name else "float"] += t.numel() * t.element_size()
    out["total"] = sum(out.values())
    return out


def config_without_base_copy(config: QLoraConfig) -> QLoraConfig:
    """The same config with keep_base=False (what a deployment keeps)."""
    return dataclasses.replace(config, keep_base=False)
