"""The sparse update, sparse in compute too: W_eff = W + scatter(values) at k flat positions.

    SparseDelta       the parametrization W -> W + scatter(values) (torch parametrize): any
                      module reading .weight sees W_eff, merge folds it in. Alone it costs,
                      per selected tensor, what full fine-tuning costs: a dense W_eff each
                      forward, and backward forms the dense dL/dW_eff to gather k entries.
    sparse_linear     Linear / Conv1D without that: y = x W_eff^T + b, and the k values'
                      gradient straight from the output gradient g and the input x,

                          dL/dv_i = sum_n g[n, r_i] * x[n, c_i]      (r_i, c_i): entry i

                      N * k products instead of the N * d_out * d_in of the dense gradient;
                      backward keeps only the input columns some value reads. Where the
                      entries fill their rows x columns block densely enough (a heavily
                      selected matrix), the block g[:, R]^T @ x[:, C] is one matmul instead.
    sparse_embedding  Embedding: the base lookup plus a lookup in a small table holding only
                      the rows with selected entries (no dense copy or gradient of the table).
    SparseLinear,     the wrappers surgery.py puts where a selected Linear / Conv1D /
    SparseEmbedding   Embedding was (its base_layer keeps the parametrization); their forward
                      is the fast path. Every other module (LayerNorm, RMSNorm, conv, a bias
                      alone) keeps only the parametrization: it reads W + delta as .weight.

Outputs are bit for bit those of the parametrized layer (W_eff is formed the same way, in
W's dtype); the values' gradient equals the dense gradient gathered at the k entries up to
float summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.layers import AdapterLayer, Conv1D  # Conv1D: GPT-2's x @ W + b, W (d_in, d_out)

CHUNK = 1 << 20   # products per gather chunk in backward (temporaries of ~4 MB fp32)
DENSE_BLOCK = 64  # one matmul over the rows x columns block when it is < 64x the k entries


class SparseDelta(nn.Module):
    """The parametrization W -> W + scatter(values) at flat positions `indices`. On fp16 /
    bf16 weights the values are kept in fp32 (pass dtype=) and cast for the sum."""

    def __init__(self, shape, indices: torch.Tensor, dtype=torch.float32, device=None):
        super().__init__()
        self.shape = tuple(shape)
        self.register_buffer("indices", indices.to(device=device, dtype=torch.long))   # (k,)
        self.values = nn.Parameter(torch.zeros(indices.numel(), dtype=dtype, device=device))
        self._plans: dict = {}   # index bookkeeping of the fast paths, per layer kind

    def forward(self, weight: torch.Tensor) -> torch.Tensor:   # (S) -> (S)
        return effective_weight(weight, self.indices, self.values)

    def plan(self, kind: str) -> tuple:
        """Index tensors the fast path of a layer kind needs; recomputed when indices change."""
        plans = self.__dict__.setdefault("_plans", {})
        got = plans.get(kind)
        if got is None or got[0] is not self.indices or got[1] != self.indices._version:
            got = plans[kind] = (self.indices, self.indices._version,
                                 _make_plan(kind, self.indices, self.shape))
        return got[2]

    def extra_repr(self) -> str:
        return f"shape={self.shape}, selected={self.indices.numel():,}"


def effective_weight(weight: torch.Tensor, indices: torch.Tensor,
                     values: torch.Tensor) -> torch.Tensor:
    """W + scatter(values), in W's dtype (fp32 values on an fp16 / bf16 weight are cast)."""
    return weight.reshape(-1).index_add(0, indices, values.to(weight.dtype)).view_as(weight)


@torch.no_grad()
def _make_plan(kind: str, idx: torch.Tensor, shape: tuple) -> tuple:
    if kind == "embedding":                          # W: (num_embeddings, dim)
        rows, cols = idx // shape[1], idx % shape[1]
        uniq, pos = torch.unique(rows, return_inverse=True)                       # (R,), (k,)
        slot = torch.full((shape[0],), uniq.numel(), dtype=torch.long, device=idx.device)
        slot[uniq] = torch.arange(uniq.numel(), device=idx.device)   # vocabulary row -> table row
        return rows, pos * shape[1] + cols, slot, uniq.numel()      # flat position in the table
    if kind == "conv1d":                             # W: (d_in, d_out)
        inp, out = idx // shape[1], idx % shape[1]
    else:                                            # W: (d_out, d_in)
        out, inp = idx // shape[1], idx % shape[1]
    out_u, out_pos = torch.unique(out, return_inverse=True)                       # (R,), (k,)
    in_u, in_pos = torch.unique(inp, return_inverse=True)                         # (C,), (k,)
    block = idx.numel() * DENSE_BLOCK >= out_u.numel() * in_u.numel()
    return out, out_u, in_u, in_pos, out_pos * in_u.numel() + in_pos, block


def _values_grad(g: torch.Tensor, xc: torch.Tensor, plan: tuple) -> torch.Tensor:
    """dL/dv_i = sum_n g[n, r_i] * x[n, c_i], in fp32. g: (N, d_out), xc: (N, C) = x[:, in_u]."""
    out, out_u, _, in_pos, flat, block = plan
    g, xc = g.float(), xc.float()
    if block:                                    # the rows x columns block in one matmul
        gr = g if out_u.numel() == g.shape[1] else g.index_select(1, out_u)       # (N, R)
        return (gr.T @ xc).view(-1).index_select(0, flat)                         # (k,)
    step = max(1, CHUNK // max(1, g.shape[0]))   # gather k columns of each, in chunks
    parts = [g.index_select(1, out[s:s + step]).mul_(xc.index_select(1, in_pos[s:s + step]))
             .sum(0) for s in range(0, out.numel(), step)]                         # (N, chunk)
    return torch.cat(parts) if parts else g.new_zeros(0)


class _SparseLinear(torch.autograd.Function):
    """y = x @ W_eff^T + b (nn.Linear) or x @ W_eff + b (Conv1D); W frozen, grads for x, the
    values and b only. Under autocast the matmul runs in the autocast dtype, as F.linear's."""

    @staticmethod
    def forward(ctx, x, values, bias, weight, indices, plan, conv1d):
        w = effective_weight(weight, indices, values)
        y = _linear(x, w, bias, conv1d)
        in_u = plan[2]                                  # keep only the columns values read
        xc = x if in_u.numel() == x.shape[-1] else x.index_select(-1, in_u)       # (..., C)
        ctx.save_for_backward(xc, values, weight, indices)
        ctx.plan, ctx.conv1d, ctx.x_meta = plan, conv1d, (x.shape, x.dtype)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, g):
        xc, values, weight, indices = ctx.saved_tensors
        shape, dtype = ctx.x_meta
        g2 = g.reshape(-1, g.shape[-1])                                           # (N, d_out)
        gx = gv = gb = None
        if ctx.needs_input_grad[0]:
            w = effective_weight(weight, indices, values).to(g.dtype)
            gx = (g2 @ (w.T if ctx.conv1d else w)).view(shape).to(dtype)        # (..., d_in)
        if ctx.needs_input_grad[1]:
            gv = _values_grad(g2, xc.reshape(-1, xc.shape[-1]), ctx.plan).to(values.dtype)
        if ctx.needs_input_grad[2]:
            gb = g2.sum(0).to(ctx.bias_dtype)
        return gx, gv, gb, None, None, None, None


def _linear(x, w, bias, conv1d: bool) -> torch.Tensor:
    if not conv1d:
        return F.linear(x, w, bias)
    x2 = x.reshape(-1, x.shape[-1])          # exactly transformers' Conv1D.forward
    y = torch.addmm(bias, x2, w) if bias is not None else x2 @ w
    return y.view(*x.shape[:-1], w.shape[-1])


def sparse_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  delta: SparseDelta, conv1d: bool = False) -> torch.Tensor:
    """x (..., d_in) -> (..., d_out) through W_eff = weight + delta, without the dense
    gradient of W_eff: only x, the values and the bias get gradients (weight stays frozen)."""
    if not (torch.is_grad_enabled() and delta.values.requires_grad):
        return _linear(x, effective_weight(weight, delta.indices, delta.values), bias, conv1d)
    plan = delta.plan("conv1d" if conv1d else "linear")
    return _SparseLinear.apply(x, delta.values, bias, weight, delta.indices, plan, conv1d)


def sparse_embedding(ids: torch.Tensor, weight: torch.Tensor, delta: SparseDelta,
                     padding_idx: int | None = None) -> torch.Tensor:
    """ids (...) -> (..., dim): W[ids] + table[slot[ids]], where table (R + 1, dim) holds the
    R vocabulary rows with selected entries (row R: zeros, for every other id). Plain autograd:
    the values' gradient is a gather from the small table's gradient. As with F.embedding's
    padding_idx, entries in the padding row get no gradient."""
    rows, flat, slot, n_rows = delta.plan("embedding")
    y = F.embedding(ids, weight, padding_idx)                                     # (..., dim)
    values = delta.values
    if padding_idx is not None:
        values = torch.where(rows == padding_idx, values.detach(), values)
    dim = weight.shape[1]
    table = values.new_zeros((n_rows + 1) * dim).index_add(0, flat, values).view(-1, dim)
    return y + F.embedding(torch.take(slot, ids), table).to(y.dtype)              # (R + 1, dim)


def fast_kind(module: nn.Module) -> str | None:
    """"linear", "conv1d" or "embedding": the fast path for a layer whose forward is exactly
    nn.Linear's, transformers' Conv1D's or nn.Embedding's (a subclass only if it keeps that
    forward; a parametrized layer does); None for every other module. A wrapper: its base's."""
    if isinstance(module, SparseLayer):
        module = module.base_layer
    forward = type(module).forward
    if forward is nn.Linear.forward:
        return "linear"
    if Conv1D is not None and forward is Conv1D.forward:
        return "conv1d"
    if forward is nn.Embedding.forward:
        return "embedding"
    return None


def has_fast_path(module: nn.Module) -> bool:
    """True for nn.Linear, transformers' Conv1D and nn.Embedding (and the wrappers around
    them): the layers SparseLinear / SparseEmbedding run without the dense W + delta."""
    return fast_kind(module) is not None


# --- the wrappers surgery.py puts where a selected Linear / Conv1D / Embedding was ----------

class _Shown(dict):
    """{"weight": a ParametrizationList}, also readable as .weight."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class SparseLayer(AdapterLayer):
    """A selected layer around its `base_layer`, whose weight torch's parametrize makes
    W + scatter(values): base_layer.parametrizations.weight holds the frozen W (`.original`)
    and the SparseDelta, and base_layer.weight reads W_eff (merge folds it in). This forward is
    the reference, the base layer's own forward on W_eff (a dense W + delta every call and its
    dense gradient in backward); SparseLinear and SparseEmbedding override it with the fast
    path whenever the weight is exactly frozen W + one SparseDelta."""

    method = "selection"

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer

    @property
    def delta(self) -> SparseDelta:
        """The weight's SparseDelta (one object for every holder of a tied weight)."""
        return self.base_layer.parametrizations.weight[0]

    @property
    def weight(self) -> torch.Tensor:
        """W + scatter(values), as the plain layer's .weight."""
        return self.base_layer.weight

    @property
    def parametrizations(self) -> dict:
        """The weight's parametrization where a plain parametrized layer shows it:
        layer.parametrizations.weight[0] is the SparseDelta. (Other selected tensors of the
        layer, a bias, are in base_layer.parametrizations.)"""
        return _Shown(weight=self.base_layer.parametrizations.weight)

    def fast(self) -> bool:
        """Whether the fast path applies: the weight is exactly frozen W + one SparseDelta."""
        plist = self.base_layer.parametrizations.weight
        return len(plist) == 1 and isinstance(plist[0], SparseDelta) \
            and not plist.original.requires_grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x)


class SparseLinear(SparseLayer):
    """nn.Linear or Conv1D with selected weight entries: y = x W_eff^T + b (Conv1D: x W_eff + b)
    through sparse_linear: no dense W_eff, only the k values' gradient."""

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.conv1d = fast_kind(base_layer) == "conv1d"    # W stored (d_in, d_out)

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias (b + its own delta when the bias is selected too)."""
        return self.base_layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (..., d_in) -> (..., d_out)
        if not self.fast():
            return self.base_layer(x)
        b = self.base_layer
        return sparse_linear(x, b.parametrizations.weight.original, b.bias, self.delta,
                             conv1d=self.conv1d)


class SparseEmbedding(SparseLayer):
    """nn.Embedding with selected entries: W[ids] + a lookup in the small table of the rows
    with selected entries (sparse_embedding); max_norm / scale_grad_by_freq / sparse
    embeddings take the reference path."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:   # (...) -> (..., dim)
        b = self.base_layer
        if not self.fast() or b.max_norm is not None or b.scale_grad_by_freq or b.sparse:
            return b(ids)
        return sparse_embedding(ids, b.parametrizations.weight.original, self.delta,
                                b.padding_idx)
