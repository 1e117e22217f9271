"""The server: FastAPI endpoints over one base model carrying named LoRA adapters.

    POST   /v1/predict        {"texts": [...], "adapter": "NAME"} -> {"adapter", "predictions":
                              [{"label", "probabilities": [...]}]}
    GET    /v1/adapters       {"adapters": [...], "default": first}
    POST   /v1/adapters       {"name", "path"}: load (or replace) an adapter without a restart
    DELETE /v1/adapters/NAME
    GET    /healthz           GET /metrics (Prometheus text format: requests by adapter and
                              status, latency, batch sizes, confidence, predicted classes,
                              input lengths; peftlab.serve.metrics reads it back)

Micro-batching: requests wait in a queue; one worker takes the first and whatever else
arrives within max_wait_ms (up to max_batch texts) and runs them as one forward pass with
one adapter per row (pl.predict(..., adapter_names=...)). All model work (predicting, loading,
deleting adapters) runs on one worker thread, so a hot-load never races a forward pass.
Bad input is answered with a JSON {"error": message} and a status code, never a crash.

Limits on bodies, texts, the queue and time: peftlab/serve/limits.py (413 / 415 / 429 / 408 /
504 / 503, each counted in /metrics as peftlab_refusals_total{reason=...}).
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request)

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from peftlab.core.errors import AdapterError
from peftlab.inference import predict
from peftlab.io.adapters import load_adapter
from peftlab.lora.named import adapter_names, delete_adapter
from peftlab.serve.limits import (
    MAX_BODY_BYTES,
    MAX_CHARS,
    MAX_QUEUE,
    MAX_TEXTS,
    REQUEST_TIMEOUT_S,
    BadRequest,
    _json,
    check_limits,
    read_body,
)


class Server:
    """The model, the batcher and the metrics behind the app (one per app)."""

    def __init__(self, model, tokenizer, max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_texts: int = MAX_TEXTS, max_chars: int = MAX_CHARS,
                 max_body_bytes: int = MAX_BODY_BYTES, max_queue: int = MAX_QUEUE,
                 request_timeout: float = REQUEST_TIMEOUT_S):
        check_limits(max_batch=max_batch, max_wait_ms=max_wait_ms, max_texts=max_texts,
                     max_chars=max_chars, max_body_bytes=max_body_bytes, max_queue=max_queue,
                     request_timeout=request_timeout)
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.max_texts, self.max_chars = max_texts, max_chars
        self.max_body_bytes, self.max_queue = max_body_bytes, max_queue
        self.timeout = float(request_timeout)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="peftlab-model")
        self.queue: asyncio.Queue | None = None
        self.ready = False                       # True while the worker runs (lifespan)
        self.stopping = False                    # shutdown has begun
        r = self.registry = CollectorRegistry()
        self.refusals = Counter("peftlab_refusals", "Requests refused, by reason", ["reason"],
                                registry=r)
        self.queue_length = Gauge("peftlab_queue_length", "Requests waiting for the model",
                                  registry=r)
        self.queue_length.set_function(lambda: self.queue.qsize() if self.queue else 0)
        self.requests = Counter("peftlab_requests", "Requests by adapter and status",
                                ["endpoint", "adapter", "status"], registry=r)
        self.latency = Histogram("peftlab_request_latency_seconds", "Predict latency",
                                 ["adapter"], registry=r)
        self.batch_size = Histogram("peftlab_batch_size", "Texts per forward pass",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.confidence = Histogram("peftlab_prediction_confidence", "Top class probability",
                                    ["adapter"], registry=r,
                                    buckets=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0))
        self.input_chars = Histogram("peftlab_input_length_chars", "Characters per text",
                                     buckets=(16, 32, 64, 128, 256, 512, 1024, 2048), registry=r)
        self.predictions = Counter("peftlab_predictions", "Predicted classes by adapter",
                                   ["adapter", "label"], registry=r)

    async def call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def names(self) -> list[str]:
        return adapter_names(self.model)

    def listing(self) -> dict:
        """GET /v1/adapters: the adapters and the default (the first)."""
        return {"adapters": self.names(), "default": self.names()[0]}

    def check_name(self, name: str) -> None:
        """A name an adapter may be loaded under (any, here; the chat server keeps the base's)."""

    # --- batching ---------------------------------------------------------------------------
    def check_ready(self) -> None:
        if not self.ready or self.queue is None:
            raise BadRequest(503, "the server is not ready (starting up or shutting down); "
                                  "retry shortly", headers={"Retry-After": "1"})

    async def predict(self, texts: list[str], adapter: str) -> list[dict]:
        """Queue the request (429 when max_queue are waiting) and wait for its rows (504 after
        request_timeout: the request leaves the queue, its rows are never computed)."""
        self.check_ready()
        fut = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((texts, adapter, fut))
        except asyncio.QueueFull:
            raise BadRequest(429, f"the server is busy: {self.max_queue} requests are waiting "
                                  f"for the model (max_queue); retry shortly",
                             headers={"Retry-After": "1"}) from None
        try:
            return await asyncio.wait_for(fut, self.timeout)     # cancels fut on timeout
        except asyncio.TimeoutError:
            raise BadRequest(504, f"the request was not answered within {self.timeout:g} s "
                                  f"(request_timeout); the server is overloaded") from None

    def fail_waiting(self) -> None:
        """Answer every queued request 503 (shutdown)."""
        while self.queue is not None and not self.queue.empty():
            _, _, fut = self.queue.get_nowait()
            if not fut.done():
                fut.set_exception(BadRequest(503, "the server is shutting down"))

    async def worker(self) -> None:
        while True:
            batch = [await self.queue.get()]
            if batch[0][2].done():               # timed out while waiting: drop it
                continue
            rows, deadline = len(batch[0][0]), time.monotonic() + self.max_wait
            while rows < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
                if not item[2].done():
                    batch.append(item)
                    rows += len(item[0])
            try:
                results = await self.call(self._run, batch)
            except Exception as e:                       # noqa: BLE001 - answered per request
                results = [e] * len(batch)
            for (_, _, fut), res in zip(batch, results):
                if not fut.done():
                    (fut.set_exception if isinstance(res, Exception) else fut.set_result)(res)

    def _run(self, batch) -> list:
        """One forward pass for every request whose adapter still exists (model thread)."""
        names = set(self.names())
        gone = [fut.done() for _, _, fut in batch]      # timed out meanwhile: not computed
        ok = [b for b, g in zip(batch, gone) if b[1] in names and not g]
        texts = [t for b in ok for t in b[0]]
        routes = [b[1] for b in ok for _ in b[0]]
        preds = predict(self.model, self.tokenizer, texts, adapter_names=routes,
                        batch_size=max(1, len(texts))) if texts else None
        if texts:
            self.batch_size.observe(len(texts))
        out, i = [], 0
        for (texts_, adapter, _), g in zip(batch, gone):
            if g:
                out.append(None)
                continue
            if adapter not in names:
                out.append(BadRequest(404, f"unknown adapter {adapter!r}"))
                continue
            rows = []
            for _ in texts_:
                p = preds.probabilities[i]
                self.confidence.labels(adapter).observe(float(p.max()))
                self.predictions.labels(adapter, str(preds.labels[i])).inc()
                rows.append({"label": preds.labels[i], "probabilities": [float(x) for x in p]})
                i += 1
            out.append(rows)
        return out

    # --- validation ---------------------------------------------------------------------------
    def parse_predict(self, raw: bytes) -> tuple[list[str], str]:
        body = _json(raw)
        texts = body.get("texts")
        if not isinstance(texts, list) or not texts:
            raise BadRequest(422, "'texts' must be a non-empty list of strings")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise BadRequest(422, f"texts[{bad[0]}] is not a string")
        if len(texts) > self.max_texts:
            raise BadRequest(413, f"{len(texts)} texts in one request; at most {self.max_texts}")
        long = [i for i, t in enumerate(texts) if len(t) > self.max_chars]
        if long:
            raise BadRequest(413, f"texts[{long[0]}] has {len(texts[long[0]])} characters; at "
                                  f"most {self.max_chars}")
        adapter = body.get("adapter", self.names()[0])
        if not isinstance(adapter, str):
            raise BadRequest(422, "'adapter' must be a string")
        if adapter not in self.names():
            raise BadRequest(404, f"unknown adapter {adapter!r}; known: {self.names()}")
        return texts, adapter


def create_app(model, tokenizer, **options):
    """The FastAPI app serving `model` (a LoRA model, adapters named) with `tokenizer`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    server = Server(model, tokenizer, **options)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        """Start the batching worker with the server's event loop; stop it on shutdown."""
        server.queue = asyncio.Queue(maxsize=server.max_queue)
        worker = app.state.worker = asyncio.create_task(server.worker())
        server.ready = True
        try:
            yield
        finally:
            server.ready, server.stopping = False, True
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            server.fail_waiting()
            server.queue = None

    app = FastAPI(title="peftlab serve", lifespan=lifespan)
    app.state.server = server

    def error(endpoint, adapter, e: BadRequest):
        server.requests.labels(endpoint, adapter, str(e.status)).inc()
        server.refusals.labels(e.reason).inc()
        return JSONResponse({"error": str(e)}, status_code=e.status, headers=e.headers)

    @app.post("/v1/predict")
    async def _predict(request: Request):
        t0 = time.perf_counter()
        try:
            server.check_ready()
            texts, adapter = server.parse_predict(await read_body(request, server.max_body_bytes, server.timeout))
            for t in texts:
                server.input_chars.observe(len(t))
            rows = await server.predict(texts, adapter)
        except BadRequest as e:
            return error("predict", "-", e)
        server.latency.labels(adapter).observe(time.perf_counter() - t0)
        server.requests.labels("predict", adapter, "200").inc()
        return {"adapter": adapter, "predictions": rows}

    add_adapter_routes(app, server, error)

    @app.get("/healthz")
    async def _health():
        if not server.ready:
            return JSONResponse({"status": "stopping" if server.stopping else "starting",
                                 "adapters": server.names()}, status_code=503)
        return {"status": "ok", "adapters": server.names()}

    @app.get("/metrics")
    async def _metrics():
        return Response(generate_latest(server.registry),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.exception_handler(Exception)
    async def _any(request, exc):                       # never a bare 500 page
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)

    return app


def add_adapter_routes(app, server, error) -> None:
    """GET / POST / DELETE /v1/adapters: list, hot-load (or replace) and unload adapters, the
    model work on the server's model thread (server.call). Shared by the classification app
    and the chat app (serve/chat_app.py); `error(endpoint, adapter, BadRequest)` answers a
    refusal in the app's own error shape."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    @app.get("/v1/adapters")
    async def _list():
        return server.listing()

    @app.post("/v1/adapters")
    async def _load(request: Request):
        try:
            server.check_ready()
            body = _json(await read_body(request, server.max_body_bytes, server.timeout))
            name, path = body.get("name"), body.get("path")
            if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
                raise BadRequest(422, "give {'name': str, 'path': str}")
            server.check_name(name)
            try:
                await server.call(lambda: load_adapter(server.model, path, name=name))
            except (AdapterError, OSError, ValueError) as e:
                raise BadRequest(400, f"cannot load {path!r} as {name!r}: {e}") from None
        except BadRequest as e:
            return error("load", "-", e)
        server.requests.labels("load", name, "201").inc()
        return JSONResponse({"adapter": name, "adapters": server.names()}, status_code=201)

    @app.delete("/v1/adapters/{name}")
    async def _delete(name: str):
        try:
            server.check_ready()
            names = server.names()
            if name not in names:
                raise BadRequest(404, f"unknown adapter {name!r}; known: {names}")
            if name == names[0]:
                raise BadRequest(409, f"{name!r} is the base's first adapter and stays loaded")
            await server.call(delete_adapter, server.model, name)
        except BadRequest as e:
            return error("delete", "-", e)
        server.requests.labels("delete", name, "200").inc()
        return {"deleted": name, "adapters": server.names()}
