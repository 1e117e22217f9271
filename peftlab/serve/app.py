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
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request)

import asyncio
import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from peftlab.core.errors import AdapterError
from peftlab.io.adapters import load_adapter
from peftlab.lora.named import adapter_names, delete_adapter
from peftlab.inference import predict


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Server:
    """The model, the batcher and the metrics behind the app (one per app)."""

    def __init__(self, model, tokenizer, max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_texts: int = 64, max_chars: int = 2000):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.max_texts, self.max_chars = max_texts, max_chars
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="peftlab-model")
        self.queue: asyncio.Queue | None = None
        r = self.registry = CollectorRegistry()
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

    # --- batching ---------------------------------------------------------------------------
    async def predict(self, texts: list[str], adapter: str) -> list[dict]:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, adapter, fut))
        return await fut

    async def worker(self) -> None:
        while True:
            batch = [await self.queue.get()]
            rows, deadline = len(batch[0][0]), time.monotonic() + self.max_wait
            while rows < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
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
        ok = [b for b in batch if b[1] in names]
        texts = [t for b in ok for t in b[0]]
        routes = [b[1] for b in ok for _ in b[0]]
        preds = predict(self.model, self.tokenizer, texts, adapter_names=routes,
                        batch_size=max(1, len(texts))) if texts else None
        if texts:
            self.batch_size.observe(len(texts))
        out, i = [], 0
        for texts_, adapter, _ in batch:
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


def _json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"malformed JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "the body must be a JSON object")
    return body


def create_app(model, tokenizer, **options):
    """The FastAPI app serving `model` (a LoRA model, adapters named) with `tokenizer`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    server = Server(model, tokenizer, **options)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        """Start the batching worker with the server's event loop; stop it on shutdown."""
        server.queue = asyncio.Queue()
        worker = app.state.worker = asyncio.create_task(server.worker())
        try:
            yield
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            server.queue = None

    app = FastAPI(title="peftlab serve", lifespan=lifespan)
    app.state.server = server

    def error(endpoint, adapter, e: BadRequest):
        server.requests.labels(endpoint, adapter, str(e.status)).inc()
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.post("/v1/predict")
    async def _predict(request: Request):
        t0 = time.perf_counter()
        try:
            texts, adapter = server.parse_predict(await request.body())
            for t in texts:
                server.input_chars.observe(len(t))
            rows = await server.predict(texts, adapter)
        except BadRequest as e:
            return error("predict", "-", e)
        server.latency.labels(adapter).observe(time.perf_counter() - t0)
        server.requests.labels("predict", adapter, "200").inc()
        return {"adapter": adapter, "predictions": rows}

    @app.get("/v1/adapters")
    async def _list():
        return {"adapters": server.names(), "default": server.names()[0]}

    @app.post("/v1/adapters")
    async def _load(request: Request):
        try:
            body = _json(await request.body())
            name, path = body.get("name"), body.get("path")
            if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
                raise BadRequest(422, "give {'name': str, 'path': str}")
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
            if name not in server.names():
                raise BadRequest(404, f"unknown adapter {name!r}; known: {server.names()}")
            if name == server.names()[0]:
                raise BadRequest(409, f"{name!r} is the base's first adapter and stays loaded")
            await server.call(delete_adapter, server.model, name)
        except BadRequest as e:
            return error("delete", "-", e)
        server.requests.labels("delete", name, "200").inc()
        return {"deleted": name, "adapters": server.names()}

    @app.get("/healthz")
    async def _health():
        return {"status": "ok", "adapters": server.names()}

    @app.get("/metrics")
    async def _metrics():
        return Response(generate_latest(server.registry),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.exception_handler(Exception)
    async def _any(request, exc):                       # never a bare 500 page
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)

    return app
