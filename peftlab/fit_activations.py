"""Activations saved for backward, counted by walking a block's ops (part of fit_estimate).

Autograd saves, for each op, only what its backward needs *for the inputs that require a
gradient* (PyTorch's derivatives.yaml, saved conditionally): y = x W^T saves x only if W is
trained; a LoRA layer saves its input for A and a = A x (r per token) for B; a product saves
the other factor; GELU / SiLU their input; softmax its output (fp32); LayerNorm its input
plus mean and 1/std; RMSNorm its input and 1/rms (and x_hat if its weight trains); dropout its
mask (fp32 on CPU, 1 byte on CUDA); SDPA q, k, v, its output and the log-sum-exp. So the walk
below goes through LAYER_OPS + MLP_OPS in forward order, marks which tensors require grad,
and adds each saved tensor once (views share their storage; "=" aliases). A frozen first
layer thus saves less than the others, with no special case. Checked against
pl.measure.SavedTensorMeter in tests/test_fit_estimate.py (exact on the embedded models).
"""

from __future__ import annotations

# one block's forward, op by op: (op, output, inputs..., size of the output per token)
# sizes: H, I, K (kv), Q (heads x head_dim), S (scores: heads x keys); "=" aliases an input
LAYER_OPS = {
    ("llama", "sdpa"): [
        ("rms", "xn", "x", "H"), ("lin", "q", "xn", "self_attn.q_proj", "Q"),
        ("lin", "k", "xn", "self_attn.k_proj", "K"), ("lin", "v", "xn", "self_attn.v_proj", "K"),
        ("rope", "qr", "q", "Q"), ("rope", "kr", "k", "K"), ("sdpa", "o", "qr", "kr", "v", "Q"),
        ("lin", "ao", "o", "self_attn.o_proj", "H"), ("add", "h", "x", "ao", "H")],
    ("llama", "eager"): [
        ("rms", "xn", "x", "H"), ("lin", "q", "xn", "self_attn.q_proj", "Q"),
        ("lin", "k", "xn", "self_attn.k_proj", "K"), ("lin", "v", "xn", "self_attn.v_proj", "K"),
        ("rope", "qr", "q", "Q"), ("rope", "kr", "k", "K"), ("copy", "kx", "kr", "Q"),
        ("copy", "vx", "v", "Q"), ("mm", "s", "qr", "kx", "S"), ("softmax", "p", "s", "S"),
        ("mm", "c", "p", "vx", "Q"), ("copy", "o", "c", "Q"),
        ("lin", "ao", "o", "self_attn.o_proj", "H"), ("add", "h", "x", "ao", "H")],
    ("bert", "eager"): [
        ("lin", "q", "x", "attention.self.query", "H"), ("lin", "k", "x", "attention.self.key", "H"),
        ("lin", "v", "x", "attention.self.value", "H"), ("copy", "qc", "q", "H"),
        ("copy", "kc", "k", "H"), ("copy", "vc", "v", "H"), ("mm", "s", "qc", "kc", "S"),
        ("softmax", "p", "s", "S"), ("dropout", "pd", "p", "S"), ("mm", "c", "pd", "vc", "H"),
        ("copy", "o", "c", "H"), ("lin", "ao", "o", "attention.output.dense", "H"),
        ("dropout", "ad", "ao", "H"), ("add", "r1", "ad", "x", "H"), ("ln", "h", "r1", "H")],
}
MLP_OPS = {
    "llama": [("rms", "hn", "h", "H"), ("lin", "g", "hn", "mlp.gate_proj", "I"),
              ("lin", "u", "hn", "mlp.up_proj", "I"), ("silu", "sg", "g", "I"),
              ("mul", "gu", "sg", "u", "I"), ("ia3", "gs", "gu", "I"),
              ("lin", "d", "gs", "mlp.down_proj", "H"), ("add", "y", "h", "d", "H")],
    "bert": [("lin", "f", "h", "intermediate.dense", "I"), ("gelu", "fg", "f", "I"),
             ("ia3", "fs", "fg", "I"), ("lin", "d", "fs", "output.dense", "H"),
             ("dropout", "dd", "d", "H"), ("add", "r2", "dd", "h", "H"), ("ln", "y", "r2", "H")],
}



def simulate(ops, a, status: dict, tokens: int, keys: int, act: int, mask: int,
              r: int, lora_dropout: float, rg: dict, saved: dict, layer: int = 0,
              forced=()) -> None:
    """Walk one block's ops in forward order: mark which tensors require grad (`rg`) and put
    in `saved` {tensor: bytes} what each op keeps for backward (see the module docstring).
    Names are per layer; the block's output "y" is the next layer's input "x"."""
    sym, alias = {"x": "H"}, {}

    def g(name):                                  # the layer-local name -> a global one
        name = alias.get(name, name)
        return f"{layer + 1}.x" if name == "y" else f"{layer}.{name}"

    def nb(name_or_sym, b=act):
        s = sym.get(name_or_sym, name_or_sym)
        per = a.n * keys if s == "S" else (a.dim(s) if s in "HIKQ" else int(s))
        return tokens * per * b

    def keep(name, b=act, tag=""):                # one entry per tensor: storages counted once
        saved[g(name) + tag] = nb(alias.get(name, name), b)

    def needs(name):
        return rg.get(g(name), False) or name in forced

    for op in ops:
        kind, out, ins, sym[op[1]] = op[0], op[1], op[2:-1], op[-1]
        ins = [alias.get(i, i) for i in ins]
        if kind == "lin":                         # y = x W^T (+ scale * B A dropout(x))
            x, s = ins[0], status.get(ins[1], "frozen")
            rg[g(out)] = needs(x) or s != "frozen"
            if s == "train":                      # dW = dy^T x needs x
                keep(x)
            elif s == "lora":                     # dA needs dropout(x), dB needs a = A x
                if lora_dropout > 0 and needs(x):     # each adapter drops its own copy
                    keep(x, mask, ".mask." + out)
                keep(x, act, ".drop." + out if lora_dropout > 0 else "")
                saved[g(out) + ".a"] = nb("1") * r
            continue
        p = a.attn_dropout if op[-1] == "S" else a.dropout
        trained = kind == "ia3" and status.get("ia3") == "train"
        if (kind == "dropout" and p == 0) or (kind == "ia3" and not trained):
            alias[out] = ins[0]                   # no dropout / no vector: the same tensor
            continue
        rg[g(out)] = trained or any(needs(i) for i in ins) or (
            kind in ("ln", "rms") and status.get("norms") == "train")
        if not rg[g(out)]:
            continue                              # nothing below needs a gradient: no saves
        if kind in ("mm", "mul"):                 # d(a b)/da needs b, and the other way round
            if needs(ins[0]):
                keep(ins[1])
            if needs(ins[1]):
                keep(ins[0])
        elif kind in ("silu", "gelu", "ia3"):     # f'(x) needs x; d(l * x)/dl needs x
            keep(ins[0])
        elif kind == "softmax":                   # dp needs p (fp32)
            keep(out, 4)
        elif kind == "dropout":                   # the scaled keep-mask
            keep(out, mask, ".mask")
        elif kind == "ln":                        # input, mean and 1/std per token
            keep(ins[0])
            saved[g(out) + ".stats"] = nb("2", 4)
        elif kind == "rms":                       # x and 1/rms; x_hat for the weight's grad
            if needs(ins[0]):
                keep(ins[0])
                saved[g(out) + ".rms"] = nb("1", 4)
            if status.get("norms") == "train":
                keep(out, act, ".hat")
        elif kind == "rope":                      # x cos + rot(x) sin: cos and sin, once
            saved["cos_sin"] = 2 * keys * a.d * act
        elif kind == "sdpa":                      # q, k, v, the output, log-sum-exp (fp32)
            for t in ins + [out]:
                keep(t)
            saved[g(out) + ".lse"] = nb(str(a.n), 4)
