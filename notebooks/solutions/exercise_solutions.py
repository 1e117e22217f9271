"""Solutions to the course exercises checked by peftlab.exercises (the code answers; the
written answers to every other exercise are in the NN_*.md files next to this one).

Instructors: this folder is the answer key. Remove notebooks/solutions/ before handing the
course out if you want learners to work without it; tests/test_exercises.py runs every
checker against these solutions.
"""

import torch
import torch.nn.functional as F


def lora_forward(x, W, b, A, B, alpha, r):
    # base path plus the scaled low-rank path: (N, d_in) -> (N, d_out)
    return x @ W.T + b + (alpha / r) * (x @ A.T @ B.T)


def lora_merge(W, A, B, alpha, r):
    return W + (alpha / r) * B @ A          # (d_out, r) @ (r, d_in) -> (d_out, d_in)


def lora_count(d_in, d_out, r):
    return r * d_in + d_out * r             # A is (r, d_in), B is (d_out, r)


def prefix_attention(q, k, v, prefix_k, prefix_v, mask):
    B, P = q.shape[0], prefix_k.shape[1]
    k = torch.cat([prefix_k.expand(B, -1, -1, -1), k], dim=2)
    v = torch.cat([prefix_v.expand(B, -1, -1, -1), v], dim=2)
    visible = torch.cat([torch.ones(B, P, dtype=torch.bool), mask.bool()], dim=1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5              # (B, H, T, P+T)
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    return F.softmax(scores, dim=-1) @ v


def topk_mask(scores, k):
    flat = scores.flatten()
    idx = flat.sort(descending=True, stable=True).indices[:k]
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[idx] = True
    return mask.view_as(scores)


def row_mask(scores, k):
    idx = scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask


def fisher_score(model, batches, loss_fn, name):
    p = dict(model.named_parameters())[name]
    total, n = torch.zeros_like(p), 0
    for x, y in batches:
        for i in range(len(y)):                                   # one example at a time
            (g,) = torch.autograd.grad(loss_fn(model, (x[i:i + 1], y[i:i + 1])), [p])
            total += g ** 2                                       # square, then average
            n += 1
    return total / n


def budget(step, init_budget, target_budget, tinit, tfinal, total_steps):
    if step <= tinit:
        return init_budget
    if step > total_steps - tfinal:
        return target_budget
    progress = 1 - (step - tinit) / (total_steps - tfinal - tinit)
    return int((init_budget - target_budget) * progress ** 3 + target_budget)


def triplet_scores(layer):
    s_P = layer.ipt_P * layer.unc_P                 # (out, r)
    s_lam = layer.ipt_lambda * layer.unc_lambda     # (r,)
    s_Q = layer.ipt_Q * layer.unc_Q                 # (r, in)
    return s_lam + s_P.mean(dim=0) + s_Q.mean(dim=1)


def conv_lora_delta(A, B, scale):
    # A: (r, C_in, k, k), B: (C_out, r, 1, 1) -> (C_out, C_in, k, k)
    r = A.shape[0]
    return scale * (B[:, :, 0, 0] @ A.reshape(r, -1)).reshape(B.shape[0], *A.shape[1:])


def mixed_lora(x, W, b, adapters, names):
    """Notebook 09: one pass, each row through its own adapter (None: the base alone)."""
    y = x @ W.T + b
    for name, (A, B, scale) in adapters.items():
        rows = [i for i, n in enumerate(names) if n == name]
        if rows:
            idx = torch.tensor(rows)
            y = y.index_add(0, idx, scale * (x[idx] @ A.T @ B.T))
    return y


def pareto_front(points):
    """Notebook 06: the methods no other method beats on both axes, cheapest first."""
    front, best = [], float("-inf")
    for name, cost, acc in sorted(points, key=lambda p: (p[1], -p[2])):
        if acc > best:            # more accurate than everything cheaper (or as cheap)
            front.append(name)
            best = acc
    return front


SOLUTIONS = {
    "check_lora_forward": lora_forward,
    "check_lora_merge": lora_merge,
    "check_lora_count": lora_count,
    "check_prefix_attention": prefix_attention,
    "check_topk_mask": topk_mask,
    "check_row_mask": row_mask,
    "check_fisher_score": fisher_score,
    "check_budget": budget,
    "check_triplet_scores": triplet_scores,
    "check_conv_lora_delta": conv_lora_delta,
    "check_mixed_lora": mixed_lora,
    "check_pareto_front": pareto_front,
}
