"""Prefix tuning and prompt tuning (peftlab/prefix.py, peftlab/prompt.py)."""

from __future__ import annotations

import copy

import pytest
import torch

import peftlab as pl
from peftlab.core.errors import AdapterError
from peftlab.core.errors import AlreadyAdaptedError

P = 3


def gpt2_lm():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(cfg).eval()


def gpt2_cls():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     pad_token_id=0, num_labels=2)
    return GPT2ForSequenceClassification(cfg).eval()


def apply(model, config, **kw):
    """pl.prefix.apply or pl.prompt.apply, whichever package the config's method is."""
    return getattr(pl, config.method).apply(model, config, **kw)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


IDS = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0], [11, 12, 0, 0, 0]])
MASK = (IDS != 0).long()


def check_padding_invariance(model, token_level: bool):
    """Each row of a right-padded batch gives the logits it gives alone (within 1e-5)."""
    with torch.no_grad():
        batch = model(input_ids=IDS, attention_mask=MASK).logits
        for i in range(len(IDS)):
            n = int(MASK[i].sum())
            alone = model(input_ids=IDS[i:i + 1, :n]).logits
            got = batch[i:i + 1, :n] if token_level else batch[i:i + 1]
            assert torch.allclose(got, alone, atol=1e-5), (i, (got - alone).abs().max())


CONFIGS = [pl.prefix.PrefixConfig(num_virtual_tokens=P),
           pl.prefix.PrefixConfig(num_virtual_tokens=P, projection_hidden=16),
           pl.prompt.PromptConfig(num_virtual_tokens=P, init="normal")]
IDS_CFG = ["prefix", "prefix-mlp", "prompt"]


# --- invariants on encoder and decoder ------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS, ids=IDS_CFG)
def test_padding_invariance_encoder_and_decoders(tiny_bert, config):
    for model, token_level in [(tiny_bert, False), (gpt2_lm(), True), (gpt2_cls(), False)]:
        base = copy.deepcopy(model)
        apply(model, copy.deepcopy(config))
        check_padding_invariance(model, token_level)
        with torch.no_grad():  # the adapter does change the output
            assert not torch.allclose(model(input_ids=IDS[:1]).logits,
                                      base(input_ids=IDS[:1]).logits)


def test_padding_invariance_embedded_minilm(embedded):
    model, tok = embedded
    pl.prefix.apply(model, pl.prefix.PrefixConfig(num_virtual_tokens=5))
    texts = ["a great movie", "this was a terrible, boring and far too long film"]
    with torch.no_grad():
        both = model(**tok(texts, padding=True, return_tensors="pt")).logits
        alone = torch.cat([model(**tok(t, return_tensors="pt")).logits for t in texts])
    assert torch.allclose(both, alone, atol=1e-5)
    rep = pl.trainable_report(model)
    # 6 layers * 2 (key, value) * 5 tokens * 384, plus the classifier head (384 * 2 + 2)
    assert rep.trainable == 6 * 2 * 5 * 384 + 384 * 2 + 2


def test_trainable_counts(tiny_bert):
    L, H = 2, 32
    pl.prefix.apply(tiny_bert, pl.prefix.PrefixConfig(num_virtual_tokens=P))
    head = 32 * 2 + 2  # modules_to_save: the fresh classifier head trains too
    assert pl.trainable_report(tiny_bert).trainable == L * 2 * P * H + head
    lm = pl.prefix.apply(gpt2_lm(), pl.prefix.PrefixConfig(num_virtual_tokens=P))
    assert pl.trainable_report(lm).trainable == L * 2 * P * H  # no head for a (tied) LM head
    lm = pl.prompt.apply(gpt2_lm(), pl.prompt.PromptConfig(num_virtual_tokens=P))
    assert pl.trainable_report(lm).trainable == P * H
    cls = pl.prompt.apply(gpt2_cls(), pl.prompt.PromptConfig(num_virtual_tokens=P))
    assert pl.trainable_report(cls).trainable == P * H + 32 * 2  # GPT-2's score has no bias


@pytest.mark.parametrize("config", CONFIGS, ids=IDS_CFG)
def test_training_step_keeps_base_and_lowers_loss(tiny_bert, config):
    model = apply(tiny_bert, copy.deepcopy(config))
    before = {k: v.clone() for k, v in model.named_parameters() if not v.requires_grad}
    torch.manual_seed(0)
    x = torch.randint(3, 100, (16, 6))
    y = (x[:, 1] > 50).long()
    batch = {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": y}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model.train()
    losses = []
    for _ in range(20):
        loss = pl.train.loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    after = dict(model.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)  # base bit-identical


def test_gradient_reaches_every_prefix(tiny_bert):
    model = pl.prefix.apply(tiny_bert, pl.prefix.PrefixConfig(num_virtual_tokens=P))
    model(input_ids=IDS, attention_mask=MASK).logits.sum().backward()
    g = model.prefix_encoder.key.grad
    assert g is not None and all(g[i].abs().sum() > 0 for i in range(2))


# --- the math, against a hand-built layer and against HF PEFT --------------------------------

def test_single_layer_by_hand(tiny_bert):
    """softmax(Q [K_p; K]^T / sqrt(d) + [0; mask]) [V_p; V] equals the library's layer 0."""
    model = pl.prefix.apply(tiny_bert, pl.prefix.PrefixConfig(num_virtual_tokens=P))
    attn = model.bert.encoder.layer[0].attention.self
    got = {}
    h = attn.register_forward_hook(
        lambda m, a, kw, out: got.update(x=a[0] if a else kw["hidden_states"], out=out[0]),
        with_kwargs=True)
    with torch.no_grad():
        model(input_ids=IDS, attention_mask=MASK)
    h.remove()
    x = got["x"]                                                           # (B, T, 32)
    B, T, _ = x.shape
    split = lambda t: t.view(B, T, 4, 8).transpose(1, 2)                  # (B, H, T, D)
    q, k, v = split(attn.query(x)), split(attn.key(x)), split(attn.value(x))
    kp, vp = model.prefix_encoder.key[0], model.prefix_encoder.value[0]    # (H, P, D)
    k = torch.cat([kp.expand(B, -1, -1, -1), k], 2)
    v = torch.cat([vp.expand(B, -1, -1, -1), v], 2)
    visible = torch.cat([torch.ones(B, P, dtype=torch.bool), MASK.bool()], 1)  # (B, P+T)
    s = q @ k.transpose(-1, -2) / 8 ** 0.5
    s = s.masked_fill(~visible[:, None, None, :], float("-inf"))
    ref = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, 32)
    assert torch.allclose(got["out"], ref, atol=1e-5)


def test_prefix_matches_hf_peft_gpt2():
    """Same trainable count as HF PEFT, and the same logits once the positions agree (PEFT
    shifts real tokens by P positions, peftlab keeps them)."""
    from peft import PrefixTuningConfig, get_peft_model

    base = gpt2_lm()
    for hidden in (None, 16):
        kw = {"prefix_projection": True, "encoder_hidden_size": hidden} if hidden else {}
        hf = get_peft_model(copy.deepcopy(base), PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=P, **kw))
        ours = pl.prefix.apply(copy.deepcopy(base),
                               pl.prefix.PrefixConfig(P, projection_hidden=hidden))
        assert pl.trainable_report(ours).trainable == hf.get_nb_trainable_parameters()[0]
    hf = get_peft_model(copy.deepcopy(base),
                        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P))
    ours = pl.prefix.apply(copy.deepcopy(base), pl.prefix.PrefixConfig(P))
    W = hf.prompt_encoder["default"].embedding.weight.detach()     # (P, L*2*hidden)
    kv = W.view(P, 2 * 2, 4, 8).permute(1, 2, 0, 3)              # (L*2, H, P, D): k0 v0 k1 v1
    with torch.no_grad():
        ours.prefix_encoder.key.copy_(kv[0::2])
        ours.prefix_encoder.value.copy_(kv[1::2])
        ids = IDS[:1]
        ref = hf(input_ids=ids).logits
        got = ours(input_ids=ids, position_ids=torch.arange(P, P + ids.shape[1])[None]).logits
    assert torch.allclose(got, ref, atol=1e-5)


def test_prompt_matches_hf_peft_gpt2():
    from peft import PromptTuningConfig, get_peft_model

    base = gpt2_lm()
    hf = get_peft_model(copy.deepcopy(base), PromptTuningConfig(task_type="CAUSAL_LM",
                                                                  num_virtual_tokens=P))
    ours = pl.prompt.apply(copy.deepcopy(base), pl.prompt.PromptConfig(num_virtual_tokens=P))
    assert pl.trainable_report(ours).trainable == hf.get_nb_trainable_parameters()[0]
    with torch.no_grad():
        ours.prompt_encoder.weight.copy_(hf.prompt_encoder["default"].embedding.weight)
        ref = hf(input_ids=IDS, attention_mask=MASK).logits[:, P:]   # PEFT keeps prompt rows
        got = ours(input_ids=IDS, attention_mask=MASK).logits
    assert torch.allclose(got * MASK[..., None], ref * MASK[..., None], atol=1e-5)


# --- generation, projection, init -----------------------------------------------------------

@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[2]], ids=["prefix", "prompt"])
def test_generate_with_cache_equals_full_forwards(config):
    base = gpt2_lm()
    model = apply(copy.deepcopy(base), pl.prompt.PromptConfig(P, init="normal")
                  if config.method == "prompt" else copy.deepcopy(config))
    ids = torch.tensor([[3, 4, 5]])
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    cached = model.generate(ids, **kw)
    uncached = model.generate(ids, use_cache=False, **kw)
    manual = ids
    with torch.no_grad():
        for _ in range(6):  # greedy decoding by full forward passes, no cache at all
            manual = torch.cat([manual, model(input_ids=manual).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(cached, uncached) and torch.equal(cached, manual)
    assert torch.equal(cached, model.generate(ids, **kw))                # deterministic
    kw.update(output_scores=True, return_dict_in_generate=True)
    scores = torch.stack(model.generate(ids, **kw).scores)
    assert not torch.allclose(scores, torch.stack(base.generate(ids, **kw).scores))  # not the base


def test_fold_keeps_outputs(tiny_bert):
    model = pl.prefix.apply(tiny_bert, pl.prefix.PrefixConfig(P, projection_hidden=16))
    with torch.no_grad():
        before = model(input_ids=IDS, attention_mask=MASK).logits
    pl.prefix.fold(model)
    assert pl.core.get_config(model).projection_hidden is None
    assert pl.trainable_report(model).trainable == 2 * 2 * P * 32 + 66
    with torch.no_grad():
        assert torch.allclose(model(input_ids=IDS, attention_mask=MASK).logits, before, atol=1e-6)


def test_init_text(embedded):
    model, tok = embedded
    pl.prompt.apply(model, pl.prompt.PromptConfig(4, init="text", init_text="great film"),
                    tokenizer=tok)
    ids = tok("great film", add_special_tokens=False)["input_ids"]
    emb = model.get_input_embeddings().weight
    assert torch.equal(model.prompt_encoder.weight, emb[[ids[i % len(ids)] for i in range(4)]])
    assert model.prompt_encoder.start == 1  # encoder: the prompt goes after [CLS]


def test_prefix_init_text_is_the_models_own_keys(embedded):
    model, tok = embedded
    base = copy.deepcopy(model)
    pl.prefix.apply(model, pl.prefix.PrefixConfig(2, init="text", init_text="good"), tokenizer=tok)
    good = tok("good", add_special_tokens=False)["input_ids"]
    x = base.bert.embeddings(input_ids=torch.tensor([good * 2]))
    k0 = base.bert.encoder.layer[0].attention.self.key(x).view(1, 2, 12, 32).transpose(1, 2)[0]
    assert torch.allclose(model.prefix_encoder.key[0], k0, atol=1e-5)


def test_attention_to_prefix(tiny_bert, embedded):
    model, tok = embedded
    for config in (pl.prefix.PrefixConfig(4), pl.prompt.PromptConfig(4)):
        m = apply(copy.deepcopy(model), config)
        d = pl.prefix.attention_to_prefix(m, tok, "a fine day")
        T = len(d["tokens"])
        assert d["attention"].shape == (6, 12, T, 4)
        assert ((d["prefix_mass"] > 0) & (d["prefix_mass"] <= 1 + 1e-6)).all()
        assert m.config._attn_implementation != "eager" or config.method == "prompt"


# --- save / load and errors -----------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS, ids=IDS_CFG)
def test_save_load_roundtrip(tiny_bert, tmp_path, config):
    fresh = copy.deepcopy(tiny_bert)
    model = apply(tiny_bert, copy.deepcopy(config))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
        want = model(input_ids=IDS, attention_mask=MASK).logits
    pl.save_adapter(model, tmp_path / "a")
    pl.load_adapter(fresh, tmp_path / "a")
    assert pl.core.get_method(fresh) == config.method
    with torch.no_grad():
        assert torch.allclose(fresh(input_ids=IDS, attention_mask=MASK).logits, want, atol=1e-6)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS_CFG)
def test_load_onto_other_shape_raises_and_changes_nothing(tiny_bert, tmp_path, config):
    from transformers import BertConfig, BertForSequenceClassification

    pl.save_adapter(apply(tiny_bert, copy.deepcopy(config)), tmp_path / "a")
    other = BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=2))
    before = state(other)
    with pytest.raises(AdapterError, match="does not fit"):
        pl.load_adapter(other, tmp_path / "a")
    assert same_state(before, state(other)) and pl.core.get_method(other) is None


@pytest.mark.parametrize("bad", [0, -2, True, 2.5])
def test_bad_length_raises(bad):
    for cls in (pl.prefix.PrefixConfig, pl.prompt.PromptConfig):
        with pytest.raises(ValueError, match="num_virtual_tokens"):
            cls(num_virtual_tokens=bad)


def test_unsupported_models_raise_and_change_nothing(tiny_mlp, tiny_bert):
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32,
                                             num_layers=1, num_heads=2))
    for model, err, msg in [(tiny_mlp, TypeError, "transformers model"),
                            (t5, TypeError, "encoder-decoder")]:
        for config in (pl.prefix.PrefixConfig(P), pl.prompt.PromptConfig(P)):
            before = state(model)
            with pytest.raises(err, match=msg):
                apply(model, config)
            assert same_state(before, state(model)) and pl.core.get_method(model) is None
    tiny_bert.config._attn_implementation_internal = "flex_attention"
    before = state(tiny_bert)
    with pytest.raises(ValueError, match="set_attn_implementation"):
        pl.prefix.apply(tiny_bert, pl.prefix.PrefixConfig(P))
    assert same_state(before, state(tiny_bert)) and not hasattr(tiny_bert, "prefix_encoder")
    with pytest.raises(ValueError, match="tokenizer"):
        pl.prompt.apply(gpt2_lm(), pl.prompt.PromptConfig(P, init="text", init_text="hi"))


def test_apply_twice_raises(tiny_bert):
    pl.prefix.apply(tiny_bert, pl.prefix.PrefixConfig(P))
    before = state(tiny_bert)
    with pytest.raises(AlreadyAdaptedError):
        pl.prompt.apply(tiny_bert, pl.prompt.PromptConfig(P))
    assert same_state(before, state(tiny_bert))


def test_prompt_hf_peft_format_both_ways(tmp_path):
    from peft import PeftModel

    base = gpt2_lm()
    ours = pl.prompt.apply(copy.deepcopy(base), pl.prompt.PromptConfig(P, init="normal"))
    pl.save_adapter(ours, tmp_path / "hf", format="hf-peft")
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "hf").eval()
    back = pl.load_adapter(copy.deepcopy(base), tmp_path / "hf")
    with torch.no_grad():
        want = ours(input_ids=IDS, attention_mask=MASK).logits * MASK[..., None]
        got = theirs(input_ids=IDS, attention_mask=MASK).logits[:, P:] * MASK[..., None]
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.allclose(back(input_ids=IDS, attention_mask=MASK).logits * MASK[..., None],
                              want, atol=1e-6)


def test_hf_peft_export_refused_where_it_would_differ(tiny_bert, tmp_path):
    pl.prompt.apply(tiny_bert, pl.prompt.PromptConfig(P))   # prompt after [CLS], trained head
    with pytest.raises(AdapterError, match="format='peftlab'"):
        pl.save_adapter(tiny_bert, tmp_path / "x", format="hf-peft")
    lm = pl.prefix.apply(gpt2_lm(), pl.prefix.PrefixConfig(P))
    with pytest.raises(AdapterError, match="position"):
        pl.save_adapter(lm, tmp_path / "y", format="hf-peft")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_other_architectures_gqa_llama_and_roberta_head():
    """Llama's grouped-query attention: prefixes have kv_heads (2), not heads (4). RoBERTa's
    classifier is a two-layer head (classifier.dense, classifier.out_proj): both train."""
    import transformers as tf

    torch.manual_seed(0)
    llama = tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
        eos_token_id=2)).eval()
    pl.prefix.apply(llama, pl.prefix.PrefixConfig(P))
    assert tuple(llama.prefix_encoder.key.shape) == (2, 2, P, 8)       # (L, kv_heads, P, D)
    assert pl.trainable_report(llama).trainable == 2 * 2 * P * (2 * 8)
    check_padding_invariance(llama, token_level=True)
    kw = {"max_new_tokens": 4, "do_sample": False}
    assert torch.equal(llama.generate(IDS[:1], **kw), llama.generate(IDS[:1], use_cache=False, **kw))
    roberta = tf.RobertaForSequenceClassification(tf.RobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, pad_token_id=0)).eval()
    pl.prompt.apply(roberta, pl.prompt.PromptConfig(P))
    assert pl.core.get_targets(roberta) == ["classifier.dense", "classifier.out_proj"]
    assert pl.trainable_report(roberta).trainable == P * 32 + (32 * 32 + 32) + (32 * 2 + 2)
    check_padding_invariance(roberta, token_level=False)


# --- unloading: hooks and state are removed; attention functions stay registered ------------

def _registered(name):
    from transformers import AttentionInterface, AttentionMaskInterface
    return name in AttentionInterface() and name in AttentionMaskInterface()


def test_prefix_unload_gives_the_base_model_back(tiny_bert):
    from peftlab.prefix.wiring import ATTN_PREFIX

    ids = torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        before = tiny_bert(input_ids=ids, attention_mask=mask).logits
    impl = tiny_bert.config._attn_implementation
    n_hooks = len(tiny_bert._forward_pre_hooks)
    pl.prefix.apply(tiny_bert, pl.prefix.PrefixConfig(4))
    assert _registered(ATTN_PREFIX + "sdpa") and len(tiny_bert._forward_pre_hooks) == n_hooks + 1
    pl.prefix.unload(tiny_bert)
    assert pl.core.get_method(tiny_bert) is None and not hasattr(tiny_bert, "prefix_encoder")
    assert tiny_bert.config._attn_implementation == impl
    assert len(tiny_bert._forward_pre_hooks) == n_hooks
    assert not any(hasattr(m, "peftlab_prefix") for m in tiny_bert.modules())
    # registered once, never taken out (issue 25): the unloaded model just no longer calls them
    assert _registered(ATTN_PREFIX + "sdpa") and _registered(ATTN_PREFIX + "eager")
    with torch.no_grad():
        assert torch.equal(tiny_bert(input_ids=ids, attention_mask=mask).logits, before)


def test_probe_registers_nothing_temporary_and_leaves_the_model_as_it_was(tiny_bert):
    from transformers import AttentionInterface

    from peftlab.prefix.wiring import ATTN_PROBE

    impl = tiny_bert.config._attn_implementation
    pl.prefix.probe(tiny_bert)
    names = set(AttentionInterface())
    pl.prefix.probe(tiny_bert)
    assert set(AttentionInterface()) == names and _registered(ATTN_PROBE + impl)
    assert tiny_bert.config._attn_implementation == impl
    assert not any(hasattr(m, "peftlab_probe") for m in tiny_bert.modules())


def test_a_copy_of_a_prefix_model_works_after_the_original_is_unloaded(tiny_bert):
    pl.prefix.apply(tiny_bert, pl.prefix.PrefixConfig(4))
    twin = copy.deepcopy(tiny_bert)
    ids = torch.tensor([[1, 5, 7, 2]])
    with torch.no_grad():
        want = tiny_bert(input_ids=ids).logits
    pl.prefix.unload(tiny_bert)
    with torch.no_grad():
        assert torch.allclose(twin(input_ids=ids).logits, want)


def test_prompt_unload_removes_its_hooks(tiny_bert):
    ids = torch.tensor([[1, 5, 7, 2]])
    with torch.no_grad():
        before = tiny_bert(input_ids=ids).logits
    emb = tiny_bert.get_input_embeddings()
    counts = (len(tiny_bert._forward_pre_hooks), len(tiny_bert._forward_hooks),
              len(emb._forward_hooks))
    pl.prompt.apply(tiny_bert, pl.prompt.PromptConfig(3, init="normal"))
    assert len(emb._forward_hooks) == counts[2] + 1
    pl.prompt.unload(tiny_bert)
    assert (len(tiny_bert._forward_pre_hooks), len(tiny_bert._forward_hooks),
            len(emb._forward_hooks)) == counts
    assert pl.core.get_method(tiny_bert) is None and not hasattr(tiny_bert, "prompt_encoder")
    with torch.no_grad():
        assert torch.equal(tiny_bert(input_ids=ids).logits, before)


def test_prefix_attention_is_the_exercise_reference():
    """The pure function against a hand-written softmax attention over [prefix ; text]."""
    g = torch.Generator().manual_seed(0)
    B, H, T, D, P = 2, 3, 5, 4, 2
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    pk, pv = torch.randn(H, P, D, generator=g), torch.randn(H, P, D, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    K, V = torch.cat([pk.expand(B, -1, -1, -1), k], 2), torch.cat([pv.expand(B, -1, -1, -1), v], 2)
    visible = torch.cat([torch.ones(B, P, dtype=torch.bool), mask.bool()], 1)[:, None, None]
    scores = (q @ K.transpose(-1, -2) / D ** 0.5).masked_fill(~visible, float("-inf"))
    want = scores.softmax(-1) @ V
    assert torch.allclose(pl.prefix.prefix_attention(q, k, v, pk, pv, mask), want, atol=1e-6)


def test_insert_prompt_places_the_prompt_and_opens_the_mask():
    x = torch.arange(2 * 3 * 2, dtype=torch.float).view(2, 3, 2)
    z = torch.full((2, 2), -1.0)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out, m = pl.prompt.insert_prompt(x, z, mask, start=1)
    assert out.shape == (2, 5, 2) and torch.equal(out[:, 1:3], z.expand(2, -1, -1))
    assert torch.equal(out[:, 0], x[:, 0]) and torch.equal(out[:, 3:], x[:, 1:])
    assert m.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


# --- models users bring: static caches, 4-D masks, vocab init, heads, attention switches ------

def _llama_lm():
    import transformers as tf

    torch.manual_seed(0)
    return tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
        eos_token_id=2)).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_static_cache_generation_equals_uncached(arch, method):
    """generate(cache_implementation="static") failed with prompt tuning (the cache generate
    sizes has no room for the prompt, and the 4-D mask it builds was not extended)."""
    model = gpt2_lm() if arch == "gpt2" else _llama_lm()
    config = pl.prefix.PrefixConfig(P) if method == "prefix" else \
        pl.prompt.PromptConfig(P, init="normal")
    apply(model, config)
    ids = torch.tensor([[3, 4, 5, 6], [0, 0, 7, 8]])               # left padding
    mask = (ids != 0).long()
    kw = {"attention_mask": mask, "max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    want = model.generate(ids, use_cache=False, **kw)
    assert torch.equal(model.generate(ids, cache_implementation="static", **kw), want)
    assert torch.equal(model.generate(ids, **kw), want)


def _mask_4d(mask2d, causal):
    """The (B, 1, T, T) bool mask equivalent to a 2-D padding mask (and causal)."""
    T = mask2d.shape[1]
    m = mask2d.bool()[:, None, None, :].expand(-1, 1, T, T)
    return m & torch.ones(T, T, dtype=torch.bool).tril() if causal else m


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_prompt_extends_4d_masks_like_2d_ones(tiny_bert, arch):
    """A 4-D mask reaches the model unchanged by the prompt hook (a shape error or a wrong
    mask); it must give what the 2-D mask gives."""
    model = tiny_bert if arch == "bert" else gpt2_cls()
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():                                     # the model itself agrees
        want = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(model(input_ids=ids, attention_mask=_mask_4d(
            mask, arch == "gpt2")).logits, want, atol=1e-5, rtol=0)
    pl.prompt.apply(model, pl.prompt.PromptConfig(P, init="normal"))
    for four_d in (_mask_4d(mask, arch == "gpt2"),
                   torch.where(_mask_4d(mask, arch == "gpt2"), 0.0, torch.finfo(torch.float32).min)):
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids, attention_mask=four_d).logits,
                                       model(input_ids=ids, attention_mask=mask).logits,
                                       atol=1e-5, rtol=0)


def test_vocab_init_draws_distinct_frequent_words(embedded):
    """init="vocab" drew ids below 5000, which in BERT's WordPiece vocabulary are [PAD],
    [unusedN] and single characters; now the first 5,000 word tokens (Lester et al.)."""
    from peftlab.prompt.surgery import vocab_candidates

    model, tok = embedded
    cands = vocab_candidates(model, tok)
    words = tok.convert_ids_to_tokens(cands.tolist())
    assert len(cands) == 5000 and words[0] == "the"
    assert not set(cands.tolist()) & set(tok.all_special_ids)
    assert all(len(w.replace("##", "")) > 1 and not w.startswith("[") for w in words)
    pl.prompt.apply(model, pl.prompt.PromptConfig(20, init="vocab", seed=3), tokenizer=tok)
    emb = model.get_input_embeddings().weight
    rows = [int(torch.nonzero((emb == r).all(dim=1))[0]) for r in model.prompt_encoder.weight]
    assert len(set(rows)) == 20 and set(rows) <= set(cands.tolist())
    with pytest.warns(UserWarning, match="without tokenizer="):
        pl.prompt.apply(gpt2_lm(), pl.prompt.PromptConfig(4))


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_unload_puts_back_the_trained_head(tiny_bert, method):
    before = state(tiny_bert)
    config = pl.prefix.PrefixConfig(P) if method == "prefix" else \
        pl.prompt.PromptConfig(P, init="normal")
    apply(tiny_bert, config)
    with torch.no_grad():
        tiny_bert.classifier.weight.add_(1.0)                 # as training would
    getattr(pl, method).unload(tiny_bert)
    assert same_state(tiny_bert.state_dict(), before)


def test_prefix_survives_set_attn_implementation(tiny_bert):
    """After apply, model.set_attn_implementation(...) silently dropped the prefix."""
    ids = torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        base = tiny_bert(input_ids=ids, attention_mask=mask).logits
    pl.prefix.apply(tiny_bert, pl.prefix.PrefixConfig(P))
    with torch.no_grad():
        want = tiny_bert(input_ids=ids, attention_mask=mask).logits
        assert not torch.allclose(want, base)
        for impl in ("eager", "sdpa"):
            tiny_bert.set_attn_implementation(impl)
            got = tiny_bert(input_ids=ids, attention_mask=mask).logits
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    tiny_bert.config._attn_implementation_internal = "flex_attention"
    with pytest.raises(ValueError, match="cannot take a prefix"):
        tiny_bert(input_ids=ids)


def test_prompt_and_prefix_are_fp32_on_a_bf16_base(tiny_bert):
    for config in (pl.prefix.PrefixConfig(P), pl.prompt.PromptConfig(P, init="normal")):
        model = copy.deepcopy(tiny_bert).to(torch.bfloat16)
        apply(model, config)
        assert all(p.dtype == torch.float32 for n, p in model.named_parameters()
                   if n.startswith(("prefix_encoder", "prompt_encoder")))
        out = model(input_ids=IDS, attention_mask=MASK).logits
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
