"""The HTTP server: many LoRA adapters on one base, micro-batched, with Prometheus metrics.

    peftlab serve --adapter support=runs/support --adapter sales=runs/sales --port 8000

    app.py         create_app(model, tokenizer): the FastAPI app, its batcher and its metrics
    cli.py         the `peftlab serve` subcommand: load the base and the adapters, run uvicorn
    metrics.py     read_metrics(url or app): the metrics back as numbers (windows, quantiles)
    background.py  start_background(app): the same app on a thread of this process
"""

from peftlab.serve.app import Server, create_app
from peftlab.serve.background import BackgroundServer, free_port, start_background
from peftlab.serve.metrics import MetricsSnapshot, parse_metrics, read_metrics

__all__ = ["BackgroundServer", "MetricsSnapshot", "Server", "create_app", "free_port",
           "parse_metrics", "read_metrics", "start_background"]
