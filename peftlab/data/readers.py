"""Reading your own data: CSV / TSV / JSON Lines files, a pandas DataFrame, a Hugging Face
`datasets.Dataset`, each with text and label columns you name.

    split = read_table("reviews.csv", text_column="review", label_column="topic")
    split = from_table(df, text_column="review", label_column="topic")       # pandas
    split = from_table(hf_dataset, text_column="sentence", label_column="label")

Each gives a TextSplit. Labels may be integer ids or names (see peftlab/data/labels.py).
Every error names the file and line (or the row) and how to fix it.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from peftlab.data.labels import encode_labels
from peftlab.data.splits import DatasetError, TextSplit

SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")


def read_text(path: Path, error=DatasetError) -> str:
    """The file as text: UTF-8, a leading byte-order mark dropped. Anything else (UTF-16, a
    Latin-1 export, a binary file) is refused with the file, the byte and the fix."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        kind = " (it looks like UTF-16: it starts with a UTF-16 byte-order mark)" \
            if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise error(f"{path}, line {line}: not UTF-8 text{kind}: byte 0x{data[e.start]:02x} at "
                    f"offset {e.start} cannot be decoded. Save the file as UTF-8 (in Excel: "
                    f"'CSV UTF-8'; or iconv -f latin1 -t utf-8).") from None


def _column(header: list[str], wanted: str, path, kind: str) -> int:
    """Index of column `wanted` in header: exact match first, then ignoring case/spaces."""
    if wanted in header:
        return header.index(wanted)
    folded = [h.strip().lower() for h in header]
    if wanted.strip().lower() in folded:
        return folded.index(wanted.strip().lower())
    if not any(folded):
        raise DatasetError(f"{path}, line 1: the first line is empty; it must be the header "
                           f"naming the columns, e.g. '{wanted},...'.")
    raise DatasetError(f"{path}, line 1: the header is {header!r}; it has no {kind} column "
                       f"{wanted!r}. Name the columns that hold the texts and labels: "
                       f"text_column=/label_column= (on the command line --text-column/"
                       f"--label-column), e.g. text_column={header[0]!r}.")


def _make_split(texts, raw_labels, where, name, label_names) -> TextSplit:
    for t, w in zip(texts, where):
        if t is None or (isinstance(t, float) and t != t):
            raise DatasetError(f"{w}: the text is missing.")
        if not isinstance(t, str):
            raise DatasetError(f"{w}: the text is {t!r}, not a string.")
        if not t.strip():
            raise DatasetError(f"{w}: the text is empty.")
    ids, names = encode_labels(raw_labels, label_names, where)
    return TextSplit(list(texts), ids, name, names)


def read_csv(path: str | Path, name: str = "split", text_column: str = "text",
             label_column: str = "label", label_names: list[str] | None = None) -> TextSplit:
    """Read a CSV (or .tsv) file with a header row naming text_column and label_column.

    Labels: integer class ids, or names (mapped to ids in sorted order, or by label_names
    when given). Quote texts that contain the delimiter. Errors name the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file.")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    texts, labels, where = [], [], []
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetError(f"{path}: the file is empty; expected a header line "
                               f"naming the text and label columns (e.g. 'text,label') and "
                               f"one row per example.") from None
        except csv.Error as e:
            raise DatasetError(f"{path}, line 1: not readable as CSV: {e}.") from None
        header = [h.strip() for h in header]
        ti = _column(header, text_column, path, "text")
        li = _column(header, label_column, path, "label")
        try:
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(header):
                    raise DatasetError(f"{path}, line {line}: expected {len(header)} fields "
                                       f"({delimiter.join(header)}), found {len(row)}: "
                                       f"{row!r}. Quote texts that contain "
                                       f"{'tabs' if delimiter == chr(9) else 'commas'}.")
                texts.append(row[ti])
                labels.append(row[li])
                where.append(f"{path}, line {line}")
        except csv.Error as e:
            raise DatasetError(f"{path}, line {reader.line_num}: not readable as CSV: "
                               f"{e}.") from None
    if not texts:
        raise DatasetError(f"{path}: the file has a header but no examples.")
    return _make_split(texts, labels, where, name, label_names)


def read_jsonl(path: str | Path, name: str = "split", text_column: str = "text",
               label_column: str = "label", label_names: list[str] | None = None) -> TextSplit:
    """Read JSON Lines (one object per line, e.g. {"text": "...", "label": "food"}), or a
    .json file holding a list of such objects."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file.")
    raw = read_text(path)
    if not raw.strip():
        raise DatasetError(f"{path}: the file is empty; expected one JSON object per line, "
                           f"e.g. {{\"{text_column}\": \"...\", \"{label_column}\": \"...\"}}.")
    rows: list[tuple[int, object]] = []
    if path.suffix.lower() == ".json" and raw.lstrip().startswith("["):
        try:
            items = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}, line {e.lineno}: not valid JSON: {e.msg}.") from None
        rows = [(i, obj) for i, obj in enumerate(items)]
        at = "item"
    else:
        at = "line"
        for i, line in enumerate(raw.split("\n"), start=1):   # not splitlines: U+2028 is text
            if not line.strip():
                continue
            try:
                rows.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}, line {i}: not valid JSON ({e.msg}); a JSON Lines "
                                   f"file holds one object per line.") from None
    texts, labels, where = [], [], []
    for i, obj in rows:
        w = f"{path}, {at} {i}"
        if not isinstance(obj, dict):
            raise DatasetError(f"{w}: expected a JSON object, found {type(obj).__name__}.")
        for key, kind in ((text_column, "text"), (label_column, "label")):
            if key not in obj:
                raise DatasetError(f"{w}: no {kind} key {key!r} (keys: {', '.join(obj)}); "
                                   f"name it with {kind}_column= (--{kind}-column).")
        if isinstance(obj[label_column], (list, dict, bool)):
            raise DatasetError(f"{w}: the label is {json.dumps(obj[label_column])[:60]}; a label "
                               f"is a name (\"food\") or an integer class id (0, 1, ...).")
        texts.append(obj[text_column])
        labels.append(obj[label_column])
        where.append(w)
    if not texts:
        raise DatasetError(f"{path}: the file holds no examples.")
    return _make_split(texts, labels, where, name, label_names)


def read_table(path: str | Path, name: str = "split", text_column: str = "text",
               label_column: str = "label", label_names: list[str] | None = None) -> TextSplit:
    """Read a data file by its suffix: .csv / .tsv (read_csv), .jsonl / .ndjson / .json
    (read_jsonl)."""
    path = Path(path)
    suffix = path.suffix.lower()
    kwargs = dict(name=name, text_column=text_column, label_column=label_column,
                  label_names=label_names)
    if suffix in (".csv", ".tsv"):
        return read_csv(path, **kwargs)
    if suffix in (".jsonl", ".ndjson", ".json"):
        return read_jsonl(path, **kwargs)
    raise DatasetError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; peftlab reads "
                       f"{', '.join(SUFFIXES)}.")


# --- in-memory tables ---------------------------------------------------------------------------

def is_dataframe(obj) -> bool:
    """True for a pandas DataFrame (checked without importing pandas)."""
    return type(obj).__module__.split(".")[0] == "pandas" and hasattr(obj, "columns")


def is_hf_dataset(obj) -> bool:
    """True for a Hugging Face datasets.Dataset (checked without importing datasets)."""
    return hasattr(obj, "column_names") and hasattr(obj, "features") and \
        isinstance(getattr(obj, "column_names"), list)


def from_table(table, name: str = "split", text_column: str = "text",
               label_column: str = "label", label_names: list[str] | None = None) -> TextSplit:
    """A TextSplit from a pandas DataFrame or a Hugging Face datasets.Dataset.

    A pandas categorical label column keeps its category order as the label names; a
    datasets ClassLabel column keeps its names.
    """
    if is_dataframe(table):
        columns = [str(c) for c in table.columns]
        kind = "DataFrame"
    elif is_hf_dataset(table):
        columns = list(table.column_names)
        kind = "Dataset"
    else:
        raise DatasetError(f"Cannot read a {type(table).__name__}: pass a file path, a pandas "
                           f"DataFrame or a Hugging Face datasets.Dataset.")
    for col, what in ((text_column, "text"), (label_column, "label")):
        if col not in columns:
            raise DatasetError(f"The {kind} has no {what} column {col!r} (columns: "
                               f"{', '.join(columns)}); pass {what}_column=.")
    if len(table) == 0:
        raise DatasetError(f"The {kind} has no rows.")
    texts = list(table[text_column])
    if kind == "DataFrame":
        series = table[label_column]
        labels = series.tolist()
        where = [f"DataFrame row {i!r}" for i in table.index]
        if label_names is None and str(getattr(series, "dtype", "")) == "category":
            label_names = [str(c) for c in series.cat.categories]
    else:
        labels = list(table[label_column])
        where = [f"Dataset row {i}" for i in range(len(table))]
        feature = table.features.get(label_column) if hasattr(table.features, "get") else None
        if label_names is None and getattr(feature, "names", None):
            label_names = list(feature.names)
    return _make_split(texts, labels, where, name, label_names)
