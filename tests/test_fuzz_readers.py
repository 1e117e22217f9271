"""Property-based: the data readers (CSV / TSV / JSONL / JSON, chat JSONL, chat messages)
given odd files: any encoding (UTF-8 with or without a BOM, UTF-16, Latin-1, random bytes),
NUL bytes, empty and huge fields, ragged rows, JSON of the wrong types. Each gives a split or
one DatasetError / ChatDataError that names the file, never a UnicodeDecodeError, csv.Error,
KeyError or TypeError from inside."""

from __future__ import annotations

import csv
import io
import json
import os
import traceback

import hypothesis_profile  # noqa: F401  (registers the derandomised profile)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_profile import examples

import peftlab as pl
from peftlab.data.chat import read_chat_jsonl
from peftlab.data.readers import read_csv, read_jsonl
from peftlab.data.template import ChatDataError, as_messages

PEFTLAB = os.path.dirname(pl.__file__)
ERRORS = (pl.data.DatasetError, ChatDataError)

CELL = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", " ", "food", "sport", "0", "1", "-1", "1.0", "nan", "\ufeff", "a,b",
                     'say "hi"', "line\nbreak", "\t", "\x00", "é", "\U0001F600", "\r"]),
    st.builds(lambda n: "x" * n, st.sampled_from([1000, 200_000])),    # csv's field limit: 131072
)
ENCODING = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252", "ascii"])


def check_error(e: BaseException, path) -> None:
    assert isinstance(e, ERRORS), "".join(traceback.format_exception(e))[-3000:]
    frames = traceback.extract_tb(e.__traceback__)
    assert frames and frames[-1].filename.startswith(PEFTLAB), f"{type(e).__name__}: {e}"
    if path is not None:
        assert str(path) in str(e), f"the message does not name the file: {e}"


def read(fn, path, **kw):
    try:
        return fn(path, **kw)
    except Exception as e:                       # noqa: BLE001 - the property under test
        check_error(e, path)
        return None


def encode(text: str, encoding: str) -> bytes:
    return text.encode(encoding, errors="replace")


@settings(max_examples=examples(60))
@given(header=st.one_of(st.just(["text", "label"]), st.lists(CELL, min_size=0, max_size=3)),
       rows=st.lists(st.lists(CELL, min_size=0, max_size=3), max_size=5),
       encoding=ENCODING, suffix=st.sampled_from([".csv", ".tsv"]),
       junk=st.one_of(st.just(b""), st.binary(max_size=8)))
def test_csv_gives_a_split_or_one_dataset_error(tmp_path_factory, header, rows, encoding,
                                                suffix, junk):
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t" if suffix == ".tsv" else ",")
    for r in [header, *rows]:
        w.writerow(r)
    path = tmp_path_factory.mktemp("csv") / f"data{suffix}"
    path.write_bytes(encode(buf.getvalue(), encoding) + junk)
    split = read(read_csv, path)
    if split is not None:
        assert len(split.texts) == len(split.labels) > 0
        assert all(isinstance(t, str) and t.strip() for t in split.texts)
        assert all(isinstance(i, int) and i >= 0 for i in split.labels)


JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 10 ** 20), st.floats(allow_nan=False),
              CELL),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["text", "label", "x"]), inner,
                                            max_size=3)),
    max_leaves=6)
RECORD = st.one_of(
    st.fixed_dictionaries({"text": JSON_VALUE, "label": JSON_VALUE}),
    st.fixed_dictionaries({"text": CELL, "label": st.sampled_from(["a", "b", 0, 1, 2])}),
    JSON_VALUE)


@settings(max_examples=examples(60))
@given(records=st.lists(RECORD, max_size=5), encoding=ENCODING,
       suffix=st.sampled_from([".jsonl", ".json"]), as_list=st.booleans(),
       junk=st.one_of(st.just(""), st.sampled_from(["{", "\n\n", "[1,", "\ufeff", "\x00"])))
def test_jsonl_gives_a_split_or_one_dataset_error(tmp_path_factory, records, encoding, suffix,
                                                  as_list, junk):
    if suffix == ".json" and as_list:
        text = json.dumps(records, ensure_ascii=False) + junk
    else:
        text = "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + junk
    path = tmp_path_factory.mktemp("jsonl") / f"data{suffix}"
    path.write_bytes(encode(text, encoding))
    split = read(read_jsonl, path)
    if split is not None:
        assert len(split.texts) == len(split.labels) > 0
        assert all(isinstance(r["label"], (str, int, float)) and not isinstance(r["label"], bool)
                   for r in records)                # a list or a dict is no label
        assert all(isinstance(t, str) and t.strip() for t in split.texts)


MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "bot", "",
                                                    None, 3]),
                           "content": st.one_of(CELL, JSON_VALUE)}),
    JSON_VALUE)
CHAT = st.one_of(
    st.fixed_dictionaries({"messages": st.one_of(st.lists(MESSAGE, max_size=4), JSON_VALUE)}),
    st.fixed_dictionaries({"prompt": st.one_of(CELL, JSON_VALUE)},
                          optional={"response": st.one_of(CELL, JSON_VALUE),
                                    "system": st.one_of(CELL, JSON_VALUE)}),
    JSON_VALUE)


@settings(max_examples=examples(60))
@given(records=st.lists(CHAT, max_size=4), encoding=ENCODING,
       junk=st.one_of(st.just(""), st.sampled_from(["{", "\ufeff", "\x00", "\xff"])))
def test_chat_jsonl_gives_conversations_or_one_chat_error(tmp_path_factory, records, encoding,
                                                          junk):
    text = junk + "\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    path = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    path.write_bytes(encode(text, encoding))
    split = read(read_chat_jsonl, path)
    if split is not None:
        for conv in split.conversations:
            assert conv and all(set(m) == {"role", "content"} and isinstance(m["content"], str)
                                for m in conv)


@settings(max_examples=examples(150))
@given(example=st.one_of(CHAT, st.lists(MESSAGE, max_size=4), st.text(max_size=5)))
def test_as_messages_gives_messages_or_one_chat_error(example):
    try:
        msgs = as_messages(example, "example 7")
    except Exception as e:                       # noqa: BLE001 - the property under test
        check_error(e, None)
        assert "example 7" in str(e)
        return
    assert msgs and all(m["role"] in ("system", "user", "assistant")
                        and isinstance(m["content"], str) for m in msgs)
