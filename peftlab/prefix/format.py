"""Loading a prefix adapter, and why there is no Hugging Face PEFT format for it.

The adapter's tensors are the prefix encoder's parameters (`prefix_encoder.key` / `.value`, or
the embedding and MLP of the reparametrisation) plus those of modules_to_save.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from peftlab.core.errors import AdapterError
from peftlab.prefix.surgery import PrefixConfig, apply


def prepare_load(model: nn.Module, config: PrefixConfig, tensors) -> None:
    """Loading needs the right structure only: the saved tensors replace any init."""
    apply(model, dataclasses.replace(config, init="normal"))


def _no_hf(*_):
    """to_hf_peft / from_hf_peft for prefix tuning: always an AdapterError saying why (the
    position ids differ from Hugging Face PEFT's prefix tuning) and what to use instead."""
    raise AdapterError("peftlab's prefix keeps the real tokens' position ids while Hugging Face "
                       "PEFT's prefix tuning shifts them by num_virtual_tokens (and refuses BERT "
                       "encoders), so the adapter would compute something else there. Use "
                       "format='peftlab' (and peft itself for PEFT's prefix adapters).")


to_hf_peft = from_hf_peft = _no_hf   # refused on purpose, with the reason
