"""peftlab.core: target matching rules, errors that list what exists, replace / freeze helpers."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import peftlab as pl
from peftlab.core.errors import AlreadyAdaptedError, TargetError
from peftlab.core.heads import head_names, is_head
from peftlab.core.layers import AdapterLayer
from peftlab.core.state import ensure_plain, mark, unmark
from peftlab.core.targets import (
    describe_modules,
    find_targets,
    freeze,
    replace_module,
    unfreeze_modules,
)

Q0 = "bert.encoder.layer.0.attention.self.query"


def test_suffix_matches_at_dot_boundary_only(tiny_bert):
    assert find_targets(tiny_bert, ["query"]) == [Q0, Q0.replace(".0.", ".1.")]
    # "dense" is a suffix of several modules; "ense" is not a whole name component
    assert len(find_targets(tiny_bert, "dense")) == 2 * 3 + 1
    with pytest.raises(TargetError):
        find_targets(tiny_bert, ["ense"])


def test_multi_component_suffix_and_exact_name(tiny_bert):
    assert find_targets(tiny_bert, ["attention.output.dense"]) == [
        f"bert.encoder.layer.{i}.attention.output.dense" for i in range(2)]
    assert find_targets(tiny_bert, [Q0]) == [Q0]


def test_regex_string_and_compiled_fullmatch(tiny_bert):
    assert find_targets(tiny_bert, ["re:.*layer\\.0\\..*(query|value)"]) == [
        Q0, Q0.replace("query", "value")]
    assert find_targets(tiny_bert, [re.compile(r".*\.1\.attention\.self\.key")]) == [
        "bert.encoder.layer.1.attention.self.key"]
    # fullmatch: a pattern for part of the name does not match
    with pytest.raises(TargetError):
        find_targets(tiny_bert, ["re:query"])


def test_type_target_and_mixed_list_in_model_order(tiny_bert):
    emb = find_targets(tiny_bert, [nn.Embedding])
    assert emb == ["bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings",
                   "bert.embeddings.token_type_embeddings"]
    mixed = find_targets(tiny_bert, ["value", nn.Embedding, "value"])   # duplicates collapse
    assert mixed[:3] == emb and len(mixed) == 5


def test_all_linear_excludes_head(tiny_bert):
    names = find_targets(tiny_bert, "all-linear")
    assert "classifier" not in names and "bert.pooler.dense" in names
    assert len(names) == 2 * 6 + 1
    assert all(isinstance(tiny_bert.get_submodule(n), nn.Linear) for n in names)


def test_all_linear_on_gpt2_takes_conv1d_not_lm_head(tiny_gpt2):
    names = find_targets(tiny_gpt2, "all-linear")
    assert "lm_head" not in names
    assert {n.rsplit(".", 1)[1] for n in names} == {"c_attn", "c_proj", "c_fc"}
    assert len(names) == 2 * 4


def test_unknown_target_lists_names_and_types_and_changes_nothing(tiny_bert):
    before = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    with pytest.raises(TargetError) as e:
        pl.lora.apply(tiny_bert, pl.lora.LoraConfig(r=2, targets=["query", "q_proj"]))
    msg = str(e.value)
    assert "'q_proj' matched no module of BertForSequenceClassification" in msg
    assert "query (x2)" in msg and "Linear (x" in msg and "Embedding" in msg
    assert all(torch.equal(v, tiny_bert.state_dict()[k]) for k, v in before.items())
    assert not any(isinstance(m, AdapterLayer) for m in tiny_bert.modules())


def test_bad_spec_kinds(tiny_mlp):
    with pytest.raises(TargetError, match="neither a name"):
        find_targets(tiny_mlp, [3])
    with pytest.raises(TargetError, match="at least one target"):
        find_targets(tiny_mlp, [])
    with pytest.raises(TargetError, match="valid regular expression"):
        find_targets(tiny_mlp, ["re:[0"])


def test_allowed_types_name_the_culprit(tiny_bert):
    with pytest.raises(TargetError, match=r"can wrap Linear .*LayerNorm"):
        find_targets(tiny_bert, ["LayerNorm"], allowed=(nn.Linear,), method="X")


def test_adapted_modules_are_not_targets_again(tiny_bert):
    pl.lora.apply(tiny_bert, pl.lora.LoraConfig(r=2, targets=["query"]))
    # the wrapper itself: a clear error; its children (base_layer, lora_A) are never matched
    with pytest.raises(AlreadyAdaptedError, match="already wrapped by a peftlab lora layer"):
        find_targets(tiny_bert, ["query"])
    assert Q0 + ".base_layer" not in find_targets(tiny_bert, [nn.Linear])
    assert not any(".lora_" in n for n in find_targets(tiny_bert, [nn.Linear]))


def test_ensure_plain_mark_unmark(tiny_mlp):
    ensure_plain(tiny_mlp, "lora")
    mark(tiny_mlp, "lora", None, ["0"])
    assert pl.core.get_method(tiny_mlp) == "lora" and pl.core.get_targets(tiny_mlp) == ["0"]
    with pytest.raises(AlreadyAdaptedError, match="'lora' again"):
        ensure_plain(tiny_mlp, "lora")
    with pytest.raises(AlreadyAdaptedError, match="applying 'prefix'"):
        ensure_plain(tiny_mlp, "prefix")
    unmark(tiny_mlp)
    ensure_plain(tiny_mlp, "lora")
    assert "peftlab_method" not in tiny_mlp.state_dict()          # marks are not tensors


def test_replace_freeze_unfreeze(tiny_bert):
    new = nn.Linear(32, 32)
    old = replace_module(tiny_bert, Q0, new)
    assert isinstance(old, nn.Linear) and tiny_bert.get_submodule(Q0) is new
    freeze(tiny_bert)
    assert not any(p.requires_grad for p in tiny_bert.parameters())
    assert unfreeze_modules(tiny_bert, ["classifier"]) == ["classifier"]
    assert [n for n, p in tiny_bert.named_parameters() if p.requires_grad] == [
        "classifier.weight", "classifier.bias"]
    with pytest.raises(TargetError, match="matched no module"):
        unfreeze_modules(tiny_bert, ["head_that_is_not_there"])


def test_heads(tiny_bert, tiny_gpt2, tiny_mlp):
    assert head_names(tiny_bert) == ["classifier"]
    assert head_names(tiny_gpt2) == ["lm_head"]        # via get_output_embeddings too
    assert head_names(tiny_mlp) == []
    assert is_head("classifier.out_proj") and not is_head("bert.pooler.dense")


def test_describe_modules_is_short(tiny_bert):
    text = describe_modules(tiny_bert, limit=3)
    assert text.startswith("module names end in:") and "more" in text and "Linear" in text


# --- the one head rule (tied LM heads) -----------------------------------------------------------

def test_default_heads_never_include_a_tied_lm_head(tiny_gpt2, tiny_bert):
    from peftlab.core.heads import default_heads, tied_heads

    assert tiny_gpt2.lm_head.weight is tiny_gpt2.transformer.wte.weight   # tied
    assert "lm_head" in head_names(tiny_gpt2)
    assert default_heads(tiny_gpt2) == []
    assert tied_heads(tiny_gpt2) == {"lm_head": "transformer.wte.weight"}
    assert default_heads(tiny_bert) == ["classifier"]


@pytest.mark.parametrize("method", ["adalora", "selection", "full-head", "full-bitfit", "lora"])
def test_no_method_trains_a_tied_lm_head_by_default(tiny_gpt2, method):
    wte = tiny_gpt2.transformer.wte.weight
    if method == "adalora":
        pl.adalora.apply(tiny_gpt2, pl.adalora.AdaLoraConfig(init_r=4, target_r=2,
                                                             targets=["c_attn"], total_steps=10))
    elif method == "lora":
        pl.lora.apply(tiny_gpt2, pl.lora.LoraConfig(r=2, targets=["c_attn"]))
    elif method == "selection":
        batch = {"input_ids": torch.randint(0, 100, (4, 8)), "labels": torch.zeros(4, 8).long()}

        def lm_loss(model, b):
            return model(input_ids=b["input_ids"], labels=b["input_ids"]).loss
        pl.selection.apply(tiny_gpt2, pl.selection.SelectionConfig(fraction=0.01),
                           batches=[batch], loss_fn=lm_loss)
    else:
        mode = method.split("-")[1]
        with pytest.raises(ValueError, match="tied embeddings"):
            pl.full.apply(tiny_gpt2, pl.full.FullConfig(mode=mode))
        assert pl.core.get_method(tiny_gpt2) is None
        pl.full.apply(tiny_gpt2, pl.full.FullConfig(mode=mode, modules_to_save=["ln_f"]))
    assert not wte.requires_grad
    assert "lm_head" not in (pl.core.get_config(tiny_gpt2).modules_to_save or [])


# --- method state ---------------------------------------------------------------------------------

def test_method_state_is_one_explicit_attribute(tiny_mlp):
    from peftlab.core.state import MethodState, method_state

    pl.lora.apply(tiny_mlp, pl.lora.LoraConfig(r=2, targets=["0"], modules_to_save=[]))
    state = method_state(tiny_mlp)
    assert isinstance(state, MethodState) and state.method == "lora" and state.targets == ["0"]
    assert not any(k.startswith("peftlab_") and k != "peftlab_state" for k in vars(tiny_mlp))
    assert "peftlab_state" not in "".join(tiny_mlp.state_dict())
    pl.lora.unload(tiny_mlp)
    assert method_state(tiny_mlp) is None and not hasattr(tiny_mlp, "peftlab_state")


def test_eval_mode_restores_the_mode_even_on_error(tiny_mlp):
    from peftlab.core.state import eval_mode

    tiny_mlp.train()
    with pytest.raises(RuntimeError):
        with eval_mode(tiny_mlp):
            assert not tiny_mlp.training
            raise RuntimeError("boom")
    assert tiny_mlp.training and all(m.training for m in tiny_mlp.modules())
