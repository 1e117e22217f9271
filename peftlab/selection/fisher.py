"""Per-example squared gradients from ONE batched backward pass: FISH's Fisher, fast.

FISH (Sung et al., 2021) scores a weight by the empirical Fisher (1/N) sum_i g_i^2, with g_i
the gradient of example i's loss alone. The obvious way runs N single-example backward passes
(the loop in selection/scores.py). Layers that treat examples independently allow one pass
instead (Goodfellow, 2015, "Efficient per-example gradient computations"; Opacus does the same):

    Linear y = x W^T + b, on a batch: X_i (T, d_in) the layer's inputs for example i,
    G_i (T, d_out) the gradient of the SUMMED loss sum_j L_j w.r.t. its outputs. Since L_j
    does not depend on example i's rows for j != i, G_i is example i's own gradient, and

        dL_i/dW = G_i^T X_i   (d_out, d_in)          dL_i/db = sum_t G_i[t]
        Conv1D (GPT-2, W stored (d_in, d_out)):   X_i^T G_i
        Embedding (rows picked by ids_i):           row v gets sum of G_i[t] where ids_i[t] == v
        LayerNorm / RMSNorm (xhat = the normalised input):  dL_i/dgamma = sum_t G_i[t] * xhat_i[t]

Square and sum over i: sum_i g_i^2 for every entry, for the cost of about two backward passes.
A parameter held by several modules (GPT-2's and Llama's tied wte / lm_head), or a module run
more than once, gets example i's gradient summed over all of them BEFORE it is squared.

Per-example losses, normalised per example. The loop's L_i is loss_fn on example i alone: a
classifier's cross-entropy, or a causal LM's mean over example i's n_i counted tokens. The
batch's loss is a mean over everything counted, L = sum_i n_i L_i / N (N = sum_i n_i), so
L * N = sum_i n_i L_i, and example i's output gradients are n_i times its own: they are divided
by n_i. n_i = 1 for labels of shape (B,) (then L * B is the sum, as cross-entropy's mean
makes it); for integer token labels (B, T) it is the labels that are not -100, after the shift
by one a causal LM's loss makes (tokens_per_example).

What it needs, checked before use (otherwise compute_scores takes the exact loop):
  * every scored parameter is the weight/bias of an nn.Linear, Conv1D, nn.Embedding,
    nn.LayerNorm, nn.RMSNorm or a Llama-style RMSNorm, in every module that holds it;
  * layers see the batch in dimension 0. A layer whose output has batch size 1 while the
    batch has B (BERT's position embeddings, computed once and broadcast) has its output
    expanded to B, so its per-example gradients can be read;
  * loss_fn is a mean: over examples, or over the counted tokens of all examples.
On the first batch, two examples are also scored one at a time (dropout off) and compared
(agrees_with_loop): any mismatch sends compute_scores back to the loop, with a warning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.batches import split_batch
from peftlab.core.layers import Conv1D

IGNORE = -100     # the label cross-entropy (and transformers' losses) leaves out


class Unsupported(Exception):
    """The model does not fit the batched computation; compute_scores uses the loop."""


def layer_kind(mod: nn.Module) -> str | None:
    """"linear", "conv1d", "embedding", "layer_norm" or "rms_norm": the per-example gradient
    formula for this exact layer type, or None (a subclass may compute something else)."""
    t = type(mod)
    if t is nn.Linear:
        return "linear"
    if Conv1D is not None and t is Conv1D:
        return "conv1d"
    if t is nn.Embedding:
        return "embedding" if mod.max_norm is None and not mod.sparse else None
    if t is nn.LayerNorm:
        return "layer_norm" if mod.elementwise_affine else None
    if t is nn.RMSNorm or (t.__name__.endswith("RMSNorm") and hasattr(mod, "variance_epsilon")):
        return "rms_norm" if getattr(mod, "weight", None) is not None else None
    return None


def plan(model: nn.Module, names: list[str]) -> dict[str, dict[str, str]] | None:
    """{module name: {"weight"/"bias": scored parameter name}} over EVERY module holding a
    scored parameter (a tied one appears under each), or None when one of them is not a
    supported layer."""
    holders: dict[int, list[tuple[str, str]]] = {}
    for full, p in model.named_parameters(remove_duplicate=False):
        mname, _, attr = full.rpartition(".")
        holders.setdefault(id(p), []).append((mname, attr))
    named = dict(model.named_parameters())
    out: dict[str, dict[str, str]] = {}
    for n in names:
        for mname, attr in holders[id(named[n])]:
            mod = model.get_submodule(mname) if mname else model
            if layer_kind(mod) is None or attr not in ("weight", "bias"):
                return None
            out.setdefault(mname, {})[attr] = n
    return out


def batch_size(batch) -> int:
    """Examples in a batch: the labels' length (dict or (inputs, labels))."""
    y = split_batch(batch)[1]
    if y is None:
        y = next(v for v in batch.values() if torch.is_tensor(v))
    return int(y.shape[0])


def is_causal_lm(model: nn.Module) -> bool:
    """A transformers causal LM (its loss predicts token t + 1 from tokens <= t)."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover
        return False
    return type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def tokens_per_example(model: nn.Module, batch) -> torch.Tensor | None:
    """n_i (B,): the terms example i's loss averages over; None when that is one per example
    (labels (B,), float labels, or none in the batch)."""
    y = split_batch(batch)[1]
    if not torch.is_tensor(y) or y.dim() < 2 or y.is_floating_point():
        return None
    if is_causal_lm(model):
        y = y[:, 1:]                                       # the label of token t + 1 at t
    return (y != IGNORE).reshape(y.shape[0], -1).sum(1)


# --- per layer: example i's gradient, squared, summed over i ---------------------------------

def _f32(t: torch.Tensor, B: int) -> torch.Tensor:
    return t.reshape(B, -1, t.shape[-1]).float()           # (B, T, features)


def _xhat(kind: str, mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The normalised input that gamma multiplies (fp32)."""
    if kind == "layer_norm":
        return F.layer_norm(x.float(), mod.normalized_shape, None, None, mod.eps)
    if isinstance(mod, nn.RMSNorm):
        eps = mod.eps if mod.eps is not None else torch.finfo(x.dtype).eps
        dims = tuple(range(-len(mod.normalized_shape), 0))
        return (x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)).float()
    h = x.to(torch.float32)                                  # as transformers' LlamaRMSNorm
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + mod.variance_epsilon)
    return h.to(x.dtype).float()


def _square_into(acc, kind: str, attr: str, mod, x, g) -> None:
    """acc += sum_i (example i's gradient of mod.<attr>)^2, from one call's x and g (B, ...)."""
    B = g.shape[0]
    if kind in ("layer_norm", "rms_norm"):
        shape = (B, -1) + tuple(acc.shape)
        g = g.float().reshape(shape)
        if attr == "weight":
            g = g * _xhat(kind, mod, x).reshape(shape)
        acc.add_(g.sum(1).square().sum(0))
    elif kind == "embedding":                                # rows of example i summed per id
        V, ids, g = mod.num_embeddings, x.reshape(B, -1), _f32(g, B)
        keep = torch.ones_like(ids, dtype=torch.bool) if mod.padding_idx is None \
            else ids != mod.padding_idx
        keys = (torch.arange(B, device=ids.device).unsqueeze(1) * V + ids)[keep]   # (example, id)
        uniq, inv = torch.unique(keys, return_inverse=True)
        rows = g.new_zeros(uniq.numel(), g.shape[-1]).index_add_(0, inv, g[keep])
        acc.index_add_(0, uniq % V, rows.square())
    elif attr == "bias":
        acc.add_(_f32(g, B).sum(1).square().sum(0))
    else:
        # one example at a time into a reused buffer: it and acc stay in cache (materialising
        # all B gradients at once was 7x slower on MiniLM's 384 x 1536 layers)
        x, g = _f32(x, B), _f32(g, B)                                 # (B, T, d_in), (B, T, d_out)
        a, b = (x.transpose(1, 2), g) if kind == "conv1d" else (g.transpose(1, 2), x)
        buf = torch.empty_like(acc)
        for i in range(B):
            torch.mm(a[i], b[i], out=buf)                           # example i's dL_i/dW
            acc.addcmul_(buf, buf)


def _add_example(buf, kind: str, attr: str, mod, x, g) -> None:
    """buf += example i's gradient of mod.<attr>, from its own x and g (no batch dimension)."""
    g = g.reshape(-1, g.shape[-1]).float() if kind not in ("layer_norm", "rms_norm") \
        else g.float().reshape((-1,) + tuple(buf.shape))
    if kind in ("layer_norm", "rms_norm"):
        if attr == "weight":
            g = g * _xhat(kind, mod, x).reshape(g.shape)
        buf.add_(g.sum(0))
    elif kind == "embedding":
        ids = x.reshape(-1)
        keep = ids != mod.padding_idx if mod.padding_idx is not None else slice(None)
        buf.index_add_(0, ids[keep], g[keep])
    elif attr == "bias":
        buf.add_(g.sum(0))
    else:
        x = x.reshape(-1, x.shape[-1]).float()
        buf.addmm_(x.T, g) if kind == "conv1d" else buf.addmm_(g.T, x)


def _square_summed(acc, parts) -> None:
    """acc += sum_i (sum over parts of example i's gradient)^2: tied weights, repeated calls."""
    buf = torch.empty_like(acc)
    for i in range(parts[0][-1].shape[0]):
        buf.zero_()
        for kind, attr, mod, x, g in parts:
            _add_example(buf, kind, attr, mod, x[i], g[i])
        acc.addcmul_(buf, buf)


# --- one batch ------------------------------------------------------------------------------

def _record(model, layers, loss_fn, batch, B):
    """(loss, [(module name, its input, its output)]) from one forward pass with hooks."""
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []

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

    names_of = {(model.get_submodule(n) if n else model): n for n in layers}
    handles = [m.register_forward_hook(on_forward) for m in names_of]
    try:
        return loss_fn(model, batch), calls
    finally:
        for h in handles:
            h.remove()


def accumulate(model: nn.Module, layers: dict[str, dict[str, str]], loss_fn, batch,
               acc: dict[str, torch.Tensor]) -> int:
    """Add sum_i g_i^2 over the batch's examples to acc[name]; returns the number of examples.
    Raises Unsupported (before adding anything) when a layer does not see the batch in
    dimension 0."""
    B = batch_size(batch)
    n = tokens_per_example(model, batch)                     # (B,) or None: one term each
    loss, calls = _record(model, layers, loss_fn, batch, B)
    loss = loss * (B if n is None else n.sum())              # sum_i n_i L_i
    # gradients of the layers' OUTPUTS only: the weights' own gradients are never formed
    outs = torch.autograd.grad(loss, [o for _, _, o in calls], allow_unused=True)
    parts: dict[str, list] = {}
    for (mname, x, _), g in zip(calls, outs):
        if g is None:
            continue
        if n is not None:                                    # example i's own gradient
            g = g / n.clamp(min=1).to(g.device, g.dtype).view(B, *[1] * (g.dim() - 1))
        mod = model.get_submodule(mname) if mname else model
        for attr, pname in layers[mname].items():
            parts.setdefault(pname, []).append((layer_kind(mod), attr, mod, x, g))
    for pname, p in parts.items():
        if len(p) == 1:
            _square_into(acc[pname], *p[0])
        else:
            _square_summed(acc[pname], p)
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
