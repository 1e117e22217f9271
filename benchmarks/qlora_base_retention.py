"""What re-quantizing the embedded chat model to NF4 costs before any training.

    .venv/bin/python benchmarks/qlora_base_retention.py [--out notebooks/results/qlora_paired_chat]

The embedded SmolLM2-135M-Instruct ships as Q4_1 (GGUF) and is dequantized to fp32 on load;
QLoRA then rounds those weights again, to NF4. Exact match on the 33 retention questions
(data/chat_extract/retention.jsonl: questions the base answers right, so the base scores 1.0)
measures how much of the base's behaviour survives the second rounding: the base, then NF4
with the paper's setting (blocks of 64, double quantization), without double quantization, and
with blocks of 32. A zero-initialised LoRA (B = 0) changes nothing, so apply() alone is the
quantized base. Writes nf4_base_retention.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import peftlab as pl
from peftlab.chat.scoring import evaluate
from peftlab.compare.chat import chat_task
from peftlab.io.files import atomic_write

OUT = Path(__file__).resolve().parents[1] / "notebooks" / "results" / "qlora_paired_chat"
SETTINGS = [("base (Q4_1, dequantized)", None, None), ("NF4, block 64, double quant", 64, True),
            ("NF4, block 64", 64, False), ("NF4, block 32, double quant", 32, True)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    task = chat_task(0)
    rows = []
    for label, block, dq in SETTINGS:
        t0 = time.perf_counter()
        model = task.make_model()
        if block is not None:
            pl.qlora.apply(model, pl.qlora.QLoraConfig(r=8, alpha=16, targets="all-linear",
                                                       block_size=block, double_quant=dq))
        keep = evaluate(model, task.tokenizer, task.ctx["retention"], batch_size=32)
        rows.append({"setting": label, "block_size": block, "double_quant": dq,
                     "retention": keep["exact_match"], "n": keep["n"],
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
    text = json.dumps({"what": __doc__.split("\n")[0], "rows": rows}, indent=1) + "\n"
    atomic_write(a.out / "nf4_base_retention.json",
                 lambda t: Path(t).write_text(text, encoding="utf-8"))
    print(f"wrote {a.out / 'nf4_base_retention.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
