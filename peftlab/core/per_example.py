"""Per-example squared gradients from ONE batched backward pass: FISH's Fisher, fast.

FISH (Sung et al., 2021) scores a weight by the empirical Fisher (1/N) sum_i g_i^2, with g_i
the gradient of example i's loss alone. The obvious way runs N single-example backward passes
(selection.py's loop). Layers that treat examples independently allow one pass instead
(Goodfellow, 2015, "Efficient per-example gradient computations"; Opacus does the same):

    Linear y = x W^T + b, on a batch: X_i (T, d_in) the layer's inputs for example i,
    G_i (T, d_out) the gradient of the SUMMED loss sum_j L_j w.r.t. its outputs. Since L_j
    does not depend on example i's rows for j != i, G_i is example i's own gradient, and

        dL_i/dW = G_i^T X_i   (d_out, d_in)          dL_i/db = sum_t G_i[t]
        Conv1D (GPT-2, W stored (d_in, d_out)):   X_i^T G_i
        Embedding (rows picked by ids_i):           row v gets sum of G_i[t] where ids_i[t] == v
        LayerNorm (xhat = normalised input):       dL_i/dgamma = sum_t G_i[t] * xhat_i[t]

Square and sum over i: sum_i g_i^2 for every entry, for the cost of about two backward passes.

What it needs, checked before use (otherwise compute_scores takes the exact loop):
  * every scored parameter is the weight/bias of an nn.Linear, Conv1D, nn.Embedding or
    nn.LayerNorm, held by that one module (no tied weights);
  * layers see the batch in dimension 0. A layer whose output has batch size 1 while the
    batch has B (BERT's position embeddings, computed once and broadcast) has its output
    expanded to B, so its per-example gradients can be read;
  * loss_fn is the MEAN of per-example losses (as cross-entropy is): loss * B is the sum.
On the first batch, two examples are also scored one at a time (dropout off) and compared
(agrees_with_loop): any mismatch sends compute_scores back to the loop, with a warning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.batches import split_batch
from peftlab.core.layers import Conv1D, is_conv1d, tied_parameter_ids

SUPPORTED: tuple[type, ...] = (nn.Linear, nn.Embedding, nn.LayerNorm) + (
    (Conv1D,) if Conv1D is not None else ())


class Unsupported(Exception):
    """The model does not fit the batched computation; compute_scores uses the loop."""


def plan(model: nn.Module, names: list[str]) -> dict[str, dict[str, str]] | None:
    """{module name: {"weight"/"bias": scored parameter name}}, or None when some scored
    parameter is not the weight/bias of a supported, untied, plain layer."""
    tied = tied_parameter_ids(model)
    named = dict(model.named_parameters())
    out: dict[str, dict[str, str]] = {}
    for n in names:
        mname, _, attr = n.rpartition(".")
        mod = model.get_submodule(mname) if mname else model
        if type(mod) not in SUPPORTED or attr not in ("weight", "bias") or id(named[n]) in tied:
            return None
        if isinstance(mod, nn.Embedding) and (mod.max_norm is not None or mod.sparse):
            return None
        if isinstance(mod, nn.LayerNorm) and not mod.elementwise_affine:
            return None
        out.setdefault(mname, {})[attr] = n
    return out


def batch_size(batch) -> int:
    """Examples in a batch: the labels' length (dict or (inputs, labels))."""
    y = split_batch(batch)[1]
    if y is None:
        y = next(v for v in batch.values() if torch.is_tensor(v))
    return int(y.shape[0])


# --- per layer: example i's gradient, squared, summed over i -----------------------------------

def _linear(mod, x, g, acc, names):
    """x: (B, ..., d_in), g: (B, ..., d_out) -> adds sum_i (G_i^T X_i)^2 and sum_i (sum_t G_i)^2."""
    B = x.shape[0]
    x = x.reshape(B, -1, x.shape[-1]).float()                       # (B, T, d_in)
    g = g.reshape(B, -1, g.shape[-1]).float()                       # (B, T, d_out)
    if "weight" in names:
        # one example at a time into a reused buffer: it and acc stay in cache (materialising
        # all B gradients at once was 7x slower on MiniLM's 384 x 1536 layers)
        acc_w = acc[names["weight"]]
        buf = torch.empty_like(acc_w)
        a, b = (x.transpose(1, 2), g) if is_conv1d(mod) else (g.transpose(1, 2), x)
        for i in range(B):
            torch.mm(a[i], b[i], out=buf)                          # example i's dL_i/dW
            acc_w.addcmul_(buf, buf)
    if "bias" in names:
        acc[names["bias"]].add_(g.sum(1).square().sum(0))


def _embedding(mod, ids, g, acc, names):
    """ids: (B, ...), g: (B, ..., D): rows of example i summed per id, then squared."""
    B, V = ids.shape[0], mod.num_embeddings
    ids = ids.reshape(B, -1)
    g = g.reshape(B, -1, g.shape[-1]).float()
    keep = torch.ones_like(ids, dtype=torch.bool) if mod.padding_idx is None else ids != mod.padding_idx
    keys = (torch.arange(B, device=ids.device).unsqueeze(1) * V + ids)[keep]   # (example, id)
    uniq, inv = torch.unique(keys, return_inverse=True)
    rows = g.new_zeros(uniq.numel(), g.shape[-1]).index_add_(0, inv, g[keep])
    acc[names["weight"]].index_add_(0, uniq % V, rows.square())


def _layer_norm(mod, x, g, acc, names):
    """x, g: (B, ..., *normalized_shape)."""
    B = x.shape[0]
    xhat = F.layer_norm(x.float(), mod.normalized_shape, None, None, mod.eps)
    shape = (B, -1) + tuple(mod.normalized_shape)
    g, xhat = g.float().reshape(shape), xhat.reshape(shape)
    if "weight" in names:
        acc[names["weight"]].add_((g * xhat).sum(1).square().sum(0))
    if "bias" in names:
        acc[names["bias"]].add_(g.sum(1).square().sum(0))


def _per_example(mod, x, g, acc, names):
    if isinstance(mod, nn.Embedding):
        _embedding(mod, x, g, acc, names)
    elif isinstance(mod, nn.LayerNorm):
        _layer_norm(mod, x, g, acc, names)
    else:
        _linear(mod, x, g, acc, names)


# --- one batch ------------------------------------------------------------------------------

def accumulate(model: nn.Module, layers: dict[str, dict[str, str]], loss_fn, batch,
               acc: dict[str, torch.Tensor]) -> int:
    """Add sum_i g_i^2 over the batch's examples to acc[name]; returns the number of examples.
    Raises Unsupported (before adding anything) when a layer does not see the batch in
    dimension 0 or runs more than once per forward pass."""
    B = batch_size(batch)
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []   # (module, its input, its output)

    def on_forward(mod, inputs, output):
        x = inputs[0]
        if not torch.is_tensor(output) or not output.requires_grad:
            return None
        if output.shape[0] != B:
            if output.shape[0] != 1 or x.shape[0] != 1:
                raise Unsupported(f"a layer's output has {output.shape[0]} rows in dimension 0 "
                                  f"for a batch of {B}")
            output = output.expand(B, *output.shape[1:])         # broadcast input (positions)
            x = x.expand(B, *x.shape[1:])
        calls.append((names_of[mod], x.detach(), output))
        return output

    modules = {name: model.get_submodule(name) if name else model for name in layers}
    names_of = {m: n for n, m in modules.items()}
    handles = [m.register_forward_hook(on_forward) for m in modules.values()]
    try:
        loss = loss_fn(model, batch) * B                    # the mean loss times B: sum_i L_i
    finally:
        for h in handles:
            h.remove()
    counts = {n: 0 for n in modules}
    for n, _, _ in calls:
        counts[n] += 1
    for n, k in counts.items():
        if k > 1:
            raise Unsupported(f"{n} runs {k} times in one forward pass (example i's gradient "
                              f"would be a sum over the calls)")
    # gradients of the layers' OUTPUTS only: the weights' own gradients are never formed
    outs = torch.autograd.grad(loss, [o for _, _, o in calls], allow_unused=True)
    for (n, x, _), g in zip(calls, outs):
        if g is not None:
            _per_example(modules[n], x, g, acc, layers[n])
    return B


def agrees_with_loop(model, layers, loss_fn, pieces, params: dict, rtol: float = 1e-3) -> bool:
    """One batched pass over `pieces` (single-example batches, joined) gives the same
    sum_i g_i^2 as one backward pass per piece. Call it with dropout off (eval mode)."""
    want = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    for piece in pieces:
        gs = torch.autograd.grad(loss_fn(model, piece), list(params.values()), allow_unused=True)
        for n, g in zip(params, gs):
            if g is not None:
                want[n].add_(g.float().square())
    got = {n: torch.zeros_like(t) for n, t in want.items()}
    accumulate(model, layers, loss_fn, join(pieces), got)
    return all(float((got[n] - w).abs().max()) <= rtol * float(w.abs().max()) + 1e-12
               for n, w in want.items())


def join(pieces: list):
    """Single-example batches back into one batch."""
    if isinstance(pieces[0], dict):
        return {k: torch.cat([p[k] for p in pieces]) if torch.is_tensor(v) else v
                for k, v in pieces[0].items()}
    return tuple(torch.cat([p[j] for p in pieces]) for j in range(len(pieces[0])))
