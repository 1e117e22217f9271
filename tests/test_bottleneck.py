"""Bottleneck adapters (pl.bottleneck): equal to the `adapters` package (AdapterHub) on the same
weights, start at the base, train only themselves, save / load, unload bit for bit, refuse to
merge, and refuse bad input before anything changes.

The reference outputs are committed (tests/fixtures/bottleneck_reference/, made by
tests/fixtures/make_bottleneck_reference.py in a side environment: adapters 1.3.0 needs
transformers 4.57, which cannot join this one).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from safetensors.torch import load_file
from torch import nn

import peftlab as pl
from peftlab.core.errors import AdapterError, AlreadyAdaptedError, TargetError

REF = Path(__file__).parent / "fixtures" / "bottleneck_reference"
VOCAB = 100


def tiny_bert():
    torch.manual_seed(0)
    return tf.BertForSequenceClassification(tf.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()


def tiny_llama():
    from chat_fixtures import TINY_LLAMA
    torch.manual_seed(0)
    return tf.LlamaForCausalLM(tf.LlamaConfig(**{**TINY_LLAMA, "vocab_size": VOCAB})).eval()


MODELS = {"bert": tiny_bert, "llama": tiny_llama}
STYLES = {"serial": {}, "parallel": {"style": "parallel", "scaling": 4.0,
                                     "non_linearity": "relu"}}


def batch(seed=1, b=3, t=8):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (b, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    return ids, mask


def out(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def perturb(model, seed=2):
    """Give every adapter non-zero weights (as training would)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in pl.bottleneck.bottleneck_layers(model).values():
            for p in w.bottleneck.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


# --- the reference: the `adapters` package on the same weights ---------------------------------

def reference_config(c: dict) -> pl.bottleneck.BottleneckConfig:
    """peftlab's config for one of adapters' BnConfigs (those the fixture uses)."""
    assert not c["original_ln_before"] and c["original_ln_after"] and c["residual_before_ln"]
    assert not (c["ln_before"] or c["ln_after"] or c["use_gating"] or c["phm_layer"])
    placement = [p for p, on in (("attention", c["mh_adapter"]), ("ffn", c["output_adapter"]))
                 if on]
    return pl.bottleneck.BottleneckConfig(
        reduction_factor=c["reduction_factor"], non_linearity=c["non_linearity"],
        placement=placement, style="parallel" if c["is_parallel"] else "serial",
        scaling=c["scaling"], modules_to_save=[])


def reference_tensors(name: str, serial: bool) -> dict[str, torch.Tensor]:
    """adapters' tensors of adapter `name` under peftlab's names: <module>.adapters.<name>.
    adapter_down.0.weight -> <module>[.dense].bottleneck.down.weight (a serial adapter wraps
    the output projection `dense`, a parallel one the whole BertSelfOutput / BertOutput)."""
    tensors = {}
    for k, v in load_file(REF / "adapters.safetensors").items():
        where, _, rest = k.partition(f".adapters.{name}.")
        if not rest:
            continue
        part = rest.replace("adapter_down.0.", "down.").replace("adapter_up.", "up.")
        tensors[f"{where}{'.dense' if serial else ''}.bottleneck.{part}"] = v
    return tensors


MAX_DIFF = {}


@pytest.mark.parametrize("name", ["houlsby", "parallel", "parallel_both"])
def test_outputs_equal_the_adapters_package(name):
    meta = json.loads((REF / "reference.json").read_text())
    outputs = load_file(REF / "outputs.safetensors")
    ids, mask = outputs["input_ids"], outputs["attention_mask"]
    model = tf.BertModel(tf.BertConfig(**meta["bert_config"]), add_pooling_layer=False).eval()
    model.load_state_dict(load_file(REF / "base.safetensors"))
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(base, outputs["base"], atol=1e-5, rtol=0)   # same base

    cfg = reference_config(meta["adapters"][name])
    pl.bottleneck.apply(model, cfg)
    pl.bottleneck.load_adapter_state(model, reference_tensors(name, cfg.style == "serial"))
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).last_hidden_state
    diff = (ours - outputs[name]).abs().max().item()
    MAX_DIFF[name] = diff
    assert diff <= 1e-5, f"{name}: max difference {diff:.2e} from adapters"
    assert (ours - base).abs().max() > 1e-2                 # the adapter mattered


# --- starts at the base; trains only itself ----------------------------------------------------

@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("arch", MODELS)
def test_zero_up_projection_changes_nothing(arch, style):
    base = MODELS[arch]()
    ids, mask = batch()
    model = pl.bottleneck.apply(copy.deepcopy(base),
                                pl.bottleneck.BottleneckConfig(bottleneck_size=4, **STYLES[style]))
    assert all(torch.count_nonzero(w.bottleneck.up.weight) == 0
               for w in pl.bottleneck.bottleneck_layers(model).values())
    assert torch.equal(out(model, ids, mask), out(base, ids, mask))


def loss_of(model, arch, ids, mask):
    if arch == "llama":
        return model(input_ids=ids, attention_mask=mask, labels=ids).loss
    return F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits,
                           torch.tensor([0, 1, 1]))


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("arch", MODELS)
def test_a_training_step_moves_only_the_adapters_then_unload_gives_the_base(arch, style):
    base = MODELS[arch]()
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    model = copy.deepcopy(base)
    cfg = pl.bottleneck.BottleneckConfig(reduction_factor=8, **STYLES[style])
    pl.bottleneck.apply(model, cfg)
    n = pl.bottleneck.count_parameters(base, cfg)
    adapters = sum(p.numel() for n_, p in model.named_parameters() if ".bottleneck." in n_)
    assert adapters == n == 2 * 2 * (2 * 32 * 4 + 4 + 32)   # 2 layers x 2 places
    trainable = {n_ for n_, p in model.named_parameters() if p.requires_grad}
    heads = {"classifier.weight", "classifier.bias"} if arch == "bert" else set()
    assert trainable == {n_ for n_ in dict(model.named_parameters()) if ".bottleneck." in n_} | heads

    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".bottleneck." not in k
              and not k.startswith("classifier")}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, mask = batch()
    for _ in range(2):
        loss_of(model, arch, ids, mask).backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())
    ups = [w.bottleneck.up.weight for w in pl.bottleneck.bottleneck_layers(model).values()]
    assert all(torch.count_nonzero(u) > 0 for u in ups)
    assert not torch.equal(out(model, ids, mask), out(base, ids, mask))

    pl.bottleneck.unload(model)                       # merge=False: the base, bit for bit
    assert pl.core.get_method(model) is None
    now = model.state_dict()
    assert now.keys() == base_state.keys()
    assert [k for k in base_state if not torch.equal(now[k], base_state[k])] == []
    assert torch.equal(out(model, ids, mask), out(base, ids, mask))


def test_the_embedded_minilm_takes_both_styles():
    base, tok = pl.models.text_classifier(num_labels=2)
    enc = tok(["a fine film", "dull"], return_tensors="pt", padding=True)
    want = out(base, enc["input_ids"], enc["attention_mask"])
    hidden, layers = base.config.hidden_size, base.config.num_hidden_layers
    for style, kw in STYLES.items():
        model = pl.bottleneck.apply(copy.deepcopy(base), pl.bottleneck.BottleneckConfig(**kw))
        assert len(pl.bottleneck.bottleneck_layers(model)) == 2 * layers, style
        assert torch.equal(out(model, enc["input_ids"], enc["attention_mask"]), want), style
        m = hidden // 16
        assert pl.trainable_report(model).trainable == \
            2 * layers * (2 * hidden * m + m + hidden) + \
            sum(p.numel() for p in model.classifier.parameters())


# --- saving, loading, merging ------------------------------------------------------------------

@pytest.mark.parametrize("style", STYLES)
def test_save_load_round_trip(style, tmp_path):
    base = tiny_bert()
    model = pl.bottleneck.apply(copy.deepcopy(base),
                                pl.bottleneck.BottleneckConfig(placement="ffn", **STYLES[style]))
    perturb(model)
    ids, mask = batch()
    want = out(model, ids, mask)
    pl.save_adapter(model, tmp_path / "a")
    saved = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert sorted(saved) == sorted(pl.bottleneck.adapter_state_dict(model))
    assert all(".bottleneck." in k or k.startswith("classifier.") for k in saved)
    meta = json.loads((tmp_path / "a" / "peftlab_adapter.json").read_text())
    assert meta["method"] == "bottleneck" and meta["config"]["style"] == style
    loaded = pl.load_adapter(copy.deepcopy(base), tmp_path / "a")
    assert torch.equal(out(loaded, ids, mask), want)
    with pytest.raises(AdapterError, match="no bottleneck adapters.*format='peftlab'"):
        pl.save_adapter(model, tmp_path / "hf", format="hf-peft")
    other = pl.bottleneck.apply(copy.deepcopy(base), pl.bottleneck.BottleneckConfig(
        placement="ffn", bottleneck_size=3, **STYLES[style]))
    before = {k: v.clone() for k, v in pl.bottleneck.adapter_state_dict(other).items()}
    with pytest.raises(AdapterError, match="another config|does not fit"):
        pl.load_adapter(other, tmp_path / "a")
    assert all(torch.equal(v, before[k])
               for k, v in pl.bottleneck.adapter_state_dict(other).items())


def test_merge_is_refused_clearly_and_changes_nothing(tmp_path):
    model = pl.bottleneck.apply(tiny_bert(), pl.bottleneck.BottleneckConfig())
    perturb(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="cannot be merged.*nonlinearity.*pl.bottleneck.unload"):
        pl.bottleneck.unload(model, merge=True)
    with pytest.raises(ValueError, match="cannot be merged"):
        pl.export_merged(model, tmp_path / "merged")
    assert pl.core.get_method(model) == "bottleneck"
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not pl.core.registry.spec("bottleneck").mergeable


# --- bad input: one clear error each, the model unchanged ---------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"reduction_factor": 0}, "reduction_factor must be a positive number"),
    ({"bottleneck_size": 0}, "bottleneck_size must be None .* or a positive int"),
    ({"non_linearity": "softmax"}, "non_linearity must be one of relu"),
    ({"placement": ["attention", "cross"]}, "placement must name 'attention' and/or 'ffn'"),
    ({"placement": []}, "placement must name"),
    ({"style": "mixed"}, "style must be 'serial' .* or 'parallel'"),
    ({"scaling": float("nan")}, "scaling must be a finite non-zero number"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pl.bottleneck.BottleneckConfig(**kwargs)


class NoBlocks(nn.Module):
    """A transformers-looking model (it has a config) whose blocks have no known layout."""

    def __init__(self):
        super().__init__()
        self.config = tf.PretrainedConfig()
        self.layer = nn.ModuleDict({"attn": nn.Linear(4, 4), "ff": nn.Linear(4, 4)})


@pytest.mark.parametrize("model, cfg, error, match", [
    (tiny_bert, {"bottleneck_size": 33}, ValueError,
     r"bottleneck \(33\) is larger than the hidden size 32 of bert.encoder.layer.0"),
    (tiny_bert, {"reduction_factor": 64}, ValueError,
     "reduction_factor=64 leaves no bottleneck.*hidden size 32"),
    (tiny_bert, {"modules_to_save": ["nope"]}, TargetError, "'nope' matched no module"),
    (NoBlocks, {}, TargetError,
     "cannot find the attention and FFN output modules of NoBlocks.*LAYOUTS"),
    (lambda: nn.Sequential(nn.Linear(4, 4)), {}, TypeError,
     "need a Hugging Face transformers model"),
])
def test_bad_models_and_sizes_raise_before_any_change(model, cfg, error, match):
    m = model()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    names = [n for n, _ in m.named_modules()]
    with pytest.raises(error, match=match):
        pl.bottleneck.apply(m, pl.bottleneck.BottleneckConfig(**cfg))
    assert pl.core.get_method(m) is None
    assert [n for n, _ in m.named_modules()] == names
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    assert all(p.requires_grad for p in m.parameters())


def test_twice_or_with_a_wrong_config_is_refused():
    model = pl.bottleneck.apply(tiny_bert(), pl.bottleneck.BottleneckConfig())
    with pytest.raises(AlreadyAdaptedError, match="already carries a peftlab 'bottleneck'"):
        pl.bottleneck.apply(model, pl.bottleneck.BottleneckConfig())
    with pytest.raises(TypeError, match="needs a BottleneckConfig, got LoraConfig"):
        pl.bottleneck.apply(tiny_bert(), pl.lora.LoraConfig())
    with pytest.raises(ValueError, match="needs a model carrying bottleneck adapters"):
        pl.bottleneck.unload(tiny_bert())


@pytest.mark.parametrize("style", STYLES)
def test_the_tiny_chat_model_generates_through_the_adapters(style):
    from chat_fixtures import tiny_chat_model

    base, tok = tiny_chat_model()
    ids = tok("Hello there", return_tensors="pt")["input_ids"]
    kw = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": tok.pad_token_id}
    want = base.generate(ids, **kw)                      # with the KV cache
    model = pl.bottleneck.apply(copy.deepcopy(base), pl.bottleneck.BottleneckConfig(
        reduction_factor=4, **STYLES[style]))
    assert torch.equal(model.generate(ids, **kw), want)
    perturb(model)
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, base(ids).logits)
    pl.bottleneck.unload(model)
    assert torch.equal(model.generate(ids, **kw), want)
