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


def _words(texts):
    import re
    return {w for t in texts for w in re.findall(r"[a-z]+", t.lower())}


def test_validation_is_held_out_like_test_and_disjoint_from_it():
    """Issue 31: validation measures what test measures (held-out words, half on held-out
    templates) with words and templates of its own, so a sweep can choose on it without
    touching test, and a setting that only fits the training templates does not score 1.0."""
    sys.path.insert(0, str(ROOT / "data"))
    import make_sentiment_contrast as gen
    val_words = set(gen.POS_ADJ_VAL + gen.NEG_ADJ_VAL) | _words(gen.NOUN_VAL)
    test_words = set(gen.POS_ADJ_TEST + gen.NEG_ADJ_TEST) | _words(gen.NOUN_TEST)
    train_words = set(gen.POS_ADJ_TRAIN + gen.NEG_ADJ_TRAIN) | _words(gen.NOUN_TRAIN)
    assert not val_words & test_words and not val_words & train_words
    ds = load_dataset()
    assert not _words(ds.validation.texts) & (test_words - train_words)   # no test word
    assert not _words(ds.test.texts) & (val_words - train_words)          # and the reverse
    assert all(_words([t]) & set(gen.POS_ADJ_VAL + gen.NEG_ADJ_VAL) for t in ds.validation.texts)
    val_t = {t for t, _, _ in gen.VALIDATION_HELD_OUT_TEMPLATES}
    test_t = {t for t, _, _ in gen.HELD_OUT_TEMPLATES}
    train_t = {t for t, _, _ in gen.TRAIN_TEMPLATES}
    assert not val_t & test_t and not val_t & train_t
    rows = _split_rows("validation")[1:]
    assert sum(r[2].endswith(gen.HELD_OUT) for r in rows) == len(rows) // 2
    for text, _, cat in rows:
        t = text.lower()
        if t.startswith(("nobody would say", "honestly,", "i would not call")):
            assert t.startswith("nobody") and cat == "negation" + gen.HELD_OUT
        if " looked " in t:
            assert cat == "expectation reversal" + gen.HELD_OUT


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


# sha256 of each split's text,label content: train and test as they were before the `category`
# column was added (issue 14), unchanged since; validation as redrawn with held-out words and
# templates of its own (issue 31; before it: adb5a1f92dc8...).
TEXT_LABEL_SHA256 = {
    "train": "990a76b9af86ee0a0fbe2ee4536bf3304cf08b0fb2e39fa075cb99f3f6abeda7",
    "validation": "8708446694259d4e3a367a63ce3b3c581fc5971c9a2d999a4674ce157ae29c3d",
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
    assert kinds["train"] == set(gen.CATEGORIES)                            # no held-out there
    assert kinds["test"] == kinds["validation"] == \
        set(gen.CATEGORIES) | {c + held for c in gen.CATEGORIES[1:]}
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


# --- your own data: columns, string labels, formats, checks ---------------------------------------

def rows_csv(path, header="sentence,topic", n=30, labels=("food", "sport", "tech")):
    lines = [header] + [f"text number {i},{labels[i % len(labels)]}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_string_labels_and_named_columns(tmp_path):
    p = rows_csv(tmp_path / "topics.csv")
    ds = load_dataset(p, text_column="sentence", label_column="topic")
    assert ds.label_names == ["food", "sport", "tech"] and ds.num_labels == 3
    assert all(s.label_names == ds.label_names for s in (ds.train, ds.validation, ds.test))
    i = ds.train.texts.index("text number 4")
    assert ds.label_names[ds.train.labels[i]] == "sport"
    fixed = load_dataset(p, text_column="sentence", label_column="topic",
                         label_names=["tech", "sport", "food"])
    assert fixed.label_names == ["tech", "sport", "food"]
    assert fixed.label_names[fixed.train.labels[i]] == "sport"
    with pytest.raises(DatasetError, match=r"no text column 'text'.*text_column="):
        load_dataset(p)
    assert "DatasetSplits('topics'" in repr(ds)


def test_jsonl_json_tsv_and_folders(tmp_path):
    import json
    rows = [{"t": f"sentence {i}", "y": ["a", "b"][i % 2]} for i in range(20)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.tsv").write_text("t\ty\n" + "".join(f"{r['t']}\t{r['y']}\n" for r in rows))
    for f in ("d.jsonl", "d.json", "d.tsv"):
        ds = load_dataset(tmp_path / f, text_column="t", label_column="y")
        assert ds.label_names == ["a", "b"] and len(ds.train) == 16, f
    (tmp_path / "bad.jsonl").write_text('{"t": "x", "y": "a"}\n{"t": "x"\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl, line 2: not valid JSON"):
        load_dataset(tmp_path / "bad.jsonl", text_column="t", label_column="y")
    (tmp_path / "nokey.jsonl").write_text('{"t": "x", "z": "a"}\n')
    with pytest.raises(DatasetError, match=r"line 1: no label key 'y'"):
        load_dataset(tmp_path / "nokey.jsonl", text_column="t", label_column="y")
    folder = tmp_path / "folder"
    folder.mkdir()
    rows_csv(folder / "train.csv", n=12)
    rows_csv(folder / "test.csv", n=6)
    ds = load_dataset(folder, text_column="sentence", label_column="topic")
    assert len(ds.test) == 6 and len(ds.validation) == 1 and len(ds.train) == 11
    (folder / "test.csv").write_text("sentence,topic\nhello,drinks\n")
    with pytest.raises(DatasetError, match=r"test.csv, line 2: unknown label 'drinks'; the "
                                           r"model knows 3 labels: food, sport, tech"):
        load_dataset(folder, text_column="sentence", label_column="topic")


def test_one_class_mixed_labels_and_unused_ids(tmp_path):
    with pytest.raises(DatasetError, match="at least two classes"):
        load_dataset(rows_csv(tmp_path / "one.csv", labels=("food",)),
                     text_column="sentence", label_column="topic")
    with pytest.raises(DatasetError, match="mix integer class ids and names"):
        load_dataset(rows_csv(tmp_path / "mix.csv", labels=("1", "food")),
                     text_column="sentence", label_column="topic")
    with pytest.warns(UserWarning, match=r"class id\(s\) \[0\] never occur"):
        ds = load_dataset(rows_csv(tmp_path / "stars.csv", labels=("1", "2", "3")),
                          text_column="sentence", label_column="topic")
    assert ds.num_labels == 4 and ds.label_names == []


class FakeFrame:
    """Enough of a pandas DataFrame for from_table (pandas is not a peftlab dependency);
    the real thing is tested below when pandas is installed."""

    __module__ = "pandas.core.frame"

    def __init__(self, cols):
        self.cols = cols
        self.columns = list(cols)
        self.index = range(len(next(iter(cols.values()))))

    def __len__(self):
        return len(self.index)

    def __getitem__(self, k):
        class Col(list):
            dtype = "object"

            def tolist(self):
                return list(self)
        return Col(self.cols[k])


class FakeDataset:
    """Enough of a Hugging Face datasets.Dataset (with a ClassLabel column) for from_table."""

    def __init__(self, cols, names):
        self.cols, self.column_names = cols, list(cols)
        self.features = {"label": type("ClassLabel", (), {"names": names})()}

    def __len__(self):
        return len(self.cols["text"])

    def __getitem__(self, k):
        return self.cols[k]


def test_dataframes_and_hf_datasets_without_the_packages():
    texts = [f"row {i}" for i in range(20)]
    ds = load_dataset(FakeFrame({"review": texts, "stars": ["good", "bad"] * 10}),
                      text_column="review", label_column="stars")
    assert ds.label_names == ["bad", "good"] and len(ds.train) == 16
    with pytest.raises(DatasetError, match="no label column 'label'"):
        load_dataset(FakeFrame({"text": texts, "stars": [0, 1] * 10}))
    hf = FakeDataset({"text": texts, "label": [0, 1] * 10}, ["neg", "pos"])
    assert load_dataset(hf).label_names == ["neg", "pos"]
    split = {"train": hf, "test": FakeDataset({"text": texts[:4], "label": [0, 1, 0, 1]},
                                              ["neg", "pos"])}
    ds = load_dataset(split)
    assert len(ds.test) == 4 and len(ds.validation) == 2 and ds.label_names == ["neg", "pos"]


def test_real_pandas_dataframe():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"text": [f"row {i}" for i in range(20)],
                       "label": pd.Categorical(["pos", "neg"] * 10, categories=["pos", "neg"])})
    ds = load_dataset(df)
    assert ds.label_names == ["pos", "neg"]          # the categorical order is kept


def test_max_length_from_the_data_and_truncation_warning(embedded_state):
    _, tok = embedded_state
    texts = ["short one"] * 199 + ["a much longer sentence " * 8]      # 1 outlier in 200
    n = pl.data.choose_max_length(tok, texts)
    assert n % 8 == 0 and n >= len(tok("short one")["input_ids"])
    lengths = pl.data.token_lengths(tok, texts)
    assert n == 8 and pl.data.truncation_share(tok, texts, n) == 0.005   # 99% fit
    assert pl.data.choose_max_length(tok, texts, percentile=100) >= max(lengths)
    split = pl.data.TextSplit(texts, [0] * 100 + [1] * 100, "train")
    with pytest.warns(UserWarning, match=r"0.5% of the train texts \(1 of 200\) are longer "
                                         r"than max_length=8"):
        split.loader(tok, max_length=8)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split.loader(tok, max_length=64)                       # nothing cut: no warning
    with pytest.warns(UserWarning, match="1 of 200"):
        split.loader(tok, max_length="auto")                   # auto = 8 here: says so too
    with pytest.raises(ValueError, match="max_length"):
        split.loader(tok, max_length=0)


def test_label_names_on_models_and_num_labels_check(tiny_bert, tiny_mlp):
    assert pl.data.label_names_of(tiny_bert) == []              # LABEL_0, LABEL_1
    pl.data.set_label_names(tiny_bert, ["neg", "pos"])
    assert tiny_bert.config.label2id == {"neg": 0, "pos": 1}
    assert pl.data.label_names_of(tiny_bert) == ["neg", "pos"]
    with pytest.raises(pl.data.LabelError, match="2 outputs but 3 label names"):
        pl.data.set_label_names(tiny_bert, ["a", "b", "c"])
    three = pl.data.TextSplit(["a", "b", "c"], [0, 1, 2], "train", ["x", "y", "z"])
    with pytest.raises(pl.data.LabelError, match="num_labels=3"):
        pl.data.check_num_labels(tiny_bert, three)
    pl.data.check_num_labels(tiny_bert, pl.data.TextSplit(["a"], [1], "t"))
    assert pl.data.model_num_labels(tiny_mlp) is None               # unknown: no check
