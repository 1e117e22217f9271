"""No hidden state in prefix and prompt tuning (issue 25): no private transformers attribute
in the library, attention functions registered once and never taken out, no module-global
mutable state, and prompt tuning's per-call record cleared even when a forward pass raises."""

from __future__ import annotations

import copy
import gc
import importlib
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import peftlab as pl

ROOT = Path(pl.__file__).parent
PRIVATE = ("_global_mapping", "_attn_implementation_internal", "_can_set_attn_implementation")
IDS = torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0]])
MASK = (IDS != 0).long()


def gpt2_lm():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                                      n_positions=64, bos_token_id=1, eos_token_id=2)).eval()


def llama_lm():
    import transformers as tf

    torch.manual_seed(0)
    return tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
        eos_token_id=2)).eval()


def logits(model, **kw):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK, **kw).logits


def test_the_library_touches_no_private_transformers_attribute():
    found = {f"{p.relative_to(ROOT)}: {name}" for p in ROOT.rglob("*.py")
             for name in PRIVATE if name in p.read_text(encoding="utf-8")}
    assert not found, found


@pytest.mark.parametrize("module", ["peftlab.core.hf", "peftlab.prefix.wiring",
                                    "peftlab.prefix.surgery", "peftlab.prompt.hooks",
                                    "peftlab.prompt.surgery"])
def test_no_module_global_mutable_state(module):
    """Only constants at module level: no set of users, no cache, no pending flag."""
    import weakref

    mod = importlib.import_module(module)
    mutable = (set, dict, list, weakref.WeakSet, weakref.WeakKeyDictionary,
               weakref.WeakValueDictionary)
    found = [n for n, v in vars(mod).items() if not n.startswith("__")
             and not isinstance(v, (types.ModuleType, type)) and isinstance(v, mutable)]
    assert not found, found


def test_a_prefix_model_and_its_copy_outlive_the_unloaded_original():
    """The copy names the same registered attention functions; unloading and collecting the
    original (the last 'user' of the old bookkeeping) must not take them away."""
    import weakref

    from transformers import AttentionInterface, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=2)).eval()
    pl.prefix.apply(model, pl.prefix.PrefixConfig(4))
    want = logits(model)
    twin = copy.deepcopy(model)
    names = set(AttentionInterface())
    pl.prefix.unload(model)
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None                                   # the original is collected
    assert set(AttentionInterface()) == names               # and nothing was unregistered
    torch.testing.assert_close(logits(twin), want, atol=0, rtol=0)
    grandchild = copy.deepcopy(twin)
    torch.testing.assert_close(logits(grandchild), want, atol=0, rtol=0)
    pl.prefix.unload(twin)
    torch.testing.assert_close(logits(grandchild), want, atol=0, rtol=0)


@pytest.mark.parametrize("make", [gpt2_lm, llama_lm], ids=["gpt2", "llama"])
def test_cached_generation_with_a_prefix_equals_full_forwards(make):
    model = pl.prefix.apply(make(), pl.prefix.PrefixConfig(3))
    ids = torch.tensor([[3, 4, 5]])
    out = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0,
                         output_scores=True, return_dict_in_generate=True)   # the KV cache
    manual = ids
    with torch.no_grad():
        for _ in range(6):                                      # no cache at all
            manual = torch.cat([manual, model(input_ids=manual, use_cache=False)
                                .logits[:, -1:].argmax(-1)], 1)
        full = model(out.sequences[:, :-1], use_cache=False).logits[:, ids.shape[1] - 1:]
    assert torch.equal(out.sequences, manual)
    torch.testing.assert_close(torch.stack(out.scores, 1), full, atol=1e-5, rtol=0)


def _raise(*_):
    raise RuntimeError("boom")


@pytest.mark.parametrize("where", ["before the embeddings", "after the embeddings"])
def test_a_forward_that_raises_leaves_no_prompt_state(tiny_bert, where):
    """prompt tuning's record of the pass in progress (pe.call) is cleared by the hook that
    ends the pass even when the pass raises: no stale "swap" for a later direct call of the
    embedding layer, no stale length for the next pass."""
    model = pl.prompt.apply(tiny_bert, pl.prompt.PromptConfig(3, init="normal"))
    want = logits(model)
    emb = model.get_input_embeddings()
    layer = model.bert.embeddings if where == "before the embeddings" else \
        model.bert.encoder.layer[0]
    handle = layer.register_forward_pre_hook(_raise)
    with pytest.raises(RuntimeError, match="boom"):
        logits(model)
    handle.remove()
    assert model.prompt_encoder.call is None
    ids = torch.arange(10)[None]
    with torch.no_grad():
        assert torch.equal(emb(ids), F.embedding(ids, emb.weight))   # a plain lookup
    torch.testing.assert_close(logits(model), want, atol=0, rtol=0)
    assert model.prompt_encoder.call is None


def test_the_prompt_record_lives_for_one_pass(tiny_bert):
    model = pl.prompt.apply(tiny_bert, pl.prompt.PromptConfig(3, init="normal"))
    seen = []
    h = model.bert.encoder.register_forward_pre_hook(
        lambda *_: seen.append(copy.copy(model.prompt_encoder.call)))
    logits(model)
    h.remove()
    assert seen[0].length == IDS.shape[1] + 3 and not seen[0].swap   # swapped, once
    assert model.prompt_encoder.call is None


# --- no class changed at run time, anywhere in the library --------------------------------------

CLASS_WRITES = (r"type\([^()]*\)\.\w+\s*=(?!=)",       # type(owner).forward = ...
                r"\.__class__\s*=(?!=)",                # obj.__class__ = ...
                r"__bases__",                           # reading a class's bases to find a method
                r"setattr\(type\(")                     # setattr(type(obj), ...)


def test_no_class_is_patched_at_run_time():
    import re
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
            for p in sorted(ROOT.rglob("*.py"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if any(re.search(pat, line) for pat in CLASS_WRITES)]
    assert hits == []


def test_the_class_patch_grep_finds_what_it_looks_for():
    import re
    for line in ("type(owner).forward = sparse_forward", "mod.__class__ = type('X', (), {})",
                 "base = type(self).__bases__[0]", "setattr(type(m), 'f', g)"):
        assert any(re.search(pat, line) for pat in CLASS_WRITES), line
    assert not any(re.search(pat, 'if type(e).__name__ == "Broken":') for pat in CLASS_WRITES)
