"""Datasets that ship in `data/`, and user CSV files, behind one function.

    ds = pl.data.load_dataset()                    # default: sentiment_contrast
    ds.train.texts[:3], ds.train.labels[:3]
    loader = ds.train.loader(tokenizer, batch_size=32, shuffle=True, seed=0)
    ds = pl.data.load_dataset("my_reviews.csv")    # a user CSV with columns text,label

A user CSV becomes a DatasetSplits too: with one file we split it 80/10/10 (seeded); with a
folder holding train.csv / validation.csv / test.csv we use those files as they are.
"""

from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

DEFAULT_DATASET = "sentiment_contrast"


def data_dir() -> Path:
    """The repository's data/ folder ($PEFTLAB_DATA overrides, e.g. for a non-editable install)."""
    env = os.environ.get("PEFTLAB_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file and line."""


@dataclass
class TextSplit:
    """One split: parallel lists of texts and integer labels."""

    texts: list[str]
    labels: list[int]
    name: str = "split"

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i):
        return self.texts[i], self.labels[i]

    def subset(self, n: int, seed: int = 0) -> "TextSplit":
        """A seeded random subset of n examples (all of them if n >= len)."""
        idx = list(range(len(self)))
        random.Random(seed).shuffle(idx)
        idx = sorted(idx[:n])
        return TextSplit([self.texts[i] for i in idx], [self.labels[i] for i in idx], self.name)

    def loader(self, tokenizer, batch_size: int = 32, shuffle: bool = False, seed: int = 0,
               max_length: int = 32) -> torch.utils.data.DataLoader:
        """A DataLoader of dicts {input_ids, attention_mask, labels}, padded per batch."""
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
    train: TextSplit
    validation: TextSplit
    test: TextSplit
    name: str = ""
    label_names: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return max(max(s.labels) for s in (self.train, self.validation, self.test)) + 1

    def __repr__(self) -> str:
        return (f"DatasetSplits({self.name!r}: train={len(self.train)}, "
                f"validation={len(self.validation)}, test={len(self.test)}, "
                f"labels={self.label_names or self.num_labels})")


SHIPPED = {
    "sentiment_contrast": ["negative", "positive"],
}


def read_csv(path: str | Path, name: str = "split") -> TextSplit:
    """Read a CSV with a header `text,label` (label an int >= 0). Errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file.")
    texts, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetError(f"{path}: the file is empty; expected a header line "
                               f"'text,label' and one row per example.") from None
        header = [h.strip().lower() for h in header]
        if "text" not in header or "label" not in header:
            raise DatasetError(f"{path}, line 1: the header is {header!r}; it must name the "
                               f"columns 'text' and 'label'.")
        ti, li = header.index("text"), header.index("label")
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                raise DatasetError(f"{path}, line {line}: expected {len(header)} fields "
                                   f"({','.join(header)}), found {len(row)}: {row!r}. Quote "
                                   f"texts that contain commas.")
            text, label = row[ti], row[li].strip()
            if not text.strip():
                raise DatasetError(f"{path}, line {line}: the text is empty.")
            try:
                lab = int(label)
            except ValueError:
                raise DatasetError(f"{path}, line {line}: label {label!r} is not an integer "
                                   f"class id (0, 1, ...).") from None
            if lab < 0:
                raise DatasetError(f"{path}, line {line}: label {lab} is negative.")
            texts.append(text)
            labels.append(lab)
    if not texts:
        raise DatasetError(f"{path}: the file has a header but no examples.")
    return TextSplit(texts, labels, name)


def load_dataset(name: str | Path | None = None, seed: int = 0) -> DatasetSplits:
    """Load a shipped dataset by name (default: sentiment_contrast) or a user CSV / folder."""
    name = DEFAULT_DATASET if name is None else name
    if str(name) in SHIPPED:
        folder = data_dir() / str(name)
        if not folder.is_dir():
            raise DatasetError(f"Shipped dataset folder {folder} is missing: run peftlab from "
                               f"a clone of the repository, or set PEFTLAB_DATA to its data/.")
        splits = {s: read_csv(folder / f"{s}.csv", s) for s in ("train", "validation", "test")}
        return DatasetSplits(**splits, name=str(name), label_names=SHIPPED[str(name)])
    path = Path(name)
    if path.is_dir():
        files = {s: path / f"{s}.csv" for s in ("train", "validation", "test")}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise DatasetError(f"{path} is a folder but lacks {', '.join(missing)}; a dataset "
                               f"folder holds train.csv, validation.csv and test.csv.")
        return DatasetSplits(**{s: read_csv(p, s) for s, p in files.items()}, name=path.name)
    if path.suffix.lower() == ".csv" or path.exists():
        full = read_csv(path, "all")
        if len(full) < 10:
            raise DatasetError(f"{path}: {len(full)} examples are too few to split 80/10/10; "
                               f"provide at least 10, or a folder with train/validation/test.csv.")
        idx = list(range(len(full)))
        random.Random(seed).shuffle(idx)
        n_val = n_test = max(1, len(idx) // 10)
        parts = {"test": idx[:n_test], "validation": idx[n_test:n_test + n_val],
                 "train": idx[n_test + n_val:]}
        splits = {s: TextSplit([full.texts[i] for i in sorted(ix)],
                               [full.labels[i] for i in sorted(ix)], s)
                  for s, ix in parts.items()}
        return DatasetSplits(**splits, name=path.stem)
    raise DatasetError(f"Unknown dataset {str(name)!r}: shipped datasets are "
                       f"{', '.join(SHIPPED)}; or pass the path of a CSV file (text,label) "
                       f"or of a folder with train.csv, validation.csv and test.csv.")
