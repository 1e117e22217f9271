"""Bounded load test of the chat server: 8 concurrent clients, mixed adapters, tokens per second
with continuous batching against one request at a time.

    python benchmarks/bench_chat_serve.py [--model embedded|tiny] [--clients 8] [--seconds 30]
                                          [--max-tokens 32] [--adapters 2] [--threads N]
                                          [--serve-arg=--no-onednn] [--in-process]

Saves random LoRA adapters (all-linear, r=8) for the chat base (the embedded SmolLM2-135M-
Instruct, or the tests' tiny Llama with the real tokenizer), then serves them twice, one after
the other, as a deployment does: `peftlab serve --task chat` in a process of its own (torch
threads: --threads), this process only running the clients. First continuously batched
(--max-batch = clients), then one request at a time (--max-batch 1: the others wait in the
queue). Each client sends greedy streamed chat requests (plain `requests`), cycling through
the base and the adapters and a few questions, each request's text its own (a request number
in front: only the rendered system message is shared between requests, as between users),
until --seconds have passed; the requests in flight then finish. Prints the settings (threads,
max_tokens, clients, prompt tokens, how many of them every prompt shares), then per mode
completion tokens per second (usage counts), requests, time to first token, rows per step,
prompt tokens reused from the prefix cache, errors (must be 0), and the ratio.
--in-process: the server on a thread of this process instead (clients and server then share
one interpreter and its GIL). Everything stays on this machine.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch

import peftlab as pl
from peftlab.chat import ChatTemplate
from peftlab.serve.chat_prefix import common_prefix

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


def save_adapters(kind: str, n: int, folder: Path) -> tuple[list[str], object]:
    """(["--adapter", "a0=PATH", ...] for peftlab serve, tokenizer): n random LoRA adapters
    saved under folder; the tiny base is saved there too (--base)."""
    model, tok = base(kind)
    args = []
    if kind == "tiny":
        model.save_pretrained(folder / "tiny")
        tok.save_pretrained(folder / "tiny")
        args += ["--base", str(folder / "tiny")]
    for i in range(n):
        m = pl.lora.apply(copy.deepcopy(model), pl.lora.LoraConfig(r=8, alpha=16,
                                                                   targets="all-linear"))
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02 if kind != "tiny" else 0.5, generator=g)
        args += ["--adapter", f"a{i}={pl.save_adapter(m, folder / f'a{i}')}"]
    return args, tok


def content(c: int, j: int) -> str:
    """Client c's j-th question behind a tag of its own (6 hex digits from c and j): every
    request's text differs from its first character on, as between users."""
    tag = hashlib.sha1(f"{c}.{j}".encode()).hexdigest()[:6]
    return f"[{tag}] {PROMPTS[(c * 3 + j) % len(PROMPTS)]}"


def one(session, url: str, body: dict) -> tuple[int, int, float]:
    """One streamed request: (completion tokens, prompt tokens: its usage chunk, seconds to
    first text); raises on any error."""
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
                used = chunk["usage"]
    if used is None:
        raise RuntimeError("no usage chunk")
    return (used["completion_tokens"], used["prompt_tokens"],
            first if first is not None else time.perf_counter() - t0)


def load(url: str, models: list[str], clients: int, seconds: float, max_tokens: int) -> dict:
    """clients threads, each sending requests (at least one) until `seconds` pass: tokens/s,
    time to first token, errors."""
    def client(c):
        tokens, prompt, ttft, errors, j = 0, 0, [], 0, 0
        with requests.Session() as s:
            while j == 0 or time.perf_counter() < stop:
                body = {"model": models[(c + j) % len(models)], "temperature": 0,
                        "messages": [{"role": "user", "content": content(c, j)}],
                        "max_tokens": max_tokens, "stream": True,
                        "stream_options": {"include_usage": True}}
                j += 1
                try:
                    used, read, first = one(s, url, body)
                except (requests.RequestException, RuntimeError, ValueError):
                    errors += 1
                    continue
                tokens, prompt, ttft = tokens + used, prompt + read, ttft + [first]
        return tokens, ttft, errors, j, prompt

    start = time.perf_counter()
    stop = start + seconds
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    ttft = [x for d in done for x in d[1]]
    n = sum(d[3] for d in done)
    return {"tokens/s": sum(d[0] for d in done) / wall, "tokens": sum(d[0] for d in done),
            "requests": n, "errors": sum(d[2] for d in done),
            "prompt": sum(d[4] for d in done) / max(1, n - sum(d[2] for d in done)),
            "ttft": ttft, "wall_s": wall}


def metric(url: str, name: str) -> float:
    """One sample's value from /metrics (0 when absent)."""
    for line in requests.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`peftlab serve --task chat ...` in its own process (or, in_process, on a thread here)."""

    def __init__(self, args: list[str], threads: int, in_process: bool):
        self.proc = self.handle = None
        if in_process:
            from peftlab.serve import cli, start_background
            parser = argparse.ArgumentParser()
            cli.add_parser(parser.add_subparsers())
            torch.set_num_threads(threads)
            self.handle = start_background(cli.make_app(parser.parse_args(["serve", *args]),
                                                        parser), timeout=300)
            self.url = self.handle.url
            return
        port = free_port()
        root = str(Path(pl.__file__).resolve().parents[1])        # this peftlab, not another
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1",
               "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, "-m", "peftlab", "serve", *args,
                                      "--port", str(port)], env=env)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"peftlab serve exited with {self.proc.returncode}")
            try:
                if requests.get(self.url + "/healthz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("peftlab serve did not start within 600 s")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def measure(server: Server, models, args) -> dict:
    """One window of load on one server, with its rows per step and prefix-cache reuse."""
    rows = lambda: (metric(server.url, "peftlab_chat_batch_rows_sum"),
                    metric(server.url, "peftlab_chat_batch_rows_count"))
    before, reused = rows(), metric(server.url, "peftlab_chat_prefix_reused_tokens")
    r = load(server.url, models, args.clients, args.seconds, args.max_tokens)
    after = rows()
    r["rows_per_step"] = (after[0] - before[0]) / max(1.0, after[1] - before[1])
    r["reused"] = metric(server.url, "peftlab_chat_prefix_reused_tokens") - reused
    r["load"] = os.getloadavg()[0]
    return r


def total(windows: list[dict]) -> dict:
    wall, tokens, n = (sum(w[k] for w in windows) for k in ("wall_s", "tokens", "requests"))
    ttft = [x for w in windows for x in w["ttft"]]
    return {"tokens/s": tokens / wall, "tokens": tokens, "requests": n, "wall_s": wall,
            "errors": sum(w["errors"] for w in windows),
            "ttft_p50_s": statistics.median(ttft) if ttft else float("nan"),
            "rows_per_step": sum(w["rows_per_step"] * w["wall_s"] for w in windows) / wall,
            "prompt": sum(w["prompt"] * w["requests"] for w in windows) / max(1, n),
            "reused": sum(w["reused"] for w in windows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["embedded", "tiny"], default="embedded",
                    help="the embedded SmolLM2-135M-Instruct (default) or the tests' tiny Llama")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15.0,
                    help="per window (then the requests in flight finish)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="windows per mode, the modes alternating (a load that comes and goes "
                         "on a shared machine then hits both)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--adapters", type=int, default=2, help="LoRA adapters beside the base")
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                    help="the server's torch threads (default: one core left for the clients "
                         "and the server's HTTP loop)")
    ap.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                    help="passed on to peftlab serve, e.g. --serve-arg=--no-onednn "
                         "--serve-arg=--prefix-cache-tokens=0 (to see what each part gives)")
    ap.add_argument("--in-process", action="store_true",
                    help="serve on a thread of this process (default: `peftlab serve` apart)")
    args = ap.parse_args()
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    modes = {"batched": args.clients, "one at a time": 1}
    windows = {label: [] for label in modes}
    with tempfile.TemporaryDirectory() as tmp:
        serve_args, tok = save_adapters(args.model, args.adapters, Path(tmp))
        serve_args += ["--task", "chat", "--served-name", "base",
                       "--max-tokens", str(max(args.max_tokens, 16)), *args.serve_arg]
        models = ["base", *[f"a{i}" for i in range(args.adapters)]]
        template = ChatTemplate(tok)
        system = [a.split("=", 1)[1] for a in args.serve_arg if a.startswith("--system=")]
        head = [{"role": "system", "content": system[-1]}] if system else []   # as served
        ids = [template.prompt_ids([*head, {"role": "user", "content": content(c, j)}])
               for c in range(args.clients) for j in range(8)]
        shared = min(common_prefix(ids[0], i) for i in ids[1:])
        servers = {}
        try:                         # both servers up (one idles while the other is measured)
            for label, max_batch in modes.items():
                servers[label] = Server([*serve_args, "--max-batch", str(max_batch)],
                                        args.threads, args.in_process)
                load(servers[label].url, models, 2, 0.0, 4)        # warm-up: one request each
            print(f"{args.model} adapters and both servers ready in "
                  f"{time.perf_counter() - t0:.1f} s; serving {models} with `peftlab serve`"
                  f"{' in this process' if args.in_process else ''}", flush=True)
            for r in range(args.rounds):
                for label in (list(modes) if r % 2 == 0 else list(modes)[::-1]):
                    windows[label].append(measure(servers[label], models, args))
        finally:
            for server in servers.values():
                server.stop()
    print(f"{args.clients} clients, {args.rounds} x {args.seconds:g} s per mode (alternating), "
          f"max_tokens {args.max_tokens}, greedy, adapters mixed ({len(models)} models), server "
          f"torch threads {args.threads}, prompt tokens {min(map(len, ids))}-{max(map(len, ids))} "
          f"(the first {shared} shared by all: system message and turn markers); peftlab serve "
          f"{' '.join(args.serve_arg) or 'defaults'}; load average {load0:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after, on {os.cpu_count()} CPUs")
    rows = {label: total(w) for label, w in windows.items()}
    for label, r in rows.items():
        print(f"{label:>14}: {r['tokens/s']:7.1f} tokens/s  {r['tokens']:5d} tokens  "
              f"{r['requests']:4d} requests  ttft p50 {r['ttft_p50_s']:6.2f} s  "
              f"rows/step {r['rows_per_step']:4.1f}  prompt {r['prompt']:4.1f} tokens  "
              f"reused {r['reused']:5.0f}  errors {r['errors']}  ({r['wall_s']:.1f} s)")
    per_round = [b["tokens/s"] / o["tokens/s"]
                 for b, o in zip(windows["batched"], windows["one at a time"])]
    ratio = rows["batched"]["tokens/s"] / rows["one at a time"]["tokens/s"]
    loads = ", ".join(f"{w['load']:.1f}" for w in windows["batched"])
    print(f"continuous batching speed-up: {ratio:.2f}x tokens/s (target >= 3x); per round "
          f"{', '.join(f'{x:.2f}x' for x in per_round)} (load {loads}); errors "
          f"{sum(r['errors'] for r in rows.values())}")
    if any(r["errors"] for r in rows.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
