"""The chat server: an OpenAI-compatible endpoint over one base LLM carrying named LoRA adapters.

    POST   /v1/chat/completions   the OpenAI request (chat_protocol.py); "model" names the base
                                  or an adapter, as vLLM serves LoRA adapters; "stream": true
                                  answers with server-sent events
    GET    /v1/models             the base and each adapter (GET /v1/models/NAME: one)
    GET    /v1/adapters           POST /v1/adapters {"name", "path"}: hot-load (or replace);
                                  DELETE /v1/adapters/NAME (as the classification server)
    GET    /healthz, /metrics     (chat_metrics.py)

    app = create_chat_app(model, tokenizer, max_batch=32)
    client = openai.OpenAI(base_url=url + "/v1", api_key="none")
    client.chat.completions.create(model="support", messages=[{"role": "user", ...}])

A request is checked (400 / 404 / 413, the API's error shape), its prompt rendered by the same
ChatTemplate as training and pl.generate (special tokens typed by the user stay text), checked
against the context window, then handed to the engine (chat_engine.py: continuous batching,
one adapter per row). The engine calls back on its own thread; call_soon_threadsafe moves each
event onto this event loop, where the handler turns it into JSON or an SSE chunk.

Limits (serve/limits.py): the body (413 / 415 / 408), the queue of requests waiting for a slot
(429 with Retry-After), 503 before start-up and after shutdown, and request_timeout, the most a
request may take from arrival to its last token (504; a stream ends with an error event). A
client that disconnects, like one that times out, is cancelled: its row leaves the batch at
the next step and its cache is freed; the other rows go on. An adapter deleted while a stream
uses it ends that stream with an error event (model_not_found), never a crash.
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request)

import asyncio
import contextlib
import time
from pathlib import Path

from prometheus_client import generate_latest

from peftlab.core.state import get_method
from peftlab.data.template import DEFAULT_SYSTEM, ChatTemplate
from peftlab.lora.named import adapter_names
from peftlab.serve.app import add_adapter_routes
from peftlab.serve.chat_engine import ChatEngine, Row
from peftlab.serve.chat_metrics import ChatMetrics
from peftlab.serve.chat_protocol import (
    DONE,
    ApiError,
    chunk,
    completion,
    parse_request,
    prompt_ids,
    sse,
    usage,
)
from peftlab.serve.chat_prefix import PrefixCache
from peftlab.serve.limits import MAX_BODY_BYTES, MAX_QUEUE, BadRequest, check_limits, read_body

MAX_TOKENS = 512                # the most tokens one answer may ask for (max_tokens)
CHAT_REQUEST_TIMEOUT_S = 300.0  # arrival to last token: generation takes longer than a predict
PREFIX_CACHE_TOKENS = 2048      # prompt tokens whose keys and values are kept (chat_prefix.py)


def base_name_of(model) -> str:
    """The base's served name: its folder or hub id's last part (the embedded model:
    "SmolLM2-135M-Instruct"), else "base"."""
    path = str(getattr(model.config, "name_or_path", "") or "").split(",")[0].strip()
    return Path(path).name or "base"


class ChatServer:
    """The model, the engine, the template and the metrics behind one chat app.
    prefix_cache_tokens and onednn go to the engine (chat_engine.ChatEngine)."""

    def __init__(self, model, tokenizer, base_name: str | None = None, max_batch: int = 32,
                 max_queue: int = MAX_QUEUE, max_tokens: int = MAX_TOKENS,
                 max_body_bytes: int = MAX_BODY_BYTES,
                 request_timeout: float = CHAT_REQUEST_TIMEOUT_S,
                 system: str | None = DEFAULT_SYSTEM, record_logits: bool = False,
                 prefix_cache_tokens: int = PREFIX_CACHE_TOKENS, onednn: bool = True):
        check_limits(max_batch=max_batch, max_queue=max_queue, max_tokens=max_tokens,
                     max_body_bytes=max_body_bytes, request_timeout=request_timeout)
        PrefixCache(prefix_cache_tokens)            # a bad size fails here, before anything starts
        if get_method(model) not in (None, "lora"):
            raise ValueError(f"The chat server routes LoRA adapters per row; this model carries "
                             f"{get_method(model)!r}. Serve a LoRA model or a plain base.")
        self.model, self.tokenizer = model, tokenizer
        self.base = base_name or base_name_of(model)
        if self.base in adapter_names(model):
            raise ValueError(f"The base's name {self.base!r} is also an adapter's: pass "
                             f"base_name=... (peftlab serve --served-name).")
        self.template = ChatTemplate(tokenizer, system=system)
        self.context = getattr(model.config, "max_position_embeddings", None)
        self.max_tokens, self.max_body_bytes = max_tokens, max_body_bytes
        self.timeout, self.created = float(request_timeout), int(time.time())
        self.stopping = False
        self.engine = ChatEngine(model, tokenizer, max_batch=max_batch, max_queue=max_queue,
                                 record_logits=record_logits,
                                 prefix_cache_tokens=prefix_cache_tokens, onednn=onednn)
        self.metrics = ChatMetrics(lambda: len(self.engine.waiting),
                                   lambda: len(self.engine.rows),
                                   lambda: self.engine.prefix.reused)
        self.engine.on_step = self.metrics.batch_rows.observe
        self.registry, self.requests = self.metrics.registry, self.metrics.requests

    # --- what add_adapter_routes needs ----------------------------------------------------------
    def names(self) -> list[str]:
        return adapter_names(self.model)

    def listing(self) -> dict:
        """GET /v1/adapters: the adapters and the base they sit on."""
        return {"adapters": self.names(), "base": self.base}

    def check_name(self, name: str) -> None:
        """The base's name is not an adapter's."""
        if name == self.base:
            raise BadRequest(409, f"{name!r} is the base model's name; load the adapter under "
                                  f"another name")

    def check_ready(self) -> None:
        if not self.engine.running:
            raise ApiError(503, "the server is not ready (starting up or shutting down); "
                                "retry shortly", headers={"Retry-After": "1"})

    async def call(self, fn, *args):
        return await asyncio.wrap_future(self.engine.call(fn, *args))

    # --- requests ---------------------------------------------------------------------------
    def models(self) -> dict:
        """{served name: adapter}: the base (adapter None) and every adapter."""
        return {self.base: None, **{n: n for n in self.names()}}

    def model_card(self, name: str) -> dict:
        parent = None if name == self.base else self.base
        return {"id": name, "object": "model", "created": self.created, "owned_by": "peftlab",
                "root": self.base, "parent": parent}

    def row(self, req, emit) -> Row:
        """The engine's row for a checked request: its prompt ids, checked against the context
        window (400 context_length_exceeded, the API's message), and max_tokens settled."""
        with self.engine.tokenizer_lock:
            ids = prompt_ids(self.template, req.messages)
        want = req.max_tokens
        if self.context is not None:
            left = self.context - len(ids)
            if left < 1 or (want is not None and want > left):
                asked = f"{len(ids) + want} tokens ({len(ids)} in the messages, {want} in the " \
                        f"completion)" if want is not None else f"{len(ids)} tokens in the messages"
                raise ApiError(400, f"This model's maximum context length is {self.context} "
                                    f"tokens. However, you requested {asked}. Please reduce the "
                                    f"length of the messages or completion.", "messages",
                               "context_length_exceeded")
            want = want if want is not None else min(self.max_tokens, left)
        return Row(prompt=ids, adapter=req.adapter, max_tokens=want or self.max_tokens,
                   emit=emit, temperature=req.temperature, top_p=req.top_p, stop=req.stop,
                   seed=req.seed, stream=req.stream)


async def _next(events: asyncio.Queue, deadline: float, row: Row):
    """The next event from the engine, or ApiError 504 at the deadline (the row is cancelled)."""
    try:
        return await asyncio.wait_for(events.get(), max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        row.cancel("timeout")
        raise ApiError(504, "the answer was not finished within the request timeout "
                            "(request_timeout); the server is overloaded or max_tokens is large",
                       code="timeout") from None


async def _watch_disconnect(request, row: Row, events: asyncio.Queue) -> None:
    """Wait for the client to go away (ASGI http.disconnect): cancel its row."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    row.cancel("disconnect")
    events.put_nowait(("gone", None))


def create_chat_app(model, tokenizer, **options):
    """The FastAPI app serving `model` (a causal LM, plain or with named LoRA adapters) over
    the OpenAI chat-completions protocol; options: those of ChatServer."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    server = ChatServer(model, tokenizer, **options)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.engine.start()
        try:
            yield
        finally:
            server.stopping = True
            server.engine.stop()

    app = FastAPI(title="peftlab serve (chat)", lifespan=lifespan)
    app.state.server = server

    def error(endpoint: str, adapter: str, e: BadRequest):
        e = ApiError.of(e)
        server.metrics.refused(endpoint, adapter, e)
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    def ended(req, row, t0, e: ApiError) -> str:
        reason = "timeout" if e.status == 504 else \
            "adapter_deleted" if e.code == "model_not_found" else "error"
        server.metrics.refusals.labels(e.reason).inc()
        server.metrics.done(req.model, row, t0, e.status, reason)
        return reason

    async def stream(req, row, events, t0):
        delivered = False
        try:
            yield sse(chunk(req, {"role": "assistant", "content": ""}))
            while True:
                try:
                    kind, value = await _next(events, t0 + server.timeout, row)
                except ApiError as e:
                    kind, value = "error", e
                if kind == "delta":
                    yield sse(chunk(req, {"content": value}))
                    continue
                if kind == "done":
                    yield sse(chunk(req, {}, value[1]))
                    if req.include_usage:
                        yield sse(chunk(req, None, use=usage(len(row.prompt), row.sampled)))
                    server.metrics.done(req.model, row, t0, 200, value[1])
                else:                                  # an error event: the API's error shape
                    yield sse(value.body())
                    ended(req, row, t0, value)
                delivered = True
                yield DONE
                return
        finally:                   # cancelled mid-stream: the client went away
            if not delivered:
                row.cancel("disconnect")
                server.metrics.done(req.model, row, t0, 499, "disconnect")

    @app.post("/v1/chat/completions")
    async def _chat(request: Request):
        t0, loop, events = time.monotonic(), asyncio.get_running_loop(), asyncio.Queue()

        def emit(kind, value):                         # on the engine's thread
            with contextlib.suppress(RuntimeError):    # the loop closed: nobody is listening
                loop.call_soon_threadsafe(events.put_nowait, (kind, value))
        req = None
        try:
            server.check_ready()
            raw = await read_body(request, server.max_body_bytes, server.timeout)
            req = parse_request(raw, server.models(), server.max_tokens)
            row = server.row(req, emit)
            server.engine.submit(row)
        except BadRequest as e:
            return error("chat", req.model if req is not None else "-", e)
        if req.stream:
            return StreamingResponse(stream(req, row, events, t0), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        watcher = asyncio.create_task(_watch_disconnect(request, row, events))
        try:
            while True:
                kind, value = await _next(events, t0 + server.timeout, row)
                if kind in ("done", "error", "gone"):
                    break
        except ApiError as e:
            kind, value = "error", e
        finally:
            watcher.cancel()
        if kind == "gone":
            server.metrics.done(req.model, row, t0, 499, "disconnect")
            return Response(status_code=499)
        if kind == "error":
            ended(req, row, t0, value)
            return JSONResponse(value.body(), status_code=value.status, headers=value.headers)
        text, finish = value
        server.metrics.done(req.model, row, t0, 200, finish)
        return completion(req, text, finish, usage(len(row.prompt), row.sampled))

    @app.get("/v1/models")
    async def _models():
        return {"object": "list", "data": [server.model_card(n) for n in server.models()]}

    @app.get("/v1/models/{name}")
    async def _model(name: str):
        if name not in server.models():
            return error("models", "-", ApiError(404, f"The model '{name}' does not exist.",
                                                 "model", "model_not_found"))
        return server.model_card(name)

    add_adapter_routes(app, server, error)

    @app.get("/healthz")
    async def _health():
        body = {"status": "ok", "model": server.base, "adapters": server.names(),
                "running": len(server.engine.rows), "waiting": len(server.engine.waiting)}
        if not server.engine.running:
            body["status"] = "stopping" if server.stopping else "starting"
            return JSONResponse(body, status_code=503)
        return body

    @app.get("/metrics")
    async def _metrics():
        return Response(generate_latest(server.registry),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.exception_handler(Exception)
    async def _any(request, exc):                       # never a bare 500 page
        e = ApiError(500, f"{type(exc).__name__}: {exc}")
        return JSONResponse(e.body(), status_code=500)

    return app
