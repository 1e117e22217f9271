"""Data: the datasets that ship in data/, and your own, behind one function.

    ds = pl.data.load_dataset()                    # default: sentiment_contrast
    ds.train.texts[:3], ds.train.labels[:3], ds.label_names
    loader = ds.train.loader(tokenizer, batch_size=32, shuffle=True, seed=0)

    ds = pl.data.load_dataset("reviews.csv", text_column="review", label_column="topic")
    model, tokenizer = pl.models.text_classifier(num_labels=ds.num_labels)
    pl.data.set_label_names(model, ds.label_names)  # predictions and adapters carry the names
    n = pl.data.choose_max_length(tokenizer, ds.train.texts)

Your own data: a CSV / TSV / JSON Lines file, a folder of train/validation/test files, a
pandas DataFrame or a Hugging Face Dataset (neither package is required by peftlab). Labels
may be integer ids or names; names are mapped to ids in sorted order and kept. One file is
split 80/10/10 (seeded).

    splits.py   TextSplit (texts, labels, loader), DatasetSplits, DatasetError
    readers.py  CSV / JSONL files, DataFrames and Datasets, with the columns you name
    labels.py   label names <-> ids, the names a model carries, the num_labels check
    lengths.py  token lengths and a max_length chosen from the data
    load.py     load_dataset
    chat.py     conversations for chat models: ChatSplit, load_chat_dataset (also pl.chat.*)
    template.py ChatTemplate: the chat template, the system prompt and the answer-only mask
"""

from peftlab.data.chat import ChatDatasetSplits, ChatSplit, load_chat_dataset
from peftlab.data.labels import (
    LabelError,
    check_num_labels,
    encode_labels,
    label_names_of,
    model_num_labels,
    set_label_names,
)
from peftlab.data.lengths import choose_max_length, token_lengths, truncation_share
from peftlab.data.load import (
    DATASET_ENV,
    DEFAULT_DATASET,
    SHIPPED,
    env_max_length,
    env_source,
    load_dataset,
    load_dataset_from_env,
)
from peftlab.data.readers import from_table, read_csv, read_jsonl, read_table
from peftlab.data.splits import DatasetError, DatasetSplits, TextSplit, data_dir

__all__ = ["ChatDatasetSplits", "ChatSplit", "DATASET_ENV", "DEFAULT_DATASET", "DatasetError", "DatasetSplits", "LabelError",
           "SHIPPED", "TextSplit", "check_num_labels", "choose_max_length", "data_dir",
           "encode_labels", "env_max_length", "env_source", "from_table", "label_names_of",
           "load_chat_dataset", "load_dataset", "load_dataset_from_env", "model_num_labels", "read_csv",
           "read_jsonl", "read_table", "set_label_names", "token_lengths", "truncation_share"]
