"""Bounded load test of the chat server: 8 concurrent clients, mixed adapters, tokens per second
with continuous batching against one request at a time.

    python benchmarks/bench_chat_serve.py [--model embedded|tiny] [--clients 8] [--seconds 20]
                                          [--max-tokens 32] [--adapters 2]

Puts random LoRA adapters (all-linear, r=8) on the chat base (the embedded SmolLM2-135M-Instruct,
or the tests' tiny Llama with the real tokenizer), and serves it in this process on a free
local port twice, one after the other: continuously batched (--max-batch = clients) and one
request at a time (--max-batch 1: the others wait in the queue). Each client sends greedy chat
streamed requests (plain `requests`: the clients' own work stays small), cycling through the base
and the adapters and a few prompts, until --seconds have passed; the requests in flight then
finish. Prints completion tokens per second (usage counts), requests, time to first token,
errors (must be 0) of each, and the ratio. Everything stays on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch

import peftlab as pl
from peftlab.serve import create_chat_app, start_background

PROMPTS = ["What is the capital of France?", "Name three colours of the rainbow.",
           "Write one sentence about the sea.", "How many legs does a spider have?",
           "Give me a synonym for happy.", "What is 12 times 12?",
           "Extract the city: Anna flies to Oslo on Friday.", "Say hello in Spanish."]


def base(kind: str):
    if kind == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from chat_fixtures import tiny_chat_model
        return tiny_chat_model(seed=1)
    return pl.models.chat_model()


def with_adapters(kind: str, n: int, folder: Path):
    """The base with n random LoRA adapters loaded by name ("a0", "a1", ...)."""
    model, tok = base(kind)
    for i in range(n):
        m, _ = base(kind)
        pl.lora.apply(m, pl.lora.LoraConfig(r=8, alpha=16, targets="all-linear"))
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02 if kind != "tiny" else 0.5, generator=g)
        pl.load_adapter(model, pl.save_adapter(m, folder / f"a{i}"), name=f"a{i}")
    return model.eval(), tok


def one(session, url: str, body: dict) -> tuple[int, float]:
    """One streamed request: (completion tokens from its usage chunk, seconds to first text);
    raises on any error."""
    t0, first, used = time.perf_counter(), None, None
    with session.post(url + "/v1/chat/completions", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                used = chunk["usage"]["completion_tokens"]
    if used is None:
        raise RuntimeError("no usage chunk")
    return used, first if first is not None else time.perf_counter() - t0


def load(url: str, models: list[str], clients: int, seconds: float, max_tokens: int) -> dict:
    """clients threads, each sending requests (at least one) until `seconds` pass: tokens/s,
    time to first token, errors."""
    def client(c):
        tokens, ttft, errors, j = 0, [], 0, 0
        with requests.Session() as s:
            while j == 0 or time.perf_counter() < stop:
                body = {"model": models[(c + j) % len(models)], "temperature": 0,
                        "messages": [{"role": "user",
                                      "content": PROMPTS[(c * 3 + j) % len(PROMPTS)]}],
                        "max_tokens": max_tokens, "stream": True,
                        "stream_options": {"include_usage": True}}
                j += 1
                try:
                    used, first = one(s, url, body)
                except (requests.RequestException, RuntimeError, ValueError):
                    errors += 1
                    continue
                tokens, ttft = tokens + used, ttft + [first]
        return tokens, ttft, errors, j

    start = time.perf_counter()
    stop = start + seconds
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    ttft = [x for d in done for x in d[1]]
    return {"tokens/s": sum(d[0] for d in done) / wall, "tokens": sum(d[0] for d in done),
            "requests": sum(d[3] for d in done), "errors": sum(d[2] for d in done),
            "ttft_p50_s": statistics.median(ttft) if ttft else float("nan"), "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["embedded", "tiny"], default="embedded",
                    help="the embedded SmolLM2-135M-Instruct (default) or the tests' tiny Llama")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0, help="per server, then in-flight finish")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--adapters", type=int, default=2, help="LoRA adapters beside the base")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model, tok = with_adapters(args.model, args.adapters, Path(tmp))
    models = ["base", *pl.adapter_names(model)]
    print(f"{args.model} model ready in {time.perf_counter() - t0:.1f} s; serving {models}")
    rows = {}
    for label, max_batch in (("batched", args.clients), ("one at a time", 1)):
        app = create_chat_app(model, tok, base_name="base", max_batch=max_batch,
                              max_tokens=max(args.max_tokens, 16))
        handle = start_background(app, timeout=120)
        try:
            load(handle.url, models, 2, 0.0, 4)                  # warm-up: one request each
            rows[label] = load(handle.url, models, args.clients, args.seconds, args.max_tokens)
        finally:
            handle.stop()
    print(f"{args.clients} clients, {args.seconds:g} s each, max_tokens {args.max_tokens}, "
          f"greedy, adapters mixed ({len(models)} models), torch threads "
          f"{os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for label, r in rows.items():
        print(f"{label:>14}: {r['tokens/s']:7.1f} tokens/s  {r['tokens']:5d} tokens  "
              f"{r['requests']:4d} requests  ttft p50 {r['ttft_p50_s']:6.2f} s  "
              f"errors {r['errors']}  ({r['wall_s']:.1f} s)")
    ratio = rows["batched"]["tokens/s"] / rows["one at a time"]["tokens/s"]
    print(f"continuous batching speed-up: {ratio:.2f}x tokens/s (target >= 3x)")
    if any(r["errors"] for r in rows.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
