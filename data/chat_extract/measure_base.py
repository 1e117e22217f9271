"""Measure the base SmolLM2-135M-Instruct on the chat_extract test split: greedy answers
(max_new_tokens = the longest reference + 8), the default short system prompt, scored by
peftlab.chat.scoring (normalised exact match, per field, per category).

    python data/chat_extract/measure_base.py        # from the repository root
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import peftlab as pl
from peftlab.chat.scoring import evaluate

HERE = Path(__file__).resolve().parent


def main() -> None:
    t0 = time.perf_counter()
    model, tok = pl.models.chat_model()
    ds = pl.data.load_dataset(HERE)
    with open(HERE / "test.jsonl", encoding="utf-8") as f:
        cats = [json.loads(line)["category"] for line in f]
    out = evaluate(model, tok, ds.test, categories=cats, examples=5)
    out.pop("generated")
    out["wall_s"] = time.perf_counter() - t0
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
