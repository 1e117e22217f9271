"""Bottleneck adapters: serial (Houlsby et al. 2019) and parallel (He et al. 2022).

    bottleneck.py  the math: f(h) = s * W_up act(W_down h), W_up = 0 at the start; the
                   wrappers that add it after (serial) or beside (parallel) a sublayer
    surgery.py     BottleneckConfig, finding each block's attention / FFN, apply, unload
    format.py      saving / loading (and why there is no Hugging Face PEFT format)

    pl.bottleneck.apply(model, pl.bottleneck.BottleneckConfig(reduction_factor=16))
    pl.bottleneck.unload(model)          # the base back, bit for bit; merge=True is refused

(The package is not called `adapters`: peftlab/io/adapters.py is saving and loading.)
"""

from peftlab.bottleneck.bottleneck import (
    ACTIVATIONS,
    Bottleneck,
    ParallelAdapter,
    ParallelAdapterPostLN,
    SerialAdapter,
)
from peftlab.bottleneck.format import (
    adapter_state_dict,
    from_hf_peft,
    load_adapter_state,
    to_hf_peft,
)
from peftlab.bottleneck.surgery import (
    LAYOUTS,
    BottleneckConfig,
    Layout,
    apply,
    blocks,
    bottleneck_layers,
    bottleneck_width,
    count_parameters,
    plan,
    sites,
    unload,
)

__all__ = ["ACTIVATIONS", "LAYOUTS", "Bottleneck", "BottleneckConfig", "Layout",
           "ParallelAdapter", "ParallelAdapterPostLN", "SerialAdapter", "adapter_state_dict",
           "apply", "blocks", "bottleneck_layers", "bottleneck_width", "count_parameters",
           "from_hf_peft", "load_adapter_state", "plan", "sites", "to_hf_peft", "unload"]
