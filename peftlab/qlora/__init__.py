"""QLoRA: LoRA on a 4-bit NF4 base with double quantization (Dettmers et al. 2023).

    qlora.py       the layer's formula: y = dequant(W_nf4) x + b + scale * B A x
    nf4.py         the quantization: NF4 code book, blockwise absmax, double quantization, packing,
                   the fast dequantize (bits per parameter derived in its docstring)
    linear4bit.py  Linear4bit: codes + constants as buffers, dequantized on the fly; one
                   entry in the base-layer seam (peftlab/core/base.py)
    surgery.py     QLoraConfig, apply (quantize the targets, then LoRA), unload, bytes by part
    format.py      saving / loading and the HF PEFT format (LoRA's own)

    pl.qlora.apply(model, pl.qlora.QLoraConfig(r=8, targets="all-linear", double_quant=True))
    pl.qlora.resident_bytes(model)       # {"codes", "constants", "float", "adapters", "total"}
    pl.qlora.unload(model, merge=True)   # a plain float model with the update merged
"""

from peftlab.qlora import nf4
from peftlab.qlora.format import adapter_state_dict, load_adapter_state, to_hf_peft
from peftlab.qlora.linear4bit import CANNOT_MERGE, Linear4bit
from peftlab.qlora.qlora import quantize_linear, stored_fraction
from peftlab.qlora.surgery import (
    QLoraConfig,
    apply,
    merge,
    quantized_layers,
    resident_bytes,
    unload,
)

__all__ = ["CANNOT_MERGE", "Linear4bit", "QLoraConfig", "adapter_state_dict", "apply",
           "load_adapter_state", "merge", "nf4", "quantize_linear", "quantized_layers",
           "resident_bytes", "stored_fraction", "to_hf_peft", "unload"]
