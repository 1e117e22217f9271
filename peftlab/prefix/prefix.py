"""The math of prefix tuning (Li & Liang, 2021): trainable keys and values joined in front of
every self-attention layer's own.

With a layer's queries, keys and values Q, K, V of shape (B, H, T, D) and its prefixes
K_l, V_l of shape (H, P, D) ("P virtual tokens" that exist only as keys and values):

    K' = [K_l ; K]    V' = [V_l ; V]                       (B, H, P + T, D)
    out = softmax(Q K'^T / sqrt(D) + [0 ; mask]) V'          mask: padding (and causal) of the text

Every real token attends to all P prefix positions (in a causal decoder too: the prefix sits
"before" the text); padding stays masked; the real tokens' position ids are unchanged; the base
model is frozen. Trainable: layers * 2 * P * H * D numbers (layers * 2 * P * hidden for
ordinary multi-head attention), optionally produced by a small MLP (the paper's
reparametrisation, which stabilises training).

`prefix_attention` is the whole method in one function; peftlab/prefix/wiring.py calls it from
inside a transformers model, and the course's exercise checks a learner's version against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def join_prefix(key: torch.Tensor, value: torch.Tensor, prefix_k: torch.Tensor,
                prefix_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K' = [K_l ; K], V' = [V_l ; V]: (B, H, T, D) and (H, P, D) -> (B, H, P + T, D)."""
    B = key.shape[0]
    key = torch.cat([prefix_k.to(key.dtype).expand(B, -1, -1, -1), key], dim=2)
    value = torch.cat([prefix_v.to(value.dtype).expand(B, -1, -1, -1), value], dim=2)
    return key, value


def extend_mask(mask, P: int, q_len: int, kv_len: int, causal: bool = False, dtype=None,
                device=None):
    """Join P always-visible columns on the left of an attention mask (B|1, 1|H, Tq, Tk).

    bool masks (True = attend) get True, additive float masks get 0. A None mask means "no
    padding": it stays None for bidirectional attention; a causal layer gets its causal mask
    spelled out (query i sees keys j <= i + Tk - Tq), as a bool mask when dtype is None, else
    additive in `dtype`, because the is_causal shortcut of sdpa would misalign once the keys
    are longer than the queries."""
    if mask is None:
        if not (causal and q_len > 1):
            return None
        q = torch.arange(q_len, device=device)[:, None]
        k = torch.arange(kv_len, device=device)[None, :]
        mask = (k <= q + kv_len - q_len)[None, None]                  # (1, 1, Tq, Tk)
        if dtype is not None:
            mask = torch.where(mask, 0.0, torch.finfo(dtype).min).to(dtype)
    if mask.dtype == torch.bool:
        pad = torch.ones(*mask.shape[:-1], P, dtype=torch.bool, device=mask.device)
    else:
        pad = torch.zeros(*mask.shape[:-1], P, dtype=mask.dtype, device=mask.device)
    return torch.cat([pad, mask], dim=-1)


def sdpa(q, k, v, mask):
    """Plain scaled dot-product attention: softmax(q k^T / sqrt(D) + mask) v."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     prefix_k: torch.Tensor, prefix_v: torch.Tensor, mask=None, *,
                     causal: bool = False, mask_dtype=None, attend=sdpa) -> torch.Tensor:
    """Attention over [prefix ; text]: softmax(q [K_l ; k]^T / sqrt(D) + [0 ; mask]) [V_l ; v].

    q, k, v: (B, H, T, D); prefix_k, prefix_v: (H, P, D).
    mask: None, a (B, T) padding mask (1 = real token), or a 4-D mask (B|1, 1|H, Tq, Tk),
    bool (True = attend) or additive float. causal: the layer is a decoder's (the text keeps
    its causal mask; the prefix stays visible to every token). attend(q, k, v, mask): the
    attention kernel, by default sdpa; the transformers wiring passes the model's own.
    Returns (B, H, Tq, D) (or whatever `attend` returns).
    """
    P = prefix_k.shape[-2]
    if mask is not None and mask.dim() == 2:                          # (B, T) -> (B, 1, 1, T)
        mask = mask.bool()[:, None, None, :]
    mask = extend_mask(mask, P, q.shape[2], k.shape[2], causal, mask_dtype, q.device)
    k, v = join_prefix(k, v, prefix_k, prefix_v)                      # (B, H, P + T, D)
    return attend(q, k, v, mask)


class PrefixEncoder(nn.Module):
    """All layers' prefixes. Plain: `key`, `value` (L, H, P, D). Projected: `embedding` (P, E)
    and `mlp` E -> hidden -> L*2*H*D, read as (P, L, 2, H, D) (the HF PEFT layout)."""

    def __init__(self, layers: int, heads: int, P: int, head_dim: int,
                 projection_hidden: int | None = None, init_std: float = 1.0):
        super().__init__()
        self.shape = (layers, heads, P, head_dim)
        self.projection_hidden = projection_hidden
        self.record: dict | None = None   # {layer: attention weights} while attention_to_prefix runs
        if projection_hidden is None:
            self.key = nn.Parameter(torch.randn(layers, heads, P, head_dim) * init_std)
            self.value = nn.Parameter(torch.randn(layers, heads, P, head_dim) * init_std)
        else:
            E = heads * head_dim
            self.embedding = nn.Embedding(P, E)
            self.mlp = nn.Sequential(nn.Linear(E, projection_hidden), nn.Tanh(),
                                     nn.Linear(projection_hidden, layers * 2 * E))

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(key, value) prefixes of one layer, each (H, P, D)."""
        if self.projection_hidden is None:
            return self.key[layer], self.value[layer]
        _L, H, P, D = self.shape
        h = self.mlp[1](self.mlp[0](self.embedding.weight))            # (P, hidden)
        rows = slice(layer * 2 * H * D, (layer + 1) * 2 * H * D)       # only this layer's outputs
        out = F.linear(h, self.mlp[2].weight[rows], self.mlp[2].bias[rows])  # (P, 2*H*D)
        kv = out.view(P, 2, H, D).permute(1, 2, 0, 3)                  # (2, H, P, D)
        return kv[0], kv[1]

    def all_kv(self) -> torch.Tensor:
        """Every prefix, (L, 2, H, P, D)."""
        return torch.stack([torch.stack(self.layer_kv(i)) for i in range(self.shape[0])])
