"""A tiny BERT classifier that comes with a real tokenizer, for export tests.

    model, tokenizer = tiny_bert_with_tokenizer()   # vocabulary of 100, the probe's words in it

Built from a config (no download): the WordPiece vocabulary holds BERT's five special tokens,
every word of pl.export.PROBE_TEXTS and filler words up to the model's 100 embeddings.
"""

from __future__ import annotations

import torch

VOCAB = 100


def tiny_vocab() -> list[str]:
    from peftlab.export import PROBE_TEXTS

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += sorted({w for t in PROBE_TEXTS for w in t.split()} - set(words))
    words += [f"word{i}" for i in range(VOCAB - len(words))]
    return words


def tiny_tokenizer(words: list[str] | None = None):
    """A BertTokenizer over `words` (default tiny_vocab())."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab={w: i for i, w in enumerate(words or tiny_vocab())})


def tiny_bert_with_tokenizer(seed: int = 0, num_labels: int = 2):
    """`(model, tokenizer)`: a 2-layer, 32-wide BertForSequenceClassification, eval mode."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)
    return BertForSequenceClassification(cfg).eval(), tiny_tokenizer()
