"""How many tokens to keep per text: chosen from the data instead of guessed.

Padding is per batch, so max_length matters only for the texts longer than it: they are cut.
Too small and the model never sees the end of long texts; too large and one very long text
makes its batch slow and memory-hungry. We take a high percentile of the token lengths
(99% of the texts fit), rounded up to a multiple of 8, capped by what the tokenizer's model
accepts (and 512).

    n = pl.data.choose_max_length(tokenizer, ds.train.texts)      # e.g. 40
    pl.data.truncation_share(tokenizer, ds.train.texts, n)       # e.g. 0.004
"""

from __future__ import annotations

import math

DEFAULT_PERCENTILE = 99.0
DEFAULT_CAP = 512


def token_lengths(tokenizer, texts: list[str], batch_size: int = 1000) -> list[int]:
    """Number of tokens of each text, special tokens ([CLS], [SEP], ...) included."""
    out: list[int] = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), truncation=False)
        out.extend(len(ids) for ids in enc["input_ids"])
    return out


def model_limit(tokenizer, cap: int = DEFAULT_CAP) -> int:
    """The longest input the tokenizer's model takes (tokenizer.model_max_length), at most cap.
    Tokenizers without a real limit report a huge number; cap applies then."""
    limit = getattr(tokenizer, "model_max_length", None)
    if not isinstance(limit, int) or limit <= 0 or limit > 1_000_000:
        return cap
    return min(limit, cap)


def choose_max_length(tokenizer, texts: list[str], percentile: float = DEFAULT_PERCENTILE,
                      cap: int = DEFAULT_CAP, lengths: list[int] | None = None) -> int:
    """max_length for `texts`: the `percentile` of their token lengths, rounded up to a
    multiple of 8, at least 8 and at most the model's limit (model_limit(tokenizer, cap)).

    lengths: the token lengths if already computed (token_lengths(tokenizer, texts)).
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    if lengths is None:
        lengths = token_lengths(tokenizer, texts)
    if not lengths:
        raise ValueError("choose_max_length() got no texts.")
    ordered = sorted(lengths)
    k = max(0, math.ceil(percentile / 100 * len(ordered)) - 1)   # nearest-rank percentile
    n = ordered[k]
    n = 8 * math.ceil(n / 8)
    return min(max(8, n), model_limit(tokenizer, cap))


def truncation_share(tokenizer, texts: list[str], max_length: int,
                     lengths: list[int] | None = None) -> float:
    """The fraction of `texts` longer than max_length tokens (cut when tokenized)."""
    if lengths is None:
        lengths = token_lengths(tokenizer, texts)
    if not lengths:
        return 0.0
    return sum(n > max_length for n in lengths) / len(lengths)
