"""Chat models: instruction data with answer-only loss, and generation.

    peftlab/data/template.py   ChatTemplate: the tokenizer's chat template, the system prompt,
                               the loss mask (which tokens are the answer)
    peftlab/data/chat.py       ChatSplit (conversations, left-padded answer-only batches),
                               reading JSONL / DataFrames / HF Datasets, load_chat_dataset
    generate.py                pl.generate: batched, KV-cached, with adapters (one per row),
                               and score(): exact match of greedy answers on a ChatSplit
    scoring.py                 normalised exact match and field-by-field scores
                               ("key=value; ..." answers), evaluate(): generate, then score

The data side lives in pl.data (pl.data.load_dataset("chat.jsonl") reads conversations);
this package re-exports it, so everything chat is also pl.chat.*:

    model, tokenizer = pl.models.chat_model()
    ds = pl.data.load_dataset("my_chat.jsonl")          # {"messages": [...]} or prompt/response
    pl.lora.apply(model, pl.lora.LoraConfig(r=8, alpha=16, targets="all-linear"))
    pl.train.fit(model, ds.train, ds.validation, tokenizer=tokenizer, batch_size=8, lr=2e-3)
    pl.generate(model, tokenizer, "Extract the city: I flew to Oslo.")
"""

from peftlab.chat import scoring
from peftlab.chat.generate import Generation, decode, generate, prefill, score
from peftlab.data.chat import (
    ChatDatasetSplits,
    ChatSplit,
    chat_from_table,
    collate,
    is_chat_source,
    load_chat_dataset,
    read_chat_jsonl,
)
from peftlab.data.template import DEFAULT_SYSTEM, ChatDataError, ChatTemplate, as_messages

__all__ = ["DEFAULT_SYSTEM", "ChatDataError", "ChatDatasetSplits", "ChatSplit", "ChatTemplate",
           "Generation", "as_messages", "chat_from_table", "collate", "decode", "generate",
           "is_chat_source", "load_chat_dataset", "prefill", "read_chat_jsonl", "score", "scoring"]
