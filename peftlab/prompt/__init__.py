"""Prompt tuning (Lester et al., 2021): a trainable prompt joined to every input sequence.

    prompt.py   the math: insert_prompt(embeddings, prompt, mask, start), PromptEmbedding
    hooks.py    the three hooks that call it inside a transformers model
    surgery.py  PromptConfig, apply, unload, attention_to_prompt
    format.py   loading and the Hugging Face PEFT format (PROMPT_TUNING)

    pl.prompt.apply(model, pl.prompt.PromptConfig(num_virtual_tokens=10))

This package is prompt tuning's one door (pl.prefix.PromptConfig is a deprecated alias).
"""

from peftlab.prompt.format import from_hf_peft, prepare_load, to_hf_peft
from peftlab.prompt.prompt import PromptEmbedding, insert_prompt, prompt_mask
from peftlab.prompt.surgery import PromptConfig, apply, attention_to_prompt, unload

__all__ = ["PromptConfig", "PromptEmbedding", "apply", "attention_to_prompt", "from_hf_peft",
           "insert_prompt", "prepare_load", "prompt_mask", "to_hf_peft", "unload"]
