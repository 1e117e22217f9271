"""The shipped dataset: splits, sizes, balance, held-out vocabulary; user CSV files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import peftlab as pl
from peftlab.data import DatasetError, load_dataset

ROOT = Path(__file__).resolve().parent.parent


def test_default_dataset_splits_sizes_balance():
    ds = load_dataset()
    assert ds.name == "sentiment_contrast"
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (2400, 400, 800)
    assert ds.num_labels == 2 and ds.label_names == ["negative", "positive"]
    for split in (ds.train, ds.validation, ds.test):
        pos = sum(split.labels) / len(split)
        assert 0.45 <= pos <= 0.55, (split.name, pos)
        assert len(set(split.texts)) == len(split)          # no duplicates inside a split


def test_splits_do_not_overlap_and_test_vocabulary_is_held_out():
    ds = load_dataset()
    train, val, test = set(ds.train.texts), set(ds.validation.texts), set(ds.test.texts)
    assert not (train & val) and not (train & test) and not (val & test)
    sys.path.insert(0, str(ROOT / "data"))
    import make_sentiment_contrast as gen
    for adj in gen.POS_ADJ_TEST + gen.NEG_ADJ_TEST:
        assert not any(f" {adj}" in t.lower() for t in ds.train.texts), adj
    # every test sentence uses at least one held-out word
    held = gen.POS_ADJ_TEST + gen.NEG_ADJ_TEST
    assert all(any(w in t.lower() for w in held) for t in ds.test.texts)


def test_short_sentences(embedded):
    _, tok = embedded
    ds = load_dataset()
    lengths = [len(tok(t)["input_ids"]) for t in ds.train.texts[:500]]
    assert max(lengths) <= 32


def test_generator_is_deterministic(tmp_path):
    before = {s: (ROOT / "data/sentiment_contrast" / f"{s}.csv").read_bytes()
              for s in ("train", "validation", "test")}
    subprocess.run([sys.executable, str(ROOT / "data/make_sentiment_contrast.py")], check=True,
                   capture_output=True)
    after = {s: (ROOT / "data/sentiment_contrast" / f"{s}.csv").read_bytes() for s in before}
    assert before == after


# sha256 of each split's file as it was before the `category` column was added (issue 14):
# the sentences, labels and splits must stay exactly these, only the column is new.
TEXT_LABEL_SHA256 = {
    "train": "990a76b9af86ee0a0fbe2ee4536bf3304cf08b0fb2e39fa075cb99f3f6abeda7",
    "validation": "adb5a1f92dc839134bde816ad398182e2e5bba86d754062e729d4d981b56b563",
    "test": "16bb579071413b81bc825f27cceb06f4f019cfef79bb824162b871fea0afc8da",
}


def _split_rows(split):
    import csv
    with open(ROOT / "data/sentiment_contrast" / f"{split}.csv", newline="",
              encoding="utf-8") as f:
        return list(csv.reader(f))


def test_category_column_added_without_changing_sentences_labels_or_splits():
    import csv
    import hashlib
    import io
    for split, digest in TEXT_LABEL_SHA256.items():
        rows = _split_rows(split)
        assert rows[0] == ["text", "label", "category"]
        buf = io.StringIO(newline="")
        csv.writer(buf, lineterminator="\n").writerows(r[:2] for r in rows)
        assert hashlib.sha256(buf.getvalue().encode()).hexdigest() == digest, split


def test_categories_follow_the_templates():
    sys.path.insert(0, str(ROOT / "data"))
    import make_sentiment_contrast as gen
    held = gen.HELD_OUT
    kinds = {split: {r[2] for r in _split_rows(split)[1:]} for split in TEXT_LABEL_SHA256}
    assert kinds["train"] == kinds["validation"] == set(gen.CATEGORIES)     # no held-out there
    assert kinds["test"] == set(gen.CATEGORIES) | {c + held for c in gen.CATEGORIES[1:]}
    rows = _split_rows("test")[1:]
    assert sum(r[2].endswith(held) for r in rows) == len(rows) // 2  # half on held-out templates
    for text, _, cat in rows:                  # spot checks of the construction
        t = text.lower()
        if t.startswith(("i would not call", "honestly,")):
            assert cat == "negation" + held
        if t.startswith("i expected"):
            assert cat == "expectation reversal"
        if t.startswith("despite"):
            assert cat == "contrast" + held
    assert load_dataset().test.texts == [r[0] for r in rows]   # the loader reads the same file


def test_loader_batches(embedded):
    _, tok = embedded
    ds = load_dataset()
    batch = next(iter(ds.train.loader(tok, batch_size=8, shuffle=True, seed=0)))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape[0] == 8 and batch["labels"].dtype == torch.long
    again = next(iter(ds.train.loader(tok, batch_size=8, shuffle=True, seed=0)))
    assert torch.equal(batch["input_ids"], again["input_ids"])


def test_user_csv_file_is_split(tmp_path):
    p = tmp_path / "mine.csv"
    rows = ["text,label"] + [f'"sentence number {i}, with a comma",{i % 3}' for i in range(50)]
    p.write_text("\n".join(rows) + "\n")
    ds = load_dataset(p)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (40, 5, 5)
    assert ds.num_labels == 3
    assert ds.train.texts[0].startswith("sentence number")
    assert load_dataset(p).test.texts == ds.test.texts        # seeded split


def test_user_csv_folder(tmp_path):
    for s in ("train", "validation", "test"):
        (tmp_path / f"{s}.csv").write_text("text,label\nhello,0\nworld,1\n")
    ds = load_dataset(tmp_path)
    assert len(ds.train) == 2


@pytest.mark.parametrize("content,match", [
    ("text,label\nfine,1\nbroken line with,two,commas,0\n", r"line 3: expected 2 fields"),
    ("text,label\nfine,1\nstill fine,positive\n", r"line 2 has '1', .*line 3 has 'positive'"),
    ("sentence,y\nfine,1\n", r"line 1: the header"),
    ("text,label\n", r"no examples"),
    ("", r"empty"),
    ("text,label\n,1\n", r"line 2: the text is empty"),
    ("text,label\nok,-1\n", r"line 2: label -1 is negative"),
])
def test_malformed_csv_names_the_line(tmp_path, content, match):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(DatasetError, match=match) as e:
        load_dataset(p)
    assert str(p) in str(e.value)


def test_unknown_dataset_lists_shipped():
    with pytest.raises(DatasetError, match="sentiment_contrast"):
        load_dataset("imdb")


def test_public_api_reexports():
    assert pl.data.load_dataset is load_dataset
