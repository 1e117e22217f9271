"""`peftlab serve`: load a base model and named adapters, then serve them over HTTP.

    peftlab serve --adapter support=runs/support --adapter sales=runs/sales \\
                  [--base MODEL] --host 127.0.0.1 --port 8000
    peftlab serve --adapter sql=runs/chat_sql --adapter extract=runs/chat_extract   # chat
    peftlab serve --task chat                        # the embedded chat base alone

Which server: an adapter trained on a causal LM (a chat run folder, or an adapter whose saved
base is a ...ForCausalLM) starts the chat server (OpenAI-compatible: serve/chat_app.py) on the
chat base (pl.models.chat_model, or --base, or the run's base); a classifier's adapter starts
the classification server (serve/app.py). --task chat | text says it outright. An --adapter
PATH may be a run folder (`peftlab train --out`): its adapter/ is served, with its system prompt.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  peftlab serve --adapter support=runs/support --port 8000
  curl -s localhost:8000/v1/predict -d '{"texts": ["my order is late"], "adapter": "support"}'
  peftlab serve --adapter extract=runs/chat --port 8000        # a chat run: the chat server
  curl -s localhost:8000/v1/chat/completions -H 'content-type: application/json' \\
       -d '{"model": "extract", "messages": [{"role": "user", "content": "Anna flies to Oslo."}]}'
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve LoRA adapters on one base over HTTP",
                       description="Serve named LoRA adapters on one base model (FastAPI + "
                                   "uvicorn): a classifier at /v1/predict, or a chat model at "
                                   "/v1/chat/completions and /v1/models (OpenAI-compatible, "
                                   "continuously batched); /v1/adapters, /healthz, /metrics.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                   help="a named adapter folder or run folder (repeat for more; the first is "
                        "the default); a chat server may serve its base alone")
    p.add_argument("--task", choices=["auto", "text", "chat"], default="auto",
                   help="auto (default): chat when the adapters were trained on a causal LM")
    p.add_argument("--base", default=None, metavar="MODEL",
                   help="the base model: a local folder or hub id (default: the embedded one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32,
                   help="texts per forward pass (chat: rows generating together)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to batch with (text only: a chat "
                        "request joins the running batch at the next step)")
    c = p.add_argument_group("chat (the OpenAI-compatible server)")
    c.add_argument("--max-tokens", type=int, default=512, metavar="N",
                   help="the most tokens one answer may ask for (default 512)")
    c.add_argument("--served-name", default=None, metavar="NAME",
                   help="the base's name in /v1/models (default: its folder or hub id's last part)")
    c.add_argument("--prefix-cache-tokens", type=int, default=2048, metavar="N",
                   help="prompt tokens whose keys and values are kept to reuse for prompts "
                        "that start the same way, per adapter (default 2048; 0: off)")
    c.add_argument("--no-onednn", dest="onednn", action="store_false",
                   help="run the linear layers on PyTorch's default CPU kernels (MKL) instead "
                        "of oneDNN with prepacked weights")
    c.add_argument("--system", default=None, metavar="TEXT",
                   help="the system prompt for conversations without one (default: the first "
                        "run's, else peftlab's training default)")
    from peftlab.serve import limits
    g = p.add_argument_group("limits (each refusal is a JSON error and is counted in /metrics)")
    g.add_argument("--max-body-bytes", type=int, default=limits.MAX_BODY_BYTES, metavar="N",
                   help=f"largest request body; larger: 413 (default {limits.MAX_BODY_BYTES})")
    g.add_argument("--max-texts", type=int, default=limits.MAX_TEXTS, metavar="N",
                   help=f"texts per request; more: 413 (default {limits.MAX_TEXTS})")
    g.add_argument("--max-chars", type=int, default=limits.MAX_CHARS, metavar="N",
                   help=f"characters per text; more: 413 (default {limits.MAX_CHARS})")
    g.add_argument("--max-queue", type=int, default=limits.MAX_QUEUE, metavar="N",
                   help=f"requests waiting for the model; one more: 429 with Retry-After "
                        f"(default {limits.MAX_QUEUE})")
    g.add_argument("--request-timeout", type=float, default=None,
                   metavar="S", help=f"seconds a body may take to arrive (else 408) and a "
                                     f"request to be answered (else 504) (default "
                                     f"{limits.REQUEST_TIMEOUT_S:g}; chat: 300, arrival to "
                                     f"last token)")
    return p


def parse_adapters(items: list[str], parser) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path or "." in name:
            parser.error(f"--adapter {item!r}: write NAME=PATH (a name without dots)")
        if name in [n for n, _ in out]:
            parser.error(f"--adapter {name!r} given twice")
        out.append((name, path))
    return out


def num_labels(path: str) -> int:
    """Classes of the adapter's head: its saved label names, else the head's weight rows."""
    from peftlab.io.adapters import adapter_label_names, read_adapter
    names = adapter_label_names(path)
    if names:
        return len(names)
    _, _, config, tensors = read_adapter(path)
    heads = getattr(config, "modules_to_save", None) or []
    rows = [t.shape[0] for k, t in sorted(tensors.items())
            if any(k.startswith(h + ".") for h in heads) and k.endswith("weight") and t.dim() == 2]
    return int(rows[-1]) if rows else 2


def run_folder(path: str) -> tuple[str, dict | None]:
    """(the adapter folder, run.json or None): a run folder's adapter/, else the path itself."""
    from pathlib import Path

    from peftlab.commands.runs import ADAPTER_DIR, RUN_FILE, read_run
    if (Path(path) / RUN_FILE).is_file() and (Path(path) / ADAPTER_DIR).is_dir():
        return str(Path(path) / ADAPTER_DIR), read_run(Path(path))
    return path, None


def adapter_task(path: str) -> str:
    """"chat" if the adapter (or run) was trained on a causal LM, else "text"."""
    from pathlib import Path

    from peftlab.io.files import CONFIG_FILE, HF_CONFIG_FILE, read_json
    folder, info = run_folder(path)
    if info is not None:
        return "chat" if info.get("task") == "chat" else "text"
    for name, key in ((CONFIG_FILE, "base_model"), (HF_CONFIG_FILE, None)):
        file = Path(folder) / name
        if file.is_file():
            meta = read_json(file)
            if not isinstance(meta, dict):
                return "text"
            if key is None:
                return "chat" if meta.get("task_type") == "CAUSAL_LM" else "text"
            cls = str((meta.get(key) or {}).get("class") or "")
            return "chat" if cls.endswith(("ForCausalLM", "LMHeadModel")) else "text"
    return "text"


def build_chat(adapters: list[tuple[str, str]], base: str | None = None):
    """(model, tokenizer, system): the chat base (--base, else the first run's, else the
    embedded SmolLM2) with every adapter loaded under its name; the first run's system prompt."""
    from peftlab.io.adapters import load_adapter
    from peftlab.models.chat import chat_model
    runs = [run_folder(p) for _, p in adapters]
    infos = [info for _, info in runs if info is not None]
    if base is None and infos:
        base = infos[0].get("base_model")
    model, tokenizer = chat_model(base)
    for (name, _), (folder, _) in zip(adapters, runs):
        load_adapter(model, folder, name=name)
    system = infos[0].get("data", {}).get("system") if infos else None
    return model.eval(), tokenizer, system


def build(adapters: list[tuple[str, str]], base: str | None = None):
    """(model, tokenizer): the base with every adapter loaded under its name."""
    from peftlab.io.adapters import load_adapter
    from peftlab.models.text import text_classifier
    model, tokenizer = text_classifier(num_labels=num_labels(adapters[0][1]), name=base)
    for name, path in adapters:
        load_adapter(model, path, name=name)
    return model.eval(), tokenizer


def main(args, parser) -> int:
    try:
        import uvicorn
    except ImportError:
        parser.error("peftlab serve needs the 'serve' extra: pip install 'peftlab[serve]'")
    app = make_app(args, parser)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def make_app(args, parser):
    """The app `peftlab serve` runs: the chat app or the classification app (module docstring)."""
    from peftlab.serve.limits import check_limits
    adapters = parse_adapters(args.adapter, parser)
    task = args.task
    if task == "auto":
        tasks = {adapter_task(path) for _, path in adapters}
        if len(tasks) > 1:
            parser.error("--adapter: some adapters were trained on a chat model and some on a "
                         "classifier; serve each kind with its own `peftlab serve`")
        if not tasks:
            parser.error("give --adapter NAME=PATH (or --task chat to serve the chat base alone)")
        task = tasks.pop()
    if task == "text" and not adapters:
        parser.error("the classification server needs --adapter NAME=PATH")
    limits = {"max_batch": args.max_batch, "max_body_bytes": args.max_body_bytes,
              "max_queue": args.max_queue}
    timeout = args.request_timeout
    if task == "chat":
        from peftlab.serve.chat_app import CHAT_REQUEST_TIMEOUT_S, create_chat_app
        limits.update(max_tokens=args.max_tokens, request_timeout=CHAT_REQUEST_TIMEOUT_S
                      if timeout is None else timeout)
    else:
        from peftlab.serve.app import create_app
        from peftlab.serve.limits import REQUEST_TIMEOUT_S
        limits.update(max_wait_ms=args.max_wait_ms, max_texts=args.max_texts,
                      max_chars=args.max_chars,
                      request_timeout=REQUEST_TIMEOUT_S if timeout is None else timeout)
    try:                                    # a bad limit: one line and exit 2, before loading
        check_limits(**limits)
        if task == "chat":
            from peftlab.serve.chat_prefix import PrefixCache
            PrefixCache(args.prefix_cache_tokens)
    except ValueError as e:
        parser.error(str(e))
    if task == "text":
        model, tokenizer = build(adapters, args.base)
        return create_app(model, tokenizer, **limits)
    model, tokenizer, system = build_chat(adapters, args.base)
    system = args.system if args.system is not None else system
    options = {"system": system} if system is not None else {}
    options.update(prefix_cache_tokens=args.prefix_cache_tokens, onednn=args.onednn)
    return create_chat_app(model, tokenizer, base_name=args.served_name, **limits, **options)
