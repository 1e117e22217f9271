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
    sparse_forward    the forward surgery.py gives those layers; every other module (LayerNorm,
                      conv, biases, a module reading .weight itself) uses the parametrization.

Outputs are bit for bit those of the parametrized layer (W_eff is formed the same way, in
W's dtype); the values' gradient equals the dense gradient gathered at the k entries up to
float summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.layers import Conv1D  # GPT-2's linear: y = x @ W + b, W (d_in, d_out)

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


def _fast_kind(module: nn.Module) -> str | None:
    cls = type(module).__bases__[0] if hasattr(module, "parametrizations") else type(module)
    if cls.forward is nn.Linear.forward:
        return "linear"
    if Conv1D is not None and cls.forward is Conv1D.forward:
        return "conv1d"
    if cls.forward is nn.Embedding.forward:
        return "embedding"
    return None


def has_fast_path(module: nn.Module) -> bool:
    """True for a layer whose forward sparse_forward can replace: nn.Linear, transformers'
    Conv1D and nn.Embedding (their subclasses only if they keep the base forward)."""
    return _fast_kind(module) is not None


def sparse_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """forward of a parametrized Linear / Conv1D / Embedding (installed on its parametrized
    class by surgery.py): the fast path when .weight is exactly `frozen W + one SparseDelta`,
    the base class's forward (reading the parametrized weight) otherwise."""
    kind, base = _fast_kind(self), type(self).__bases__[0]
    plist = self.parametrizations._modules.get("weight")   # a ModuleDict has no .get
    if plist is None or len(plist) != 1 or not isinstance(plist[0], SparseDelta) \
            or plist.original.requires_grad:
        return base.forward(self, x)
    w, d = plist.original, plist[0]
    if kind == "embedding":
        if self.max_norm is not None or self.scale_grad_by_freq or self.sparse:
            return base.forward(self, x)          # the rare cases: the parametrized lookup
        return sparse_embedding(x, w, d, self.padding_idx)
    return sparse_linear(x, w, self.bias, d, conv1d=kind == "conv1d")
