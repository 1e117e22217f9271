"""Labels: names to class ids, and the class names a model carries.

Data may label its examples with integer class ids (0, 1, 2, ...) or with names ("food",
"sport"). Names become ids in sorted order (unless you pass label_names to fix the order),
and the names are kept: in the dataset (ds.label_names), in the model's config
(model.config.id2label / label2id, what transformers and pl.predict read) and in a saved
adapter's JSON.

    ids, names = encode_labels(["food", "sport", "food"])   # [0, 1, 0], ["food", "sport"]
    set_label_names(model, names)                           # model.config.id2label = {0: "food", ...}
    check_num_labels(model, ds)                             # a clear error if the head's size differs
"""

from __future__ import annotations

import math
import numbers
import re

from torch import nn

from peftlab.data.splits import DatasetError

_INT = re.compile(r"^[+-]?\d+$")


class LabelError(DatasetError):
    """Labels that cannot be turned into class ids; the message names the example."""


def _as_int(value):
    """The value as an int if it is an integer id (7, "7", 7.0), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT.match(value.strip()):
        return int(value.strip())
    return None


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        (isinstance(value, str) and not value.strip())


def encode_labels(values: list, label_names: list[str] | None = None,
                  where: list[str] | None = None) -> tuple[list[int], list[str]]:
    """(class ids, label names) for raw label values.

    Without label_names: integer values (1, "1") are class ids and names stay []; string
    values are names, numbered in sorted order; a mix of both is an error. With label_names:
    a value that is one of the names gets its index, an integer id in range is kept, anything
    else is an error naming the example ("unknown label"). where[i] says where value i comes
    from ("my.csv, line 7") for the messages.
    """
    where = where or [f"example {i}" for i in range(len(values))]
    for i, v in enumerate(values):
        if _is_missing(v):
            raise LabelError(f"{where[i]}: the label is missing.")
    if label_names:
        index = {str(n): i for i, n in enumerate(label_names)}
        ids = []
        for i, v in enumerate(values):
            key = str(v).strip() if isinstance(v, str) else str(v)
            if key in index:
                ids.append(index[key])
                continue
            n = _as_int(v)
            if n is not None and 0 <= n < len(label_names):
                ids.append(n)
                continue
            raise LabelError(f"{where[i]}: unknown label {v!r}; the model knows "
                             f"{len(label_names)} labels: {', '.join(map(str, label_names))}.")
        return ids, [str(n) for n in label_names]
    as_int = [_as_int(v) for v in values]
    if all(n is not None for n in as_int):
        for i, n in enumerate(as_int):
            if n < 0:
                raise LabelError(f"{where[i]}: label {n} is negative; class ids are 0, 1, ...")
        return as_int, []
    if any(n is not None for n in as_int):
        i_int = next(i for i, n in enumerate(as_int) if n is not None)
        i_str = next(i for i, n in enumerate(as_int) if n is None)
        raise LabelError(f"Labels mix integer class ids and names: {where[i_int]} has "
                         f"{values[i_int]!r}, {where[i_str]} has {values[i_str]!r}. Use names "
                         f"everywhere or integer ids (0, 1, ...) everywhere.")
    names = sorted({str(v).strip() for v in values})
    index = {n: i for i, n in enumerate(names)}
    return [index[str(v).strip()] for v in values], names


# --- the labels a model carries ----------------------------------------------------------------

_DEFAULT_NAME = re.compile(r"^LABEL_\d+$")


def label_names_of(model: nn.Module) -> list[str]:
    """The class names in model.config.id2label, or [] when it holds only transformers'
    placeholders (LABEL_0, LABEL_1, ...) or the model has no config."""
    cfg = getattr(model, "config", None)
    id2label = getattr(cfg, "id2label", None) if cfg is not None else None
    if not id2label:
        return []
    try:
        names = [str(id2label[i]) for i in range(len(id2label))]
    except KeyError:
        names = [str(id2label[str(i)]) for i in range(len(id2label))]
    if all(_DEFAULT_NAME.match(n) for n in names):
        return []
    return names


def set_label_names(model: nn.Module, names: list[str]) -> None:
    """Write class names into model.config.id2label / label2id (a transformers model).
    Checks first that the model's head has len(names) outputs."""
    names = [str(n) for n in names]
    n = model_num_labels(model)
    if n is not None and n != len(names):
        raise LabelError(f"The model's head has {n} outputs but {len(names)} label names were "
                         f"given ({', '.join(names)}).")
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "id2label"):
        raise LabelError(f"{type(model).__name__} has no transformers config to hold label "
                         f"names; pass label_names= to pl.predict instead.")
    cfg.id2label = dict(enumerate(names))
    cfg.label2id = {name: i for i, name in enumerate(names)}


def model_num_labels(model: nn.Module) -> int | None:
    """Outputs of the model's classification head: config.num_labels for a transformers
    classifier, else the out_features of its head (`fc`, `classifier`, ...); None if unknown."""
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "num_labels") and "Classification" in type(model).__name__:
        return int(cfg.num_labels)
    from peftlab.core.heads import default_heads
    heads = default_heads(model)
    if len(heads) == 1:
        linears = [m for m in model.get_submodule(heads[0]).modules()
                   if isinstance(m, nn.Linear)]
        if linears:
            return linears[-1].out_features
    return None


def check_num_labels(model: nn.Module, data) -> None:
    """Raise LabelError if the data and the model's head disagree on the number of classes
    (named labels: their count must equal the head's outputs; ids: each must be below it).

    data: DatasetSplits, a TextSplit, or a list of class ids.
    """
    n_model = model_num_labels(model)
    if n_model is None:
        return
    splits = [getattr(data, s) for s in ("train", "validation", "test")] \
        if hasattr(data, "train") else [data]
    for split in splits:
        labels = split.labels if hasattr(split, "labels") else list(split)
        names = getattr(split, "label_names", None) or getattr(data, "label_names", None) or []
        top = max(labels) if labels else -1
        if (names and len(names) != n_model) or top >= n_model:
            what = f"{len(names)} labels ({', '.join(names)})" if names else \
                f"class ids up to {top}"
            n_data = len(names) if names else top + 1
            raise LabelError(
                f"The data has {what} but the model's head has {n_model} outputs. Build the "
                f"model for this data, e.g. pl.models.text_classifier(num_labels={n_data}).")
