"""A split of text examples and the three splits of a dataset.

    split.texts, split.labels          parallel lists: strings and integer class ids
    split.label_names                  the class names, when the data named them
    split.loader(tokenizer, batch_size=32, shuffle=True, seed=0, max_length="auto")
"""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from peftlab.data.lengths import choose_max_length, token_lengths


def data_dir() -> Path:
    """The repository's data/ folder ($PEFTLAB_DATA overrides, e.g. for a non-editable install)."""
    env = os.environ.get("PEFTLAB_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data"


class DatasetError(ValueError):
    """The data is missing or malformed; the message names the file (and line) and the fix."""


@dataclass
class TextSplit:
    """One split: parallel lists of texts and integer class ids.

    texts: the example texts. labels: class ids 0..num_labels-1, one per text. name: the
    split's name ("train", "validation", "test"), used in messages. label_names: the class
    names when the data had string labels (label_names[id] is the name of class id).
    """

    texts: list[str]
    labels: list[int]
    name: str = "split"
    label_names: list[str] = field(default_factory=list)
    _lengths: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i):
        return self.texts[i], self.labels[i]

    def subset(self, n: int, seed: int = 0) -> "TextSplit":
        """A seeded random subset of n examples (all of them if n >= len)."""
        idx = list(range(len(self)))
        random.Random(seed).shuffle(idx)
        idx = sorted(idx[:n])
        return TextSplit([self.texts[i] for i in idx], [self.labels[i] for i in idx], self.name,
                         list(self.label_names))

    def token_lengths(self, tokenizer) -> list[int]:
        """Tokens per text, special tokens included (computed once per tokenizer)."""
        key = id(tokenizer)
        if key not in self._lengths:
            self._lengths[key] = token_lengths(tokenizer, self.texts)
        return self._lengths[key]

    def truncated(self, tokenizer, max_length: int) -> int:
        """How many texts are longer than max_length tokens (and so would be cut)."""
        return sum(n > max_length for n in self.token_lengths(tokenizer))

    def loader(self, tokenizer, batch_size: int = 32, shuffle: bool = False, seed: int = 0,
               max_length: int | str = 32) -> torch.utils.data.DataLoader:
        """A DataLoader of dicts {input_ids, attention_mask, labels}, padded per batch.

        max_length: tokens kept per text; "auto" chooses it from the texts
        (pl.data.choose_max_length). Texts longer than max_length are truncated, with a
        warning that gives their share.
        """
        if max_length == "auto":
            max_length = choose_max_length(tokenizer, self.texts, lengths=self.token_lengths(
                tokenizer))
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ValueError(f"max_length must be a positive int or 'auto', got {max_length!r}")
        cut = self.truncated(tokenizer, max_length)
        if cut:
            warnings.warn(
                f"{cut / len(self):.1%} of the {self.name} texts ({cut} of {len(self)}) are "
                f"longer than max_length={max_length} tokens and are truncated; pass "
                f"max_length='auto' (or pl.data.choose_max_length(tokenizer, texts)) to keep "
                f"more of them.", UserWarning, stacklevel=2)

        def collate(rows):
            texts, labels = zip(*rows)
            enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            enc = dict(enc)
            enc.pop("token_type_ids", None)  # all zeros for single sentences
            enc["labels"] = torch.tensor(labels, dtype=torch.long)
            return enc

        g = torch.Generator()
        g.manual_seed(seed)
        return torch.utils.data.DataLoader(list(zip(self.texts, self.labels)),
                                           batch_size=batch_size, shuffle=shuffle,
                                           collate_fn=collate, generator=g)


@dataclass
class DatasetSplits:
    """A dataset: train, validation and test TextSplits, with its name and class names.

    train / validation / test: the splits. name: the dataset's name (a shipped name or the
    file's stem). label_names: class names, label_names[id]; empty when the labels were
    integer ids with no names. num_labels (a property): len(label_names) when named, else the
    largest id + 1.
    """

    train: TextSplit
    validation: TextSplit
    test: TextSplit
    name: str = ""
    label_names: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        """Classes of the task: len(label_names) when named, else the largest id + 1."""
        if self.label_names:
            return len(self.label_names)
        return max(max(s.labels) for s in (self.train, self.validation, self.test)) + 1

    def __repr__(self) -> str:
        return (f"DatasetSplits({self.name!r}: train={len(self.train)}, "
                f"validation={len(self.validation)}, test={len(self.test)}, "
                f"labels={self.label_names or self.num_labels})")
