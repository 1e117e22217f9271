"""Fixtures for the chat server's tests: the tiny Llama (real SmolLM2 tokenizer) with two or
three saved LoRA adapters, a served copy of it, and what pl.generate answers locally.

    paths = save_adapters(tmp)                     # {"a": folder, "b": folder, "c": folder}
    model = with_adapters(paths, ["a", "b"])       # a fresh base with those loaded by name
    handle, server = serve(model, tok, max_batch=8)
    want = expected(ref, tok, "Hi", "a", max_new_tokens=8)     # a Generation

Every served model is its own copy: the engine's thread owns it (pl.lora.route sets per-row
state on its layers), so the references are computed on another copy.
"""

from __future__ import annotations

import copy
import threading

import torch
from chat_fixtures import tiny_chat_model

import peftlab as pl

PROMPTS = ["Hi", "What is the capital of France?", "Name three colours of the rainbow, please.",
           "2+2?", [{"role": "system", "content": "Be terse."},
                    {"role": "user", "content": "Why is the sky blue?"}]]
_lock = threading.Lock()


def base_model():
    return tiny_chat_model(seed=1)[0]


def save_adapters(tmp) -> dict[str, str]:
    """Three LoRA adapters on the tiny base, their B drawn at random (0.5): they answer
    differently from the base and from each other."""
    paths = {}
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        m = pl.lora.apply(base_model(), pl.lora.LoraConfig(r=4, alpha=8, targets="all-linear"))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5, generator=g)
        paths[name] = str(pl.save_adapter(m, tmp / name))
    return paths


def with_adapters(paths: dict, names) -> torch.nn.Module:
    model = base_model()
    for n in names:
        pl.load_adapter(model, paths[n], name=n)
    return model.eval()


def serve(model, tok, **options):
    """(BackgroundServer, ChatServer): the chat app on a free local port, in this process."""
    import timing

    from peftlab.serve import create_chat_app, start_background
    app = create_chat_app(model, tok, **options)
    return start_background(app, timeout=timing.budget(60)), app.state.server


def expected(ref, tok, prompt, adapter, **kw):
    """pl.generate's answer for one prompt through `adapter` (None: the base), greedy."""
    with _lock:
        return pl.generate(ref, tok, [prompt], adapter_names=[adapter], details=True, **kw)[0]


def messages(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else copy.deepcopy(prompt)


def rss_mib() -> float:
    """This process's resident memory now (MiB), from /proc."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024
