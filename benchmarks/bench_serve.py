"""Bounded load test of `peftlab serve` on 127.0.0.1: mixed adapters, concurrent clients.

    python benchmarks/bench_serve.py [--clients 8] [--requests 100] [--texts 1]

Saves two LoRA adapters on the embedded base, starts `peftlab serve` twice on free local
ports (micro-batched: --max-batch 32 --max-wait-ms 5; then one request at a time:
--max-batch 1 --max-wait-ms 0) and sends clients x requests predictions to each, every
client alternating adapters. Prints throughput, p50 / p99 latency and errors (must be 0) of
each, and the micro-batching speed-up. Everything stays on this machine.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch

import peftlab as pl

TEXTS = ["my order is late again", "great service, thanks a lot", "the app crashes on start",
         "I want a refund", "love the new update", "nothing works since yesterday"]


def adapters(folder: Path) -> list[str]:
    model, _ = pl.models.text_classifier(num_labels=2, seed=0)
    pl.lora.apply(model, pl.lora.LoraConfig(r=8, targets=["query", "value"]))
    out = []
    for i, name in enumerate(("support", "sales")):
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.1, generator=g)
        out.append(f"{name}={pl.save_adapter(model, folder / name)}")
    return out


def start(specs, max_batch, max_wait_ms):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "peftlab", "serve", "--port", str(port),
           "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
    for spec in specs:
        cmd += ["--adapter", spec]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if requests.get(url + "/healthz", timeout=1).ok:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start")


def load(url, clients, n, k):
    def client(c):
        lat, errors = [], 0
        with requests.Session() as s:
            for j in range(n):
                texts = [TEXTS[(c + j + i) % len(TEXTS)] for i in range(k)]
                t0 = time.perf_counter()
                r = s.post(url + "/v1/predict",
                           json={"texts": texts, "adapter": ("support", "sales")[(c + j) % 2]})
                lat.append(time.perf_counter() - t0)
                errors += r.status_code != 200 or len(r.json().get("predictions", [])) != k
        return lat, errors

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    lat = sorted(x for d in done for x in d[0])
    return {"requests/s": len(lat) / wall, "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "errors": sum(d[1] for d in done), "requests": len(lat)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=100, help="per client")
    ap.add_argument("--texts", type=int, default=1, help="texts per request")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        specs = adapters(Path(tmp))
        rows = {}
        for label, mb, wait in (("micro-batched", 32, 5), ("one at a time", 1, 0)):
            proc, url = start(specs, mb, wait)
            try:
                load(url, 2, 3, args.texts)                  # warm-up
                rows[label] = load(url, args.clients, args.requests, args.texts)
            finally:
                proc.terminate()
                proc.wait()
    print(f"{args.clients} clients x {args.requests} requests x {args.texts} text(s), "
          f"adapters mixed, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    for label, r in rows.items():
        print(f"{label:>14}: {r['requests/s']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
              f"p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}/{r['requests']}")
    speed = rows["micro-batched"]["requests/s"] / rows["one at a time"]["requests/s"]
    print(f"micro-batching speed-up: {speed:.2f}x")
    if any(r["errors"] for r in rows.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
