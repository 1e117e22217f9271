"""The HTTP server: many LoRA adapters on one base, micro-batched, with Prometheus metrics.

    peftlab serve --adapter support=runs/support --adapter sales=runs/sales --port 8000

    app.py    create_app(model, tokenizer): the FastAPI app, its batcher and its metrics
    cli.py    the `peftlab serve` subcommand: load the base and the adapters, run uvicorn
"""

from peftlab.serve.app import Server, create_app

__all__ = ["Server", "create_app"]
