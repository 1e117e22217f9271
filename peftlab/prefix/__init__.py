"""Prefix tuning (Li & Liang, 2021): trainable keys and values in every attention layer.

    prefix.py   the math: prefix_attention(q, k, v, prefix_k, prefix_v, mask), PrefixEncoder
    wiring.py   how transformers' attention calls prefix_attention; finding attention layers
    surgery.py  PrefixConfig, apply, fold, unload, attention_to_prefix
    format.py   loading (and why the Hugging Face PEFT format is refused)

    pl.prefix.apply(model, pl.prefix.PrefixConfig(num_virtual_tokens=10))

Prompt tuning, its input-level sibling, has its own package: pl.prompt.apply(model,
pl.prompt.PromptConfig(...)). `pl.prefix.PromptConfig` and `pl.prefix.apply(model,
PromptConfig)` still work, with a DeprecationWarning.
"""

from peftlab.prefix.format import from_hf_peft, prepare_load, to_hf_peft
from peftlab.prefix.prefix import PrefixEncoder, extend_mask, join_prefix, prefix_attention
from peftlab.prefix.surgery import PrefixConfig, apply, attention_to_prefix, fold, unload
from peftlab.prefix.wiring import probe, text_activations

__all__ = ["PrefixConfig", "PrefixEncoder", "apply", "attention_to_prefix", "extend_mask", "fold",
           "from_hf_peft", "join_prefix", "prefix_attention", "prepare_load", "probe",
           "text_activations", "to_hf_peft", "unload"]


def __getattr__(name: str):
    """pl.prefix.PromptConfig: prompt tuning's config, deprecated here (use pl.prompt)."""
    if name == "PromptConfig":
        import warnings

        from peftlab.prompt.surgery import PromptConfig

        warnings.warn("pl.prefix.PromptConfig is deprecated: use pl.prompt.PromptConfig / "
                      "pl.prompt.apply (pl.prompt is prompt tuning's own package).",
                      DeprecationWarning, stacklevel=2)
        return PromptConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
