"""Will it fit? The memory of one training step, from a model's config.json alone.

    est = pl.estimate("data/model_configs/llama-2-7b.json", method="qlora", r=64,
                      batch_size=1, seq_len=512, checkpointing=True)
    est.parts          # {"weights": ..., "gradients": ..., "optimizer": ..., ...} in bytes
    est.peak, est.fits(24 * 2**30), print(est.table())

The bill (P = parameters, P_t = trainable ones, b = bytes per number):

    weights      sum over tensors of numel x b(tensor): fp32 4, bf16/fp16 2; an NF4 weight
                 4 bits per number + its constants: one fp32 absmax per block of 64
                 (4 + 32/64 = 4.5 bits), or with double quantization one 8-bit absmax per
                 block plus one fp32 per 256 blocks (4 + 8/64 + 32/(64*256) = 4.127 bits).
                 Only the targeted Linear weights are quantized; embeddings, norms, biases
                 and the head stay in the `keep` dtype.
    gradients    P_t x b (one gradient per trainable number, in its dtype)
    optimizer    AdamW: exp_avg and exp_avg_sq per trainable number (2 P_t b) plus a 4-byte
                 step counter per trainable tensor; SGD: 0
    activations  what autograd saves for backward (below), per layer per token
    temporaries  not saved but alive at the peak: the logits and the loss's gradients, or
                 one layer's attention scores; peak = the first four + the larger temporary.

Activations. Autograd saves, for each op, the tensors its backward needs *for the inputs
that require a gradient*: y = x W^T saves x only if W is trained (dx = dy W needs W, a
parameter, already counted); a LoRA layer saves x for A and a = A x (r per token) for B;
an elementwise product saves the other factor; GELU / SiLU save their input, softmax its
output, LayerNorm its input plus mean and 1/std, dropout its mask (fp32 on CPU, 1 byte on
CUDA). So instead of one formula per method, `simulate` walks the layer's ops (LAYER_OPS,
in forward order), tracks which tensors require grad, and adds the bytes of each tensor an
op saves, each tensor once (peftlab/fit_activations.py). With everything trained (full fine-tuning) it gives, per token
and layer, in numbers of b bytes (H hidden, I intermediate, K = kv heads x head dim,
n heads, T keys; lse and norm statistics are fp32):

    Llama, SDPA    8H + 2K + 4I + n + 2      x, x_norm, x_norm*w, q, out, h, h_norm,
                                             h_norm*w; k, v; gate, up, silu(gate), product;
                                             log-sum-exp; two 1/rms
    Llama, eager   9H + nT + 4I + 2          q, k and v repeated to n heads, o_proj input;
                                             softmax probabilities n x T per token
    BERT (train)   10H + 2I + 3nT + 4        x, q, k, v, context, 2 dropout masks, 2 LN
                                             inputs, FFN input; GELU in/out; softmax, its
                                             mask and the dropped probabilities; 2 x (mean,
                                             1/std)

A frozen first layer saves less (nothing before it requires grad): the walk handles it.
Outside the layers: the loss's log-softmax (tokens x vocab, fp32, for a causal LM), the final
norm, the head's input, RoPE's cos/sin (once), the token ids if the embedding is trained.
With gradient checkpointing each layer saves only its input (H per token); the backward
recomputes one layer at a time, so one layer's activations are added to the peak.
Temporaries: the logits B x T x V (compute dtype, + an fp32 copy when not fp32) in the forward,
freed once the loss is taken, then two fp32 gradients of that size in the loss backward (the
larger of the two is added); eager attention: the scores and their softmax,
2 x B x n x T x T fp32, for one layer. These are modelled, not counted; measured peaks
(tests/test_fit_estimate.py) agree within 20%.

`pl.measure` counts the same parts exactly on a real model; the tests hold the weights,
gradients, optimizer state and activations here equal to those counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from peftlab.fit_activations import LAYER_OPS, MLP_OPS, simulate

GB = 2 ** 30
METHODS = ("full", "lora", "qlora", "prefix", "prompt", "ia3")
PRECISIONS = {"fp32": 32, "bf16": 16, "fp16": 16, "nf4": 4 + 32 / 64,
              "nf4-dq": 4 + 8 / 64 + 32 / (64 * 256)}     # bits per number of a weight
LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "olmo", "granite")
BERT_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")

# the Linear layers of one block, by the module names the real models use (LoRA targets
# match them by suffix, as peftlab.lora does): name -> (d_in, d_out) in terms of the Arch
LINEARS = {
    "llama": {"self_attn.q_proj": ("H", "Q"), "self_attn.k_proj": ("H", "K"),
              "self_attn.v_proj": ("H", "K"), "self_attn.o_proj": ("Q", "H"),
              "mlp.gate_proj": ("H", "I"), "mlp.up_proj": ("H", "I"), "mlp.down_proj": ("I", "H")},
    "bert": {"attention.self.query": ("H", "H"), "attention.self.key": ("H", "H"),
             "attention.self.value": ("H", "H"), "attention.output.dense": ("H", "H"),
             "intermediate.dense": ("H", "I"), "output.dense": ("I", "H")},
}

@dataclass
class Arch:
    """The architecture numbers the bill needs, read from a config.

    family: "llama" (decoder, causal LM: RMSNorm, RoPE, SiLU MLP) or "bert" (encoder with a
    classification head). H hidden size, L layers, n attention heads, kv key/value heads,
    d head dim, I intermediate size, V vocabulary, P positions, types token types, tied
    input/output embeddings, labels classes of a classifier head, bias whether the block's
    Linears have biases, dropout / attn_dropout the training-mode dropout probabilities.
    """

    family: str
    H: int
    L: int
    n: int
    kv: int
    d: int
    I: int
    V: int
    P: int = 0
    types: int = 0
    tied: bool = True
    labels: int = 2
    bias: bool = False
    dropout: float = 0.0
    attn_dropout: float = 0.0

    def dim(self, sym: str) -> int:
        return {"H": self.H, "I": self.I, "K": self.kv * self.d, "Q": self.n * self.d}[sym]


def arch_of(config) -> Arch:
    """An Arch from a transformers PretrainedConfig, a config.json dict, or its path."""
    if isinstance(config, (str, Path)):
        config = json.loads(Path(config).read_text(encoding="utf-8"))
    c = config if isinstance(config, dict) else config.to_dict()
    kind = c.get("model_type", "")
    H, n = c["hidden_size"], c["num_attention_heads"]
    common = {"H": H, "L": c["num_hidden_layers"], "n": n, "kv": c.get("num_key_value_heads") or n,
                  "d": c.get("head_dim") or H // n, "I": c["intermediate_size"], "V": c["vocab_size"]}
    if kind in LLAMA_TYPES:
        return Arch("llama", **common, tied=bool(c.get("tie_word_embeddings", False)),
                    bias=bool(c.get("attention_bias", False)),
                    attn_dropout=c.get("attention_dropout", 0.0))
    if kind in BERT_TYPES:
        labels = len(c["id2label"]) if c.get("id2label") else c.get("num_labels", 2)
        return Arch("bert", **common, P=c["max_position_embeddings"],
                    types=c.get("type_vocab_size", 2), labels=labels, bias=True,
                    dropout=c.get("hidden_dropout_prob", 0.1),
                    attn_dropout=c.get("attention_probs_dropout_prob", 0.1))
    raise ValueError(f"fit_estimate knows Llama-family ({', '.join(LLAMA_TYPES)}) and "
                     f"BERT-family ({', '.join(BERT_TYPES)}) configs; model_type {kind!r} is "
                     f"neither. Pass a config with one of those model types.")


def parameters(a: Arch) -> dict[str, tuple[int, int]]:
    """{group: (numbers, tensors)}: every weight of the model (the block's Linears by name)."""
    out = {}
    for name, (i, o) in LINEARS[a.family].items():
        out[name] = (a.L * (a.dim(i) * a.dim(o) + a.bias * a.dim(o)), a.L * (1 + a.bias))
    if a.family == "llama":
        out["norms"] = ((2 * a.L + 1) * a.H, 2 * a.L + 1)
        out["embeddings"] = (a.V * a.H, 1)
        out["head"] = (0, 0) if a.tied else (a.V * a.H, 1)
    else:
        out["norms"] = ((2 * a.L + 1) * 2 * a.H, (2 * a.L + 1) * 2)
        out["embeddings"] = ((a.V + a.P + a.types) * a.H, 3)
        out["pooler.dense"] = (a.H * a.H + a.H, 2)
        out["head"] = (a.H * a.labels + a.labels, 2)
    return out


def _targets(a: Arch, targets) -> list[str]:
    names = list(LINEARS[a.family]) + (["pooler.dense"] if a.family == "bert" else [])
    if targets in (None, "all-linear"):
        return names
    targets = [targets] if isinstance(targets, str) else list(targets)
    hit = [m for m in names if any(m == t or m.endswith("." + t) for t in targets)]
    if not hit:
        raise ValueError(f"targets {targets} match none of this {a.family} model's Linear "
                         f"layers {names}; use name suffixes such as {names[0].split('.')[-1]!r}"
                         f" or 'all-linear'.")
    return hit


@dataclass
class FitEstimate:
    """The estimated bill of one training step, in bytes (see the module docstring).

    parts: weights, gradients, optimizer, activations (saved for backward), temporaries
    (the largest short-lived tensor group at the peak: logits + loss gradients, eager
    attention scores, or a checkpointed layer's recompute). parameters / trainable: numbers.
    setting: the arguments it was computed for.
    """

    parts: dict
    parameters: int
    trainable: int
    setting: dict = field(default_factory=dict)

    @property
    def peak(self) -> int:
        """weights + gradients + optimizer + activations + temporaries."""
        return sum(self.parts.values())

    def fits(self, budget_bytes: float) -> bool:
        """True if the peak is at most `budget_bytes` (e.g. 24 * 2**30 for a 24 GB GPU)."""
        return self.peak <= budget_bytes

    def table(self) -> str:
        """The parts, one line each, in GB."""
        rows = [f"{k:<12} {v / GB:9.3f} GB" for k, v in self.parts.items()]
        return "\n".join(rows + [f"{'peak':<12} {self.peak / GB:9.3f} GB"])


def _bytes(p: str) -> int:
    return {"fp32": 4, "bf16": 2, "fp16": 2}[p]


def estimate(config, method: str = "lora", precision: str | None = None, *, r: int = 8,
             targets="all-linear", batch_size: int = 1, seq_len: int = 512,
             checkpointing: bool = False, optimizer: str = "adamw", attention: str = "sdpa",
             device: str = "cuda", keep: str | None = None, lora_dropout: float = 0.0,
             virtual_tokens: int = 20, logits_positions: int | None = None) -> FitEstimate:
    """The memory of one training step of `config` (a PretrainedConfig, a config.json dict
    or its path) trained with `method` (full, lora, qlora, prefix, prompt, ia3).

    precision: the base weights, fp32 / bf16 / fp16 / nf4 / nf4-dq (default fp32, qlora:
    nf4-dq); keep: the dtype of what NF4 does not quantize (default bf16); activations are in
    the base dtype (bf16 under NF4). r / targets / lora_dropout: LoRA's rank, layers and
    adapter dropout. attention: "sdpa" or "eager" (BERT in training runs eager on CPU).
    device: "cuda" (1-byte dropout masks) or "cpu" (fp32 masks). logits_positions: how many
    positions get logits (answer-only training), default all. virtual_tokens: prefix/prompt.
    """
    a = arch_of(config)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    precision = precision or ("nf4-dq" if method == "qlora" else "fp32")
    if precision not in PRECISIONS or (method == "qlora") != precision.startswith("nf4"):
        raise ValueError(f"precision {precision!r} does not go with method {method!r}: qlora "
                         f"takes nf4 / nf4-dq, the others {[p for p in PRECISIONS if p[:3] != 'nf4']}")
    keep = keep or ("bf16" if precision.startswith("nf4") else precision)
    act = _bytes(keep)
    mask = 1 if device == "cuda" else 4
    B, T = batch_size, seq_len
    names = _targets(a, targets) if method in ("lora", "qlora") else []

    # --- weights, trainable numbers ---------------------------------------------------------
    groups = parameters(a)
    weights, trainable, tensors = 0.0, 0, 0
    for g_, (numel, _) in groups.items():
        bits = 8 * _bytes(keep)
        if precision.startswith("nf4") and g_ in names and g_ in LINEARS[a.family]:
            w = numel - a.L * a.bias * a.dim(LINEARS[a.family][g_][1])   # biases stay
            weights += w * PRECISIONS[precision] / 8 + (numel - w) * _bytes(keep)
            continue
        weights += numel * bits / 8
    head = a.family == "bert" and method != "full"   # the head rule: a classifier head trains
    if method == "full":
        trainable = sum(n for n, _ in groups.values())
        tensors = sum(t for _, t in groups.values())
    else:
        adapters = {"lora": 0, "qlora": 0, "prompt": virtual_tokens * a.H,
                    "prefix": virtual_tokens * a.L * 2 * a.dim("K"),
                    "ia3": a.L * (2 * a.dim("K") + a.I)}[method]
        tensors = {"prompt": 1, "prefix": 1, "ia3": 3 * a.L}.get(method, 0)
        for nm in names:
            i, o = LINEARS[a.family].get(nm, ("H", "H"))
            layers = 1 if nm == "pooler.dense" else a.L
            adapters += layers * r * (a.dim(i) + a.dim(o))
            tensors += 2 * layers
        trainable = adapters + head * groups["head"][0]
        tensors += 2 * head
    param_bytes = 4 if method != "full" else _bytes(precision)
    weights += 0 if method == "full" else (trainable - head * groups["head"][0]) * 4
    grads = trainable * param_bytes
    opt = (2 * trainable * param_bytes + 4 * tensors) if optimizer == "adamw" else 0

    # --- activations saved for backward: walk the blocks ------------------------------------
    tokens = B * (T + (virtual_tokens if method == "prompt" else 0))
    keys = tokens // B + (virtual_tokens if method == "prefix" else 0)
    status = {n: ("train" if method == "full" else "lora" if n in names else "frozen")
              for n in list(LINEARS[a.family]) + ["pooler.dense"]}
    status["norms"] = "train" if method == "full" else "frozen"
    status["ia3"] = "train" if method == "ia3" else None
    attn = "eager" if a.family == "bert" else attention
    ops = LAYER_OPS[(a.family, attn)] + MLP_OPS[a.family]
    forced = {"k", "v"} if method in ("prefix", "ia3") else set()
    rg, saved = {"0.x": method in ("full", "prompt")}, {}
    per_layer = []
    for layer in range(a.L):
        before = sum(saved.values())
        simulate(ops, a, status, tokens, keys, act, mask, r, lora_dropout, rg, saved, layer,
                  forced)
        per_layer.append(sum(saved.values()) - before)
    last = rg.get(f"{a.L}.x", False)
    tail = {}
    if method == "full":
        tail["ids"] = 8 * tokens                      # the embedding's backward needs the ids
    if a.family == "llama":
        K = min(logits_positions or T, T)
        simulate([("rms", "fn", "x", "H"), ("lin", "lo", "fn", "head", "H")], a,
                  {"head": status["norms"], "norms": status["norms"]}, tokens, keys, act,
                  mask, r, 0.0, rg, tail, a.L)
        tail["log_softmax"] = B * K * a.V * 4 * last
        tail["labels"] = 8 * B * K + 4
        # forward: the logits (+ their fp32 copy); backward: two fp32 gradients of that size
        temps = B * K * a.V * max(8, act + 4 * (act != 4))
    else:
        if method == "full":
            tail["positions"], tail["types"] = 8 * a.P, 8 * T
            tail["emb_ln"] = tokens * (a.H * act + 8) + tokens * a.H * mask * (a.dropout > 0)
        pooler = status["pooler.dense"] != "frozen"
        tail["pooled"] = tokens * a.H * act * pooler      # h[:, 0] is a view of all of h
        tail["pooler"] = B * a.H * (act + mask + act) * (pooler or last) + B * r * act * (
            status["pooler.dense"] == "lora")
        tail["loss"] = B * a.labels * 4 + 8 * B + 4
        temps = 0
    if attn == "eager":
        temps = max(temps, 2 * B * a.n * (tokens // B) * keys * 4)
    activations = sum(saved.values()) + sum(tail.values())
    if checkpointing:                         # only each block's input, then one recompute
        activations = activations - sum(per_layer) + a.L * tokens * a.H * act
        temps += max(per_layer)
    parts = {"weights": round(weights), "gradients": grads, "optimizer": opt,
             "activations": int(activations), "temporaries": int(temps)}
    setting = {"method": method, "precision": precision, "keep": keep, "r": r, "targets": names,
                   "batch_size": B, "seq_len": T, "checkpointing": checkpointing, "attention": attn}
    return FitEstimate(parts, sum(n for n, _ in groups.values()) + (trainable if method != "full"
                       else 0) - head * groups["head"][0], trainable, setting)
