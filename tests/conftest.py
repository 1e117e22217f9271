"""Shared fixtures: tiny models built from configs (fast, offline) and the embedded model."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def tiny_bert():
    """A 2-layer, 32-wide BERT classifier built from a config: (model, vocab_size)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(cfg).eval()


@pytest.fixture
def tiny_gpt2():
    """A 2-layer, 32-wide GPT-2 LM built from a config."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture
def tiny_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


@pytest.fixture(scope="session")
def embedded_state():
    """State dict + tokenizer of the embedded default classifier, loaded once per session."""
    import peftlab as pl

    model, tok = pl.models.text_classifier(num_labels=2, seed=0)
    return {k: v.clone() for k, v in model.state_dict().items()}, tok


@pytest.fixture
def embedded(embedded_state):
    """A fresh copy of the embedded default classifier (all-MiniLM-L6-v2 + 2-class head)."""
    import peftlab as pl

    state, tok = embedded_state
    model, _ = pl.models.text_classifier(num_labels=2, seed=0)
    model.load_state_dict(state)
    return model.eval(), tok
