"""QLoRA: the NF4 math against the paper and bitsandbytes, Linear4bit through the base-layer
seam, and pl.qlora on a BERT classifier, a Llama chat model and a CNN's linear layers."""

from __future__ import annotations

import copy

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from chat_fixtures import tiny_chat_model
from export_fixtures import tiny_tokenizer
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

import peftlab as pl
from peftlab.core.errors import TargetError
from peftlab.qlora import Linear4bit, nf4

# the QLoRA paper's NF4 values (Dettmers et al. 2023, appendix E)
PAPER_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
             -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
             0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
             0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]
CHAT_SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]   # SmolLM2-135M: q/o, k/v,
#                                                                     MLP up/gate, MLP down


def weight(shape, seed=0, zero_rows=2):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.02
    w[:zero_rows] = 0                                  # all-zero blocks
    return w


# --- the math -----------------------------------------------------------------------------------

def test_code_book_is_the_papers_with_an_exact_zero():
    assert nf4.NF4.tolist() == torch.tensor(PAPER_NF4).tolist()        # bit for bit
    assert nf4.NF4[nf4.ZERO_CODE] == 0 and len(nf4.NF4) == 16
    assert nf4.bits_per_parameter(64, False) == 4.5
    assert nf4.bits_per_parameter(64, True) == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))


@pytest.mark.parametrize("shape", [(576, 576), (192, 576), (7, 13), (3, 5)])
def test_round_trip_packing_padding_and_zero_blocks(shape):
    w = weight(shape)
    for dq in (False, True):
        q = nf4.quantize(w, 64, dq)
        n = w.numel()
        assert q.packed.shape == ((n + 1) // 2,) and q.absmax.numel() == -(-n // 64)
        back = nf4.dequantize_weight(q)
        assert back.shape == w.shape and torch.all(back[:2] == 0)      # zeros stay zero
        # each number lands on the nearest NF4 value of its block: error <= half a gap
        err = (back - w).abs().reshape(-1)
        assert float(err.max()) <= 0.17 * float(w.abs().max())
        codes = torch.stack([q.packed >> 4, q.packed & 15], 1).reshape(-1)[:n]
        blocks = torch.arange(n) // 64
        absmax = nf4.dequantize_absmax(q.absmax, q.absmax2, q.offset) if dq else q.absmax
        assert torch.equal(back.reshape(-1), nf4.NF4[codes.long()] * absmax[blocks])


def test_absmax_counts_of_the_chat_model_are_not_multiples_of_256():
    counts = [nf4.quantize(weight(s), 64, True).absmax.numel() for s in CHAT_SHAPES[:2]]
    assert counts == [5184, 1728] and all(c % 256 for c in counts)


def test_bytes_of_chat_model_shapes_at_most_0_16_of_fp32():
    for shape in CHAT_SHAPES:
        layer = Linear4bit.from_float(nn.Linear(shape[1], shape[0], bias=False))
        ratio = pl.core.base.weight_bytes(layer) / (4 * shape[0] * shape[1])
        assert ratio <= 0.16 and ratio == pytest.approx(4.127 / 32, abs=2e-3)


def test_bad_block_size_and_non_finite_weights():
    with pytest.raises(ValueError, match="block_size must be one of"):
        nf4.quantize(torch.zeros(64), block_size=65)
    w = torch.zeros(8, 8)
    w[3, 3] = float("nan")
    with pytest.raises(ValueError, match="Cannot quantize layer.7.fc to NF4.*non-finite"):
        nf4.quantize(w, name="layer.7.fc")


# --- against bitsandbytes ----------------------------------------------------------------------

@pytest.mark.parametrize("shape", CHAT_SHAPES + [(7, 13), (3, 5), (33, 97)])
def test_equals_bitsandbytes(shape):
    bnb = pytest.importorskip("bitsandbytes.functional")
    w = weight(shape, seed=1)                          # zero rows: all-zero blocks
    # plain NF4: the same bytes, the same scales, the same weights
    p, st = bnb.quantize_4bit(w, quant_type="nf4", blocksize=64, compress_statistics=False)
    q = nf4.quantize(w, 64, double_quant=False)
    assert torch.equal(q.packed, p.view(-1)) and torch.equal(q.absmax, st.absmax)
    ref = bnb.dequantize_4bit(p, st, quant_type="nf4")
    assert float((nf4.dequantize_weight(q) - ref).abs().max()) <= 1e-6
    # double quantization: the same 4-bit codes, mean, second-level scales and 8-bit absmax
    # codes (bitsandbytes' CPU grid lookup, not nearest rounding: ~0.2% of them differ), so
    # the same weights, from our state and from bitsandbytes'
    p, st = bnb.quantize_4bit(w, quant_type="nf4", blocksize=64, compress_statistics=True)
    q = nf4.quantize(w, 64, double_quant=True)
    assert torch.equal(q.packed, p.view(-1))
    assert torch.equal(q.offset, st.offset) and torch.equal(q.absmax2, st.state2.absmax)
    assert torch.equal(nf4.DYNAMIC, st.state2.code)
    assert torch.equal(q.absmax, st.absmax)
    ref = bnb.dequantize_4bit(p, st, quant_type="nf4")
    assert float((nf4.dequantize_weight(q) - ref).abs().max()) <= 1e-6
    ours = nf4.dequantize(p.view(-1), st.absmax, tuple(shape), 64, st.state2.absmax, st.offset)
    assert float((ours - ref).abs().max()) <= 1e-6


@pytest.mark.parametrize("fill", [0.0, 0.5])
def test_equals_bitsandbytes_when_all_absmax_are_equal(fill):
    # every block's absmax equals the mean: absmax - mean is all zero, 8-bit code 0 each
    bnb = pytest.importorskip("bitsandbytes.functional")
    w = torch.full((96, 200), fill)
    p, st = bnb.quantize_4bit(w, quant_type="nf4", blocksize=64, compress_statistics=True)
    q = nf4.quantize(w, 64, double_quant=True)
    assert torch.equal(q.packed, p.view(-1)) and torch.equal(q.absmax, st.absmax)
    assert not q.absmax.any() and not q.absmax2.any()
    ref = bnb.dequantize_4bit(p, st, quant_type="nf4")
    assert float((nf4.dequantize_weight(q) - ref).abs().max()) <= 1e-6


def test_8bit_codes_near_midpoints_of_the_map_follow_the_cpu_grid_lookup():
    # numbers within 2e-5 of every midpoint of the dynamic map (one +-1 per block fixes the
    # scale; blocks scaled and shifted like absmax - mean): bitsandbytes' CPU kernel snaps
    # them to a grid of step 2 / 65535 before its table lookup, so exact nearest rounding
    # lands one step off on some of them; ours takes bitsandbytes' code on every one
    bnb = pytest.importorskip("bitsandbytes.functional")
    mids = nf4._DYNAMIC_BOUNDS[:255]
    rows = [torch.cat([torch.tensor([sign]), mids + k * 1e-6])
            for k in range(-20, 21) for sign in (1.0, -1.0)]
    x = torch.cat(rows)
    x = torch.cat([x, x * 0.037 + 1e-4])
    want, st = bnb.quantize_blockwise(x, code=nf4.DYNAMIC, blocksize=256)
    codes, absmax = nf4.quantize_blockwise_8bit(x)
    assert torch.equal(absmax, st.absmax) and torch.equal(codes, want.view(-1))
    blocks = nf4._blocks(x, 256)
    nearest = torch.bucketize((blocks / blocks.abs().amax(1, keepdim=True)).view(-1),
                              nf4._DYNAMIC_BOUNDS)
    off = (nearest - want.view(-1).long()).abs()
    assert int((off > 0).sum()) > 1000                            # nearest is not the rule
    # one step off where the map is coarser than the grid; near 0 (entries ~1e-6 apart, the
    # grid's 3e-5 resolves nothing finer) several
    coarse = (nf4.DYNAMIC[want.view(-1).long()].abs() > 1e-3)
    assert int(off[coarse].max()) == 1 and int(off.max()) > 1


# --- Linear4bit and pl.qlora ---------------------------------------------------------------------

def tiny_bert(seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()


def bert_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (4, 9), generator=g)
    return ids, (ids[:, 0] > 50).long()


def step(model, ids, labels, opt):
    loss = F.cross_entropy(model(input_ids=ids).logits, labels)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return float(loss)


def test_linear4bit_is_a_base_layer_and_refuses_in_place_merges():
    lin = nn.Linear(64, 48)
    q = Linear4bit.from_float(lin)
    kind = pl.core.base.base_kind(q)
    assert kind.name == "Linear4bit" and kind.dims(q) == (64, 48)
    x = torch.randn(5, 64, requires_grad=True)
    w = q.dequantize()
    torch.testing.assert_close(q(x), x @ w.T + lin.bias, rtol=0, atol=1e-6)
    q(x).sum().backward()                                       # grad_x = grad_y @ W
    torch.testing.assert_close(x.grad, torch.ones(5, 48) @ w, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="cannot merge into a 4-bit weight in place"):
        kind.add_(q, torch.zeros(48, 64))


def test_qlora_on_bert_start_train_save_load_merge_unload(tmp_path):
    base = tiny_bert()
    ids, labels = bert_batch()
    model = pl.qlora.apply(copy.deepcopy(base), pl.qlora.QLoraConfig(r=4, targets="all-linear"))
    layers = pl.qlora.quantized_layers(model)
    assert len(layers) == 13 and pl.core.get_method(model) == "qlora"   # 12 + the pooler
    # zero-initialised B: the adapted model computes the dequantized base exactly
    with torch.no_grad():
        start = model(input_ids=ids).logits
    deq = pl.qlora.unload(copy.deepcopy(model))                 # no keep_base: dequantized
    assert isinstance(deq.bert.encoder.layer[0].attention.self.query, nn.Linear)
    with torch.no_grad():
        torch.testing.assert_close(deq(input_ids=ids).logits, start, rtol=0, atol=1e-6)
    # a training step moves only the adapters and the head
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    codes = {n: m.packed.clone() for n, m in layers.items()}
    losses = [step(model, ids, labels, opt) for _ in range(4)]
    assert losses[-1] < losses[0]
    assert all(torch.equal(m.packed, codes[n]) for n, m in layers.items())
    with torch.no_grad():
        want = model(input_ids=ids).logits
    # bytes by part
    parts = pl.qlora.resident_bytes(model)
    assert parts["codes"] == sum(m.packed.numel() for m in layers.values())
    assert parts["adapters"] == 4 * 4 * sum(m.in_features + m.out_features
                                            for m in layers.values())
    assert pl.measure.weights_bytes(model) == (parts["codes"] + parts["constants"]
                                               + pl.measure.parameter_bytes(model))
    # save -> load onto a fresh float base: re-quantized, the same logits bit for bit
    pl.save_adapter(model, tmp_path / "a")
    loaded = pl.load_adapter(copy.deepcopy(base), tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, want)
    pl.save_adapter(model, tmp_path / "hf", format="hf-peft")
    hf = pl.io.files.read_json(tmp_path / "hf" / "adapter_config.json")
    assert hf["peft_type"] == "LORA" and len(hf["target_modules"]) == 13
    # merge: into the dequantized float base; in place is refused, model unchanged
    for merge in (pl.qlora.merge, pl.lora.merge):
        with pytest.raises(ValueError, match="cannot merge into a 4-bit weight in place"):
            merge(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, want)
    merged = pl.qlora.unload(copy.deepcopy(model), merge=True)
    assert pl.core.get_method(merged) is None
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, want, rtol=0, atol=1e-5)
    out = pl.export_merged(model, tmp_path / "export", tokenizer=tiny_tokenizer())  # vocab 100
    again = BertForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, want, rtol=0, atol=1e-5)


def test_keep_base_gives_the_original_back_bit_for_bit():
    base = tiny_bert()
    model = pl.qlora.apply(copy.deepcopy(base), pl.qlora.QLoraConfig(
        r=2, targets=["query", "value"], keep_base=True))
    assert not any(k.endswith("query.weight") for k in model.state_dict())   # codes only
    pl.qlora.unload(model)
    a, b = model.state_dict(), base.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.hidden = nn.Linear(4, 64)
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(F.relu(self.hidden(F.relu(self.conv(x)).mean((2, 3)))))


def test_bad_inputs_one_clear_error_each_model_unchanged():
    with pytest.raises(ValueError, match="block_size must be one of"):
        pl.qlora.QLoraConfig(block_size=100)
    torch.manual_seed(0)
    cnn = SmallCNN()
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    with pytest.raises(TargetError, match="QLoRA quantizes Linear layers.*conv is a Conv2d"):
        pl.qlora.apply(cnn, pl.qlora.QLoraConfig(r=2, targets=["conv", "hidden"]))
    with torch.no_grad():
        cnn.hidden.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="Cannot quantize hidden to NF4.*non-finite"):
        pl.qlora.apply(cnn, pl.qlora.QLoraConfig(r=2, targets=["hidden"]))
    assert pl.core.get_method(cnn) is None and isinstance(cnn.hidden, nn.Linear)
    assert [k for k, v in cnn.state_dict().items() if k != "hidden.weight"
            and not torch.equal(v, before[k])] == []


def test_a_cnns_linear_layers():
    torch.manual_seed(0)
    cnn = SmallCNN()
    pl.qlora.apply(cnn, pl.qlora.QLoraConfig(r=2, targets=["hidden"], modules_to_save=["fc"]))
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    opt = torch.optim.AdamW([p for p in cnn.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(cnn(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    with torch.no_grad():
        want = cnn(x)
        torch.testing.assert_close(pl.qlora.unload(copy.deepcopy(cnn), merge=True)(x), want,
                                   rtol=0, atol=1e-5)


def test_a_tiny_llama_chat_model():
    model, _ = tiny_chat_model()
    with pytest.raises(TargetError, match="tied"):                 # lm_head shares wte
        pl.qlora.apply(model, pl.qlora.QLoraConfig(r=2, targets=["lm_head"]))
    pl.qlora.apply(model, pl.qlora.QLoraConfig(r=2, targets="all-linear"))
    assert len(pl.qlora.quantized_layers(model)) == 14              # 7 per layer, no lm_head
    ids = torch.randint(3, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        want = model(input_ids=ids).logits
        merged = pl.qlora.unload(copy.deepcopy(model), merge=True)
        torch.testing.assert_close(merged(input_ids=ids).logits, want, rtol=0, atol=1e-4)


# --- against bitsandbytes' committed outputs (every run, bitsandbytes installed or not) ---------

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "nf4_reference.json").read_text())


def sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("case", sorted(REFERENCE["cases"]))
def test_equals_the_committed_bitsandbytes_outputs(case):
    """tests/fixtures/make_nf4_reference.py stored the sha256 of everything bitsandbytes 0.50
    returned for these inputs; ours must give the same bytes."""
    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    from make_nf4_reference import cases
    w, kind = next((w, k) for name, w, k in cases() if name == case)
    ref = REFERENCE["cases"][case]
    assert sha(w) == ref["input"], "the test input changed: regenerate the fixture"
    if kind == "8bit":
        codes, absmax = nf4.quantize_blockwise_8bit(w)
        assert sha(codes.to(torch.uint8)) == ref["codes"] and sha(absmax) == ref["absmax"]
        return
    for dq, key in ((False, "plain"), (True, "double_quant")):
        q, want = nf4.quantize(w, 64, double_quant=dq), ref[key]
        assert sha(q.packed) == want["packed"] and sha(q.absmax) == want["absmax"]
        if dq:
            assert sha(q.offset) == want["offset"] and sha(q.absmax2) == want["absmax2"]
            assert sha(nf4.DYNAMIC) == want["code"]
        deq = nf4.dequantize_weight(q)
        assert abs(float(deq.abs().max()) - want["max_abs"]) <= 1e-6
