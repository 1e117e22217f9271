"""Soak the classification server: mixed good and bad requests from many clients for a fixed
time, on 127.0.0.1 only. Prints requests answered, answers by status, p50 / p99 latency of
the good ones and memory growth (resident set, baseline after a warm-up).

    python benchmarks/soak_serve.py                   # 60 s, 16 clients, a tiny BERT base
    python benchmarks/soak_serve.py --seconds 300 --clients 32 --embedded   # the real MiniLM

Every good request's answer is checked against the adapter's own predictions; every bad one
must come back with its status code (or 429 when the queue is full). Exit code 1 if any
answer is wrong, any request is lost, or memory grows by 10% or more.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch

import peftlab as pl
from peftlab.serve import create_app, start_background

WORDS = ["the", "film", "was", "good", "bad", "plot", "great", "dull", "movie", "fine"]
TEXTS = ["the film was good", "the plot was dull", "great movie", "the film was bad fine"]


def tiny():
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    tok = BertTokenizer(vocab={w: i for i, w in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)})

    def base():
        torch.manual_seed(0)
        return BertForSequenceClassification(BertConfig(
            vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
            num_labels=2)).eval()
    return base, tok


def embedded():
    model, tok = pl.models.text_classifier(num_labels=2, seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def base():
        m, _ = pl.models.text_classifier(num_labels=2, seed=0)
        m.load_state_dict(state)
        return m.eval()
    return base, tok


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--embedded", action="store_true", help="the embedded MiniLM base")
    args = ap.parse_args()

    torch.set_num_threads(1)
    base, tok = embedded() if args.embedded else tiny()
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    want = {}
    for seed, name in ((1, "a"), (2, "b")):
        m = pl.lora.apply(base(), pl.lora.LoraConfig(r=2, targets=["query", "value"]))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.3, generator=g)
        pl.save_adapter(m, tmp / name)
        probs = pl.predict(m.eval(), tok, TEXTS).probabilities
        want[name] = {t: probs[i].tolist() for i, t in enumerate(TEXTS)}
    model = pl.load_adapter(base(), tmp / "a", name="a")
    pl.load_adapter(model, tmp / "b", name="b")
    handle = start_background(create_app(model, tok, max_queue=args.max_queue, max_wait_ms=2))
    url = handle.url + "/v1/predict"
    mixed = [({"texts": TEXTS[:2], "adapter": "a"}, 200), ({"texts": TEXTS, "adapter": "b"}, 200),
             ({"texts": ["great movie"]}, 200), ({"texts": []}, 422), ({"texts": ["x"] * 100}, 413),
             ({"texts": ["x"], "adapter": "nope"}, 404), (b"{broken", 400), (b"\xff\xfe", 400),
             ({"texts": ["x" * 5000]}, 413), ({"texts": [1, 2]}, 422)]

    lock, log = threading.Lock(), []         # (t, expected, status, latency, correct)
    stop_at = time.monotonic() + args.warmup + args.seconds

    def client(k):
        s, j = requests.Session(), 0
        while time.monotonic() < stop_at:
            body, expect = mixed[(k * 7 + j) % len(mixed)]
            j += 1
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            t0 = time.monotonic()
            r = s.post(url, data=data, headers={"content-type": "application/json"}, timeout=60)
            dt = time.monotonic() - t0
            ok = r.status_code in (expect, 429)
            if ok and r.status_code == 200:
                rows = r.json()["predictions"]
                ok = len(rows) == len(body["texts"]) and all(
                    max(abs(x - y) for x, y in zip(p["probabilities"],
                                                   want[body.get("adapter", "a")][t])) < 1e-4
                    for t, p in zip(body["texts"], rows))
            with lock:
                log.append((t0, expect, r.status_code, dt, ok))

    start = time.monotonic()
    with ThreadPoolExecutor(args.clients) as pool:
        futures = [pool.submit(client, k) for k in range(args.clients)]
        time.sleep(args.warmup)
        baseline = rss_mb()
        for f in futures:
            f.result()
    peak_end = rss_mb()
    handle.stop()
    measured = [x for x in log if x[0] >= start + args.warmup]
    good = [x for x in measured if x[1] == 200 and x[2] == 200]
    lat = sorted(x[3] for x in good)
    wrong = [x for x in measured if not x[4]]
    growth = (peak_end - baseline) / baseline
    print(f"{len(measured)} requests answered in {args.seconds:g} s from {args.clients} clients "
          f"({len(measured) / args.seconds:.0f}/s), {len(wrong)} wrong")
    print("answers by status:", dict(sorted(Counter(x[2] for x in measured).items())))
    print("expected by status:", dict(sorted(Counter(x[1] for x in measured).items())))
    if lat:
        print(f"good requests: p50 {1000 * statistics.median(lat):.1f} ms, "
              f"p99 {1000 * lat[int(0.99 * (len(lat) - 1))]:.1f} ms")
    print(f"memory: {baseline:.0f} MB after warm-up, {peak_end:.0f} MB at the end "
          f"({100 * growth:+.1f}%)")
    return 1 if wrong or growth >= 0.10 else 0


if __name__ == "__main__":
    sys.exit(main())
