"""Prefix tuning (Li & Liang, 2021), with prompt tuning (Lester et al., 2021) beside it.

    prefix.py   the math: prefix_attention(q, k, v, prefix_k, prefix_v, mask), PrefixEncoder
    wiring.py   how transformers' attention calls prefix_attention; finding attention layers
    surgery.py  PrefixConfig, apply, fold, unload, attention_to_prefix
    format.py   loading (and why the Hugging Face PEFT format is refused)

    pl.prefix.apply(model, pl.prefix.PrefixConfig(num_virtual_tokens=10))
    pl.prefix.apply(model, pl.prefix.PromptConfig(num_virtual_tokens=10))   # -> pl.prompt
"""

from peftlab.prefix.format import from_hf_peft, prepare_load, to_hf_peft
from peftlab.prefix.prefix import PrefixEncoder, extend_mask, join_prefix, prefix_attention
from peftlab.prefix.surgery import PrefixConfig, apply, attention_to_prefix, fold, unload
from peftlab.prefix.wiring import probe, text_activations
from peftlab.prompt.surgery import PromptConfig

__all__ = ["PrefixConfig", "PrefixEncoder", "PromptConfig", "apply", "attention_to_prefix",
           "extend_mask", "fold", "from_hf_peft", "join_prefix", "prefix_attention",
           "prepare_load", "probe", "text_activations", "to_hf_peft", "unload"]
