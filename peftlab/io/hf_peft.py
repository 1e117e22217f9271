"""Hugging Face PEFT on-disk format: a small dispatcher plus the helpers methods share.

    pl.save_adapter(model, "out", format="hf-peft")   # adapter_config.json + adapter_model.safetensors
    peft.PeftModel.from_pretrained(base, "out")       # loads it, same outputs
    pl.load_adapter(base, "a_folder_saved_by_peft")   # and the other way round

io/adapters.py calls only `export` and `import_`. Each method that has a PEFT counterpart
implements, in its own module:

    to_hf_peft(model) -> (hf_config: dict, tensors: {hf key: tensor})
    from_hf_peft(hf_config, tensors) -> (peftlab method name, config, {our key: tensor})

and HF's `peft_type` names the method (each method's spec.py: MethodSpec.hf_peft_type). Key layout, as peft writes it
(peft/utils/save_and_load.py, get_peft_model_state_dict): the model's own parameter name,
prefixed "base_model.model." for tuners that wrap layers (LoRA, AdaLoRA), with the adapter
name ("default") removed, e.g.

    base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight
    base_model.model.bert.embeddings.word_embeddings.lora_embedding_A
    base_model.model.classifier.weight            (a module in modules_to_save: its copy)

Prompt-learning tuners (prefix / prompt tuning) use other keys ("prompt_embeddings") and
no prefix; their modules handle that themselves.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from peftlab.core import registry
from peftlab.core.errors import AdapterError
from peftlab.core.registry import method_module
from peftlab.core.state import get_method


def peft_types() -> dict[str, str]:
    """{HF peft_type: peftlab method name} of every registered method with a counterpart."""
    return {s.hf_peft_type: s.name for s in registry.specs().values() if s.hf_peft_type}


# peft types a method reads beside its spec's own: peft's VeRA is a LoRA variant in peftlab
# (peftlab/lora/vera.py); peftlab.lora's from_hf_peft dispatches on peft_type
ALSO_READ = {"VERA": "lora"}


def __getattr__(name: str):
    if name == "PEFT_TYPES":                 # the table, derived from the registry
        return peft_types()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


PREFIX = "base_model.model."


class _NoKernelsHubNote(logging.Filter):
    """Drops the one note bitsandbytes logs when it is imported (peft imports it whenever it
    is installed) on CPUs with AVX512-BF16: "Failed to load CPU gemm_4bit_forward from
    kernels-community ..." (bitsandbytes/backends/cpu/ops.py asks the Hugging Face hub, via
    the `kernels` package, for an optional CPU kernel). peftlab never uses that kernel (its
    NF4 is its own, peftlab/qlora), and offline the note lands in every output that imports
    peft. Any other bitsandbytes message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in str(record.msg)


_BNB_CPU_LOG = logging.getLogger("bitsandbytes.backends.cpu.ops")
if not any(type(f).__name__ == "_NoKernelsHubNote" for f in _BNB_CPU_LOG.filters):
    _BNB_CPU_LOG.addFilter(_NoKernelsHubNote())


def _error(msg: str) -> AdapterError:
    return AdapterError(msg)


def export(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json dict, {key: tensor}) of the model's adapter, in HF PEFT layout."""
    method = get_method(model)
    if method is None:
        raise _error("This model carries no peftlab method, so there is nothing to export.")
    fn = getattr(method_module(method), "to_hf_peft", None)
    if fn is None:
        raise _error(f"peftlab's {method!r} method has no Hugging Face PEFT counterpart; save "
                     f"it with format='peftlab'. Methods that export: "
                     f"{', '.join(sorted(peft_types().values()))}.")
    return fn(model)


def import_(hf_cfg: dict, tensors: dict[str, torch.Tensor]):
    """(method, config, {our key: tensor}) from a folder written by peft's save_pretrained."""
    if not isinstance(hf_cfg, dict):
        raise _error("adapter_config.json must hold a JSON object.")
    peft_type = str(hf_cfg.get("peft_type", "")).upper()
    types = {**peft_types(), **ALSO_READ}
    if peft_type not in types:
        raise _error(f"adapter_config.json has peft_type {hf_cfg.get('peft_type')!r}; peftlab "
                     f"reads {', '.join(types)}.")
    module = method_module(types[peft_type])
    fn = getattr(module, "from_hf_peft", None)
    if fn is None:
        raise _error(f"{module.__name__} cannot read Hugging Face {peft_type} adapters yet.")
    return fn(hf_cfg, tensors)


# --- helpers for wrapping tuners (LoRA, AdaLoRA) --------------------------------------------

def base_config(model: nn.Module, peft_type: str) -> dict:
    """The fields every adapter_config.json carries (task_type None: modules_to_save is explicit)."""
    cfg = getattr(model, "config", None)
    name = getattr(cfg, "_name_or_path", None) or None
    return {"peft_type": peft_type, "task_type": None, "base_model_name_or_path": name,
            "revision": None, "inference_mode": True,
            "auto_mapping": None}


def add_prefix(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our parameter names -> peft's: 'base_model.model.' + name."""
    return {PREFIX + k: v for k, v in tensors.items()}


def strip_prefix(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft's keys -> our parameter names; raises if a key is not in the wrapped-model layout."""
    bad = [k for k in tensors if not k.startswith(PREFIX)]
    if bad:
        raise _error(f"Tensor {bad[0]!r} does not start with {PREFIX!r}: this is not the layout "
                     f"peft's save_pretrained writes for a layer-wrapping adapter.")
    out = {k[len(PREFIX):] for k in tensors}
    if len(out) != len(tensors):
        raise _error("Two tensors map to the same name after removing the prefix.")
    return {k[len(PREFIX):]: v for k, v in tensors.items()}
