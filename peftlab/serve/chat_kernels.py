"""The served model's linear layers through oneDNN with prepacked weights (CPU, float32).

    packed = PackedLinears(model)
    with packed.use():               # every large nn.Linear of the model: oneDNN's kernel
        model(...)
    packed.invalidate()              # the weights changed: packed again at the next use()

Why. Nearly all of a forward pass is matrix products with the weights, and on a CPU PyTorch
runs float32 products through MKL. Profiling the chat server on a 2-core AMD EPYC showed MKL
at ~60 GFLOP/s per core for the shapes of a batched decoding step (8 rows x 576 x 1536), where
oneDNN (Intel's deep-learning kernel library, bundled with PyTorch) reaches ~150 with the
weight "prepacked" once into its blocked layout: the output projection (576 x 49,152) of 8
rows took 12 ms or more with MKL, 5-6 ms with oneDNN (one thread). This is what torch.compile's CPU backend and
Intel's extension do for inference (torch.ops.mkldnn._linear_pointwise, a private operator:
PackedLinears checks it on a small product first and stays off if it is missing or wrong).

The numbers are float32 products summed in another order: a step's logits differ from MKL's
by rounding (~1e-4 on SmolLM2's logits; tests/test_serve_chat_kernels.py checks the tiny model
to 1e-5 and the greedy tokens). Only inference (no gradients), float32 weights on the CPU,
and the base layers: the small LoRA matrices stay as they are. The packed copies take the
weights' memory once more (~0.5 GB for SmolLM2-135M), built at the first use().
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.lora.surgery import lora_layers

MIN_FEATURES = 16             # layers with fewer inputs or outputs stay (nothing to gain)


@functools.lru_cache(maxsize=1)
def onednn_linear_works() -> bool:
    """Whether torch has the prepacked oneDNN linear and it computes a product right."""
    try:
        op, pack = torch.ops.mkldnn._linear_pointwise, torch.ops.mkldnn._reorder_linear_weight
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        w, x = torch.randn(96, 80, generator=g), torch.randn(3, 2, 80, generator=g)
        got = op(x, pack(w), None, "none", [], "")
        return bool(torch.allclose(got, F.linear(x, w), atol=1e-4, rtol=1e-5))
    except (AttributeError, RuntimeError):
        return False


def _adapter_parts(model: nn.Module) -> set[int]:
    """ids of the LoRA matrices' own nn.Linear modules (they stay on the default kernel)."""
    ids = set()
    for layer in lora_layers(model).values():
        for name in layer.adapter_names():
            p = layer.parts(name)
            ids.update(id(getattr(p, k)) for k in ("lora_A", "lora_B") if hasattr(p, k))
    return ids


class PackedLinears:
    """Every large float32 nn.Linear of `model` on the CPU, packed for oneDNN (module
    docstring); use() routes their forward through it, invalidate() drops the packed copies.
    enabled=False: use() changes nothing."""

    def __init__(self, model: nn.Module, min_features: int = MIN_FEATURES, enabled: bool = True):
        self.model, self.min_features, self.enabled = model, min_features, enabled
        self.packed: dict | None = None                 # module -> packed weight

    def invalidate(self) -> None:
        self.packed = None

    def _build(self) -> dict:
        if not self.enabled or not onednn_linear_works():
            return {}
        skip = _adapter_parts(self.model)
        out = {}
        for m in self.model.modules():
            w = getattr(m, "weight", None)
            if type(m) is nn.Linear and id(m) not in skip and w.device.type == "cpu" and \
                    w.dtype == torch.float32 and min(w.shape) >= self.min_features:
                out[m] = torch.ops.mkldnn._reorder_linear_weight(w.detach())
        return out

    @contextlib.contextmanager
    def use(self):
        """Inside the block, the packed layers compute with oneDNN (with gradients enabled, or
        for an input not float32 on the CPU, as before)."""
        if self.packed is None:
            self.packed = self._build()
        patched = []
        try:
            for m, w in self.packed.items():
                m.forward = _packed_forward(m, w)
                patched.append(m)
            yield self.model
        finally:
            for m in patched:
                del m.forward


def _packed_forward(layer: nn.Linear, packed: torch.Tensor):
    op = torch.ops.mkldnn._linear_pointwise

    def forward(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
            return F.linear(x, layer.weight, layer.bias)
        return op(x.contiguous(), packed, layer.bias, "none", [], "")
    return forward
