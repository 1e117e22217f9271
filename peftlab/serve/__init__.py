"""The HTTP servers: many LoRA adapters on one base: a classifier (micro-batched) or a chat
model (OpenAI-compatible, continuously batched), with Prometheus metrics.

    peftlab serve --adapter support=runs/support --adapter sales=runs/sales --port 8000
    peftlab serve --adapter sql=runs/chat_sql --adapter extract=runs/chat_extract   # chat

    app.py            create_app(model, tokenizer): the classification app, its batcher, metrics
    chat_app.py       create_chat_app(model, tokenizer): POST /v1/chat/completions, /v1/models
    chat_protocol.py  the OpenAI request checks, answer and stream shapes, the safe prompt
    chat_engine.py    ChatEngine: iteration-level batching (Orca), one adapter per row (S-LoRA)
    chat_batch.py     Batch: the running rows' KV caches side by side, rows joining and leaving
    chat_metrics.py   tokens generated, time to first token, tokens/s, requests per adapter
    cli.py            the `peftlab serve` subcommand: load the base and the adapters, run uvicorn
    limits.py         body, queue and time limits shared by both apps
    metrics.py        read_metrics(url or app): the metrics back as numbers (windows, quantiles)
    background.py     start_background(app): the same app on a thread of this process
"""

from peftlab.serve.app import Server, create_app
from peftlab.serve.background import BackgroundServer, free_port, start_background
from peftlab.serve.chat_app import ChatServer, create_chat_app
from peftlab.serve.chat_engine import ChatEngine, Row
from peftlab.serve.metrics import MetricsSnapshot, parse_metrics, read_metrics

__all__ = ["BackgroundServer", "ChatEngine", "ChatServer", "MetricsSnapshot", "Row", "Server",
           "create_app", "create_chat_app", "free_port", "parse_metrics", "read_metrics",
           "start_background"]
