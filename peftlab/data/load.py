"""load_dataset: a shipped dataset by name, or your own data, as train/validation/test splits.

    ds = load_dataset()                                    # the shipped sentiment_contrast
    ds = load_dataset("reviews.csv", text_column="review", label_column="topic")
    ds = load_dataset("my_folder/")        # train.csv (+ validation.csv, test.csv) or .jsonl
    ds = load_dataset(df)                  # a pandas DataFrame
    ds = load_dataset(hf_dataset_dict)     # a Hugging Face DatasetDict (or one Dataset)

One file or table is split 80/10/10 (seeded). A folder or a DatasetDict gives its own splits;
a missing validation or test split is carved out of train (10% each, seeded).
"""

from __future__ import annotations

import json
import os
import random
import warnings
from collections.abc import Mapping
from pathlib import Path

from peftlab.data.readers import SUFFIXES, from_table, is_dataframe, is_hf_dataset, read_csv, \
    read_table
from peftlab.data.splits import DatasetError, DatasetSplits, TextSplit, data_dir

DEFAULT_DATASET = "sentiment_contrast"

SHIPPED = {
    "sentiment_contrast": ["negative", "positive"],
}
SPLITS = ("train", "validation", "test")


def _carve(full: TextSplit, parts: tuple[str, ...], seed: int) -> dict[str, TextSplit]:
    """Split `full` into train plus 10% for each name in parts (seeded)."""
    idx = list(range(len(full)))
    random.Random(seed).shuffle(idx)
    n = max(1, len(idx) // 10)
    picked, start = {}, 0
    for part in parts:              # test first, then validation: the order the split had
        picked[part] = idx[start:start + n]
        start += n
    picked["train"] = idx[start:]
    return {s: TextSplit([full.texts[i] for i in sorted(ix)], [full.labels[i] for i in sorted(ix)],
                         s, list(full.label_names)) for s, ix in picked.items()}


def _check_classes(train: TextSplit, source: str) -> None:
    classes = sorted(set(train.labels))
    if len(classes) < 2:
        only = train.label_names[classes[0]] if train.label_names else classes[0]
        raise DatasetError(f"{source}: every training example has the label {only!r}; a "
                           f"classifier needs examples of at least two classes.")
    if not train.label_names:
        unseen = [i for i in range(max(classes) + 1) if i not in classes]
        if unseen:
            warnings.warn(f"{source}: class id(s) {unseen} never occur in the training data "
                          f"(ids run 0..{max(classes)}), so the model gets {len(unseen)} "
                          f"output(s) it never learns. Renumber the labels from 0, or use "
                          f"names.", UserWarning, stacklevel=3)


def _from_parts(parts: dict, source: str, seed: int, label_names, read) -> DatasetSplits:
    """parts: {"train": x, maybe "validation": y, "test": z}; read(x, name, names) -> TextSplit."""
    train = read(parts["train"], "train", label_names)
    names = list(label_names or train.label_names)
    out = {"train": train}
    for s in ("validation", "test"):
        if s in parts:
            split = read(parts[s], s, names or None)
            if not names and split.label_names:
                raise DatasetError(f"{source}: the train split has integer labels but the {s} "
                                   f"split has names ({', '.join(split.label_names[:5])}); use "
                                   f"one kind everywhere.")
            out[s] = split
    missing = tuple(s for s in ("test", "validation") if s not in out)
    if missing:
        carved = _carve(train, missing, seed)
        out.update(carved)
    _check_classes(out["train"], source)
    for s in SPLITS:
        out[s].label_names = list(names)
    return DatasetSplits(**{s: out[s] for s in SPLITS}, name=Path(str(source)).stem,
                         label_names=names)


def _single(full: TextSplit, source: str, seed: int) -> DatasetSplits:
    if len(full) < 10:
        raise DatasetError(f"{source}: {len(full)} examples are too few to split 80/10/10; "
                           f"provide at least 10, or a folder with train/validation/test files.")
    _check_classes(full, source)
    splits = _carve(full, ("test", "validation"), seed)
    return DatasetSplits(**splits, name=Path(str(source)).stem if source else "table",
                         label_names=list(full.label_names))


_CHAT_DEFAULT = object()


def load_dataset(name=None, *, text_column: str = "text", label_column: str = "label",
                 label_names: list[str] | None = None, seed: int = 0,
                 system=_CHAT_DEFAULT, supervise: str = "all"):
    """The train/validation/test splits of a shipped dataset or of your own data.

    name: None (the default shipped dataset, sentiment_contrast), a shipped name, the path of
    a .csv / .tsv / .jsonl / .json file, a folder holding train.<ext> (and optionally
    validation.<ext>, test.<ext>), a pandas DataFrame, a Hugging Face Dataset or DatasetDict.
    text_column / label_column: the columns holding texts and labels. label_names: fixes the
    label order (names become ids by this list; default: sorted). seed: the 80/10/10 split.
    Errors (DatasetError) name the file and line: missing columns, empty files, one class
    only, labels that mix ids and names, unknown labels in validation/test.

    Chat data (JSON Lines records, or table columns, named "messages", or "prompt" and
    "response") gives a ChatDatasetSplits of conversations instead (load_chat_dataset in
    peftlab/data/chat.py; system / supervise: the system prompt and which assistant turns are
    learned, see ChatSplit).
    """
    if name is not None and not (isinstance(name, str) and name in SHIPPED):
        from peftlab.data.chat import is_chat_source, load_chat_dataset
        if is_chat_source(name):
            chat = {} if system is _CHAT_DEFAULT else {"system": system}
            return load_chat_dataset(name, seed=seed, supervise=supervise, **chat)
    kw = dict(text_column=text_column, label_column=label_column)
    if name is None or (isinstance(name, str) and name in SHIPPED):
        name = DEFAULT_DATASET if name is None else name
        folder = data_dir() / name
        if not folder.is_dir():
            raise DatasetError(f"Shipped dataset folder {folder} is missing: run peftlab from "
                               f"a clone of the repository, or set PEFTLAB_DATA to its data/.")
        splits = {s: read_csv(folder / f"{s}.csv", s) for s in SPLITS}
        for s in splits.values():
            s.label_names = list(SHIPPED[name])
        return DatasetSplits(**splits, name=name, label_names=list(SHIPPED[name]))
    if is_dataframe(name) or is_hf_dataset(name):
        return _single(from_table(name, "all", label_names=label_names, **kw), "", seed)
    if isinstance(name, Mapping) and "train" in name:     # a DatasetDict, or a dict of tables
        unknown = [k for k in name if k not in SPLITS]
        if unknown:
            raise DatasetError(f"Splits {unknown} are not train/validation/test; rename them "
                               f"(e.g. dataset_dict['validation'] = dataset_dict.pop('dev')).")
        return _from_parts(dict(name), "dataset", seed, label_names,
                           lambda t, s, n: from_table(t, s, label_names=n, **kw))
    path = Path(name)
    if path.is_dir():
        files = {}
        for s in SPLITS:
            found = [path / f"{s}{x}" for x in SUFFIXES if (path / f"{s}{x}").is_file()]
            if found:
                files[s] = found[0]
        if "train" not in files:
            raise DatasetError(f"{path} is a folder but holds no train file; a dataset folder "
                               f"holds train.csv (or .tsv/.jsonl/.json), and optionally "
                               f"validation and test files in the same format.")
        ds = _from_parts(files, str(path), seed, label_names,
                         lambda p, s, n: read_table(p, s, label_names=n, **kw))
        ds.name = path.name
        return ds
    if path.suffix.lower() in SUFFIXES or path.exists():
        return _single(read_table(path, "all", label_names=label_names, **kw), str(path), seed)
    raise DatasetError(f"Unknown dataset {str(name)!r}: shipped datasets are "
                       f"{', '.join(SHIPPED)}; or pass the path of a data file "
                       f"({', '.join(SUFFIXES)}) or of a folder with train/validation/test "
                       f"files, or a pandas DataFrame / Hugging Face Dataset.")


# --- the dataset a tool uses by default ----------------------------------------------------------

DATASET_ENV = "PEFTLAB_DATASET"


def env_source() -> dict:
    """The dataset named in $PEFTLAB_DATASET, a JSON object {"name": "my.csv",
    "text_column": ..., "label_column": ..., "label_names": [...], "max_length": 48}; {} when
    unset. `peftlab compare --data` sets it so compare (and its worker processes) train on
    the user's data."""
    raw = os.environ.get(DATASET_ENV)
    if not raw:
        return {}
    try:
        src = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DatasetError(f"${DATASET_ENV} is not valid JSON ({e.msg}): {raw!r}") from None
    if not isinstance(src, dict) or "name" not in src:
        raise DatasetError(f"${DATASET_ENV} must be a JSON object with a \"name\", got {raw!r}")
    return src


def load_dataset_from_env(seed: int = 0) -> DatasetSplits:
    """load_dataset() of the dataset in $PEFTLAB_DATASET, or of the shipped default."""
    src = env_source()
    kw = {k: src[k] for k in ("text_column", "label_column", "label_names") if k in src}
    return load_dataset(src.get("name"), seed=seed, **kw)


def env_max_length() -> int | None:
    """The max_length given in $PEFTLAB_DATASET (chosen from the data), or None."""
    return env_source().get("max_length")
