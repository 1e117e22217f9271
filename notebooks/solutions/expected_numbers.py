"""The expected numbers of the exercises whose answer is a number that does not depend on training.

    python notebooks/solutions/expected_numbers.py      # prints every answer, computed, never typed

Each function computes one answer from the library or the shipped data, so the answers follow the
course if a model, a dataset or a default changes. tests/test_exercises.py checks them against
independent counts.
"""

from __future__ import annotations

import torch
from torch import nn

import peftlab as pl

QV = ["query", "value"]
SIX = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


def layer_params() -> int:
    """00, exercise 2: parameters of one transformer layer of the embedded MiniLM."""
    model, _ = pl.models.text_classifier(num_labels=2)
    return sum(p.numel() for p in model.bert.encoder.layer[0].parameters())


def layer_params_by_hand(h: int = 384, f: int = 1536) -> int:
    attention = 4 * (h * h + h)                 # query, key, value, output projection
    ffn = (h * f + f) + (f * h + h)             # intermediate and output dense
    norms = 2 * 2 * h                           # two LayerNorms, weight and bias
    return attention + ffn + norms


def not_sentences() -> dict:
    """00, exercise 3: training sentences with the word "not", and how many are positive."""
    ds = pl.data.load_dataset()
    hits = [y for t, y in zip(ds.train.texts, ds.train.labels) if " not " in f" {t.lower()} "]
    return {"with_not": len(hits), "positive": int(sum(1 for y in hits if int(y) == 1))}


def bitfit_trainable() -> int:
    """01, exercise 1: BitFit's trainable parameters (every bias + the head)."""
    model, _ = pl.models.text_classifier(num_labels=2)
    pl.full.apply(model, pl.full.FullConfig(mode="bitfit"))
    return pl.trainable_report(model).trainable


def sgd_momentum_state_bytes() -> int:
    """01, exercise 2: SGD with momentum keeps one fp32 buffer per trainable parameter."""
    model, _ = pl.models.text_classifier(num_labels=2)
    return 4 * sum(p.numel() for p in model.parameters())


def lora_count(d_in: int, d_out: int, r: int) -> int:
    """02, exercise 1: r * (d_in + d_out)."""
    return r * (d_in + d_out)


def largest_rank_under_qv_budget() -> tuple[int, int, int]:
    """02, exercise 4: the largest r on all six linear maps whose LoRA count stays below LoRA
    r=8 on query/value. Returns (r, its count, the q/v r=8 count)."""
    model, _ = pl.models.text_classifier(num_labels=2)
    budget = pl.lora.count_parameters(model, pl.lora.LoraConfig(r=8, alpha=16, targets=QV))
    r = 0
    while pl.lora.count_parameters(model, pl.lora.LoraConfig(r=r + 1, alpha=2, targets=SIX)) < budget:
        r += 1
    count = pl.lora.count_parameters(model, pl.lora.LoraConfig(r=max(r, 1), alpha=2, targets=SIX))
    return r, count, budget


def largest_conv_lora(r: int = 4) -> tuple[str, int]:
    """07, exercise 4: the convolution with the most LoRA parameters at rank r."""
    model = pl.models.vision_classifier(5)
    counts = {n: r * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
              for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    name = max(counts, key=counts.get)
    return name, counts[name]


def llama_qv_lora(r: int = 4) -> int:
    """08, exercise 1: LoRA r=4 on q_proj/v_proj of a small Llama built from a config."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=2, pad_token_id=0)
    model = LlamaForSequenceClassification(cfg)
    pl.lora.apply(model, pl.lora.LoraConfig(r=r, alpha=2 * r, targets=["q_proj", "v_proj"]))
    return pl.trainable_report(model).trainable


def gpt2_all_linear(r: int = 4) -> dict:
    """08, exercise 2: which GPT-2 modules "all-linear" adapts (the head is left out)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    cfg = GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                     num_labels=2, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(cfg)
    pl.lora.apply(model, pl.lora.LoraConfig(r=r, alpha=2 * r, targets="all-linear"))
    adapted = sorted({n.split(".")[-1] for n in pl.lora.lora_layers(model)})
    return {"adapted": adapted, "layers": len(pl.lora.lora_layers(model)),
            "trainable": pl.trainable_report(model).trainable}


if __name__ == "__main__":
    print("00.2 one transformer layer:", f"{layer_params():,}", "(by hand:", f"{layer_params_by_hand():,})")
    print("00.3 sentences with 'not':", not_sentences())
    print("01.1 BitFit trainable:", f"{bitfit_trainable():,}")
    print("01.2 SGD momentum state, full fine-tuning:", f"{sgd_momentum_state_bytes():,} bytes")
    print("02.1 LoRA count (384, 384, 8):", lora_count(384, 384, 8))
    r, n, b = largest_rank_under_qv_budget()
    print(f"02.4 largest r on six maps under the q/v r=8 budget: r={r} ({n:,} < {b:,})")
    print("07.4 conv with the most LoRA parameters at r=4:", largest_conv_lora())
    print("08.1 Llama q_proj/v_proj r=4 trainable (head included):", f"{llama_qv_lora():,}")
    print("08.2 GPT-2 all-linear:", gpt2_all_linear())
