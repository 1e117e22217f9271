"""Saving, loading and the Hugging Face PEFT format of a QLoRA adapter: LoRA's own.

The adapter is the lora_ tensors and the modules_to_save (peftlab/lora/format.py); the 4-bit
base is not part of it: loading onto a plain base re-quantizes that base (deterministic, the
same codes). In the Hugging Face PEFT format it is a plain LORA adapter (peft_type "LORA"),
as peft itself writes a QLoRA adapter: load it onto the float base (or a bitsandbytes 4-bit
one) with peft.PeftModel.from_pretrained. Read back with pl.load_adapter, a LORA folder
gives pl.lora (the file does not say the base was quantized).
"""

from peftlab.lora.format import adapter_state_dict, load_adapter_state, to_hf_peft

__all__ = ["adapter_state_dict", "load_adapter_state", "to_hf_peft"]
