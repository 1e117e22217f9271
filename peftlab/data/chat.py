"""Instruction data: conversations, the batches causal-LM training takes, and scoring by generation.

    ds = pl.data.load_dataset("chat.jsonl")          # or pl.data.load_chat_dataset(...)
    ds.train.conversations[0]                        # [{"role": "user", ...}, {"role": "assistant", ...}]
    loader = ds.train.loader(tokenizer, batch_size=8, shuffle=True, seed=0)
    pl.train.fit(model, ds.train, ds.validation, tokenizer=tokenizer)   # the same loop as ever

Each line of a JSONL file (each row of a DataFrame / HF Dataset) is one example:

    {"messages": [{"role": "system", "content": "..."},      # optional
                  {"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "Paris."}]}
    {"prompt": "What is the capital of France?", "response": "Paris."}   # "system" optional

A batch (`ChatSplit.loader`) is left-padded, so every sequence ends at the right edge:

    input_ids       (B, L)  pad on the left (the pad id may be the end-of-turn id: harmless,
                            because what is learned comes from the template, never from ids)
    attention_mask  (B, L)  0 on padding
    position_ids    (B, L)  0, 1, 2, ... from each sequence's first real token, so a padded
                            row computes exactly what it computes alone
    labels          (B, K)  next-token targets, already shifted: labels[:, j] is the token that
                            logit j (of the last K) must predict, -100 where nothing is learned
    logits_to_keep  K       the model computes logits for the last K positions only

Answer-only logits: the answers sit at the end of every left-padded row, so only the last K
positions (K = the longest answer span in the batch + 1) need the vocabulary projection, a
(B, K, 49,152) tensor instead of (B, L, 49,152); prompt tuning's virtual tokens, inserted at
the start, do not move the end. The loss (peftlab/core/batches.py) is cross-entropy over the
supervised targets: the same number as transformers' own shifted loss over full logits.
"""

from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from peftlab.data.template import DEFAULT_SYSTEM, ChatDataError, ChatTemplate, as_messages

CHAT_KEYS = ("messages", "prompt")


@dataclass
class ChatSplit:
    """One split of conversations.

    conversations: each a list of {"role", "content"} messages ending, for training, with an
    assistant turn. name: the split's name, used in messages. system: the system prompt put
    before conversations without one (DEFAULT_SYSTEM; None: the template's default).
    supervise: "all" assistant turns are learned, or only the "last".
    """

    conversations: list[list[dict]]
    name: str = "split"
    system: str | None = DEFAULT_SYSTEM
    supervise: str = "all"
    _encoded: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, i):
        return self.conversations[i]

    @property
    def texts(self) -> list[list[dict]]:      # what pl.train.fit looks for in a split
        return self.conversations

    def subset(self, n: int, seed: int = 0) -> "ChatSplit":
        """A seeded random subset of n conversations (all of them if n >= len)."""
        idx = sorted(random.Random(seed).sample(range(len(self)), min(n, len(self))))
        return ChatSplit([self.conversations[i] for i in idx], self.name, self.system,
                         self.supervise)

    def template(self, tokenizer) -> ChatTemplate:
        return ChatTemplate(tokenizer, system=self.system, supervise=self.supervise)

    def encode(self, tokenizer) -> list[tuple[list[int], list[bool]]]:
        """(ids, supervised) per conversation (computed once per tokenizer)."""
        key = (id(tokenizer), self.system, self.supervise)
        if key not in self._encoded:
            template = self.template(tokenizer)
            self._encoded[key] = [template.encode(c, f"{self.name} example {i}")
                                  for i, c in enumerate(self.conversations)]
        return self._encoded[key]

    def loader(self, tokenizer, batch_size: int = 8, shuffle: bool = False, seed: int = 0,
               max_length: int | str | None = "auto",
               answer_only_logits: bool = True) -> torch.utils.data.DataLoader:
        """A DataLoader of left-padded batches (see the module docstring).

        max_length: the most tokens an example may have; "auto" / None: the longest example.
        An example longer than max_length is refused (ChatDataError, with how many and the
        length that fits) rather than cut: a cut answer teaches the model to stop mid-answer
        or never. answer_only_logits=False: labels span every position and the model computes
        logits everywhere (what a standard causal-LM step does; the same loss).
        """
        rows = self.encode(tokenizer)
        longest = max(len(ids) for ids, _ in rows)
        if max_length in (None, "auto"):
            max_length = longest
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ValueError(f"max_length must be a positive int or 'auto', got {max_length!r}")
        cut = [i for i, (ids, _) in enumerate(rows) if len(ids) > max_length]
        if cut:
            raise ChatDataError(
                f"{len(cut)} of the {len(self)} {self.name} examples (e.g. example {cut[0]}) "
                f"are longer than max_length={max_length} tokens (the longest has {longest}), "
                f"so their answers would be cut off. Pass max_length={longest} or 'auto', or "
                f"shorten those examples.")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else tokenizer.eos_token_id
        g = torch.Generator()
        g.manual_seed(seed)
        return torch.utils.data.DataLoader(
            rows, batch_size=batch_size, shuffle=shuffle, generator=g,
            collate_fn=lambda b: collate(b, pad, answer_only_logits))


def collate(rows, pad: int, answer_only_logits: bool = True) -> dict:
    """Left-pad (ids, supervised) rows into one batch (see the module docstring)."""
    B, L = len(rows), max(len(ids) for ids, _ in rows)
    input_ids = torch.full((B, L), pad, dtype=torch.long)
    attention = torch.zeros((B, L), dtype=torch.long)
    supervised = torch.zeros((B, L), dtype=torch.bool)
    for i, (ids, sup) in enumerate(rows):
        n = len(ids)
        input_ids[i, L - n:] = torch.tensor(ids)
        attention[i, L - n:] = 1
        supervised[i, L - n:] = torch.tensor(sup)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    # the logit at position p predicts token p + 1
    targets = torch.full((B, L), -100, dtype=torch.long)
    targets[:, :-1] = torch.where(supervised[:, 1:], input_ids[:, 1:], -100)
    batch = {"input_ids": input_ids, "attention_mask": attention, "position_ids": positions,
             "use_cache": False}
    if answer_only_logits:
        first = int((targets != -100).any(0).nonzero()[0])   # the earliest supervised logit
        keep = L - first                                    # K: from there to the end
        batch["logits_to_keep"] = keep
        batch["labels"] = targets[:, L - keep:]
    else:
        batch["labels"] = targets
    return batch


# --- reading conversations ---------------------------------------------------------------------

def is_chat_record(record) -> bool:
    return isinstance(record, dict) and any(k in record for k in CHAT_KEYS)


def _first_record(path: Path):
    from peftlab.data.readers import read_text

    try:
        text = read_text(path, ChatDataError)
    except ChatDataError:            # not UTF-8: not chat data; the table reader says why
        return None
    for line in text.split("\n"):
        if line.strip():
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def is_chat_source(source) -> bool:
    """Whether `source` (a path, a DataFrame, a Dataset, a dict of splits) holds chat data:
    JSON Lines records / columns named "messages", or "prompt" (with "response")."""
    from peftlab.data.readers import is_dataframe, is_hf_dataset

    if isinstance(source, dict) and "train" in source:
        return is_chat_source(source["train"])
    if is_dataframe(source) or is_hf_dataset(source):
        cols = list(source.columns) if is_dataframe(source) else list(source.column_names)
        return "messages" in cols or ("prompt" in cols and "response" in cols)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            path = next((path / f"train{x}" for x in (".jsonl", ".ndjson")
                         if (path / f"train{x}").is_file()), path)
        if path.is_file() and path.suffix.lower() in (".jsonl", ".ndjson"):
            return is_chat_record(_first_record(path))
    return False


def read_chat_jsonl(path: str | Path, name: str = "split", **kw) -> ChatSplit:
    """Conversations from a JSON Lines file: one {"messages": [...]} or {"prompt", "response"}
    object per line. Errors name the file and line."""
    from peftlab.data.readers import read_text

    path = Path(path)
    if not path.is_file():
        raise ChatDataError(f"{path}: no such file.")
    convs = []
    for n, line in enumerate(read_text(path, ChatDataError).split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ChatDataError(f"{path}, line {n}: not valid JSON ({e.msg}).") from None
        convs.append(as_messages(record, f"{path}, line {n}"))
    if not convs:
        raise ChatDataError(f"{path} holds no examples.")
    return ChatSplit(convs, name, **kw)


def chat_from_table(table, name: str = "split", **kw) -> ChatSplit:
    """Conversations from a pandas DataFrame or a Hugging Face Dataset with a "messages"
    column, or "prompt" and "response" columns (and optionally "system")."""
    rows = table.to_dict("records") if hasattr(table, "to_dict") and hasattr(table, "columns") \
        else list(table)
    convs = [as_messages(dict(r), f"{name} row {i}") for i, r in enumerate(rows)]
    if not convs:
        raise ChatDataError(f"The {name} table holds no examples.")
    return ChatSplit(convs, name, **kw)


@dataclass
class ChatDatasetSplits:
    """A chat dataset: train, validation and test ChatSplits, and its name."""

    train: ChatSplit
    validation: ChatSplit
    test: ChatSplit
    name: str = ""

    def __repr__(self) -> str:
        return (f"ChatDatasetSplits({self.name!r}: train={len(self.train)}, "
                f"validation={len(self.validation)}, test={len(self.test)})")


def _split(full: ChatSplit, seed: int) -> dict:
    if len(full) < 10:
        raise ChatDataError(f"{len(full)} examples are too few to split 80/10/10; provide at "
                            f"least 10, or a folder with train/validation/test files.")
    idx = list(range(len(full)))
    random.Random(seed).shuffle(idx)
    n = max(1, len(idx) // 10)
    parts = {"test": idx[:n], "validation": idx[n:2 * n], "train": idx[2 * n:]}
    return {s: ChatSplit([full.conversations[i] for i in sorted(ix)], s, full.system,
                         full.supervise) for s, ix in parts.items()}


def load_chat_dataset(source, *, system: str | None = DEFAULT_SYSTEM, supervise: str = "all",
                      seed: int = 0) -> ChatDatasetSplits:
    """Chat data from a JSON Lines file (split 80/10/10, seeded), a folder holding
    train.jsonl (and optionally validation.jsonl, test.jsonl: missing ones carved out of train),
    a DataFrame / HF Dataset (split 80/10/10), or a dict / DatasetDict of splits.
    system / supervise: see ChatSplit."""
    from peftlab.data.readers import is_dataframe, is_hf_dataset

    if supervise not in ("all", "last"):
        raise ValueError(f"supervise must be 'all' or 'last', got {supervise!r}")
    kw = dict(system=system, supervise=supervise)

    def read(x, name):
        if isinstance(x, (str, Path)):
            return read_chat_jsonl(x, name, **kw)
        return chat_from_table(x, name, **kw)

    if isinstance(source, dict) and "train" in source:
        parts, label = dict(source), "dataset"
    elif isinstance(source, (str, Path)) and Path(source).is_dir():
        folder = Path(source)
        parts = {s: folder / f"{s}{x}" for s in ("train", "validation", "test")
                 for x in (".jsonl", ".ndjson") if (folder / f"{s}{x}").is_file()}
        label = folder.name
        if "train" not in parts:
            raise ChatDataError(f"{folder} is a folder but holds no train.jsonl.")
    elif is_dataframe(source) or is_hf_dataset(source) or isinstance(source, (str, Path)):
        label = Path(source).stem if isinstance(source, (str, Path)) else "table"
        return ChatDatasetSplits(**_split(read(source, "all"), seed), name=label)
    else:
        raise ChatDataError(f"Cannot read chat data from a {type(source).__name__}: pass a "
                            f".jsonl file, a folder, a DataFrame or a Hugging Face Dataset.")
    splits = {s: read(x, s) for s, x in parts.items()}
    missing = [s for s in ("test", "validation") if s not in splits]
    if missing:
        carved = _split(splits["train"], seed)
        if len(missing) == 1:     # keep the given split; fold the other carve back into train
            other = "validation" if missing == ["test"] else "test"
            carved["train"].conversations += carved[other].conversations
        for s in missing:
            splits[s] = carved[s]
        splits["train"] = carved["train"]
        warnings.warn(f"{label}: no {' / '.join(missing)} split given; carved 10% each out of "
                      f"train (seed {seed}).", UserWarning, stacklevel=2)
    return ChatDatasetSplits(**splits, name=label)
