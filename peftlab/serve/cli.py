"""`peftlab serve`: load a base model and named adapters, then serve them over HTTP.

    peftlab serve --adapter support=runs/support --adapter sales=runs/sales \\
                  [--base MODEL] --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  peftlab serve --adapter support=runs/support --port 8000
  curl -s localhost:8000/v1/predict -d '{"texts": ["my order is late"], "adapter": "support"}'
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve LoRA adapters on one base over HTTP",
                       description="Serve named LoRA adapters on one base model (FastAPI + "
                                   "uvicorn): /v1/predict, /v1/adapters, /healthz, /metrics.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", action="append", required=True, metavar="NAME=PATH",
                   help="a named adapter folder (repeat for more; the first is the default)")
    p.add_argument("--base", default=None, metavar="MODEL",
                   help="the base model: a local folder or hub id (default: the embedded one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="texts per forward pass")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to batch with")
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
    g.add_argument("--request-timeout", type=float, default=limits.REQUEST_TIMEOUT_S,
                   metavar="S", help=f"seconds a body may take to arrive (else 408) and a "
                                     f"request to be answered (else 504) (default "
                                     f"{limits.REQUEST_TIMEOUT_S:g})")
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
    from peftlab.serve.app import create_app
    from peftlab.serve.limits import check_limits
    limits = dict(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                  max_body_bytes=args.max_body_bytes, max_texts=args.max_texts,
                  max_chars=args.max_chars, max_queue=args.max_queue,
                  request_timeout=args.request_timeout)
    try:                                    # a bad limit: one line and exit 2, before loading
        check_limits(**limits)
    except ValueError as e:
        parser.error(str(e))
    model, tokenizer = build(parse_adapters(args.adapter, parser), args.base)
    app = create_app(model, tokenizer, **limits)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
