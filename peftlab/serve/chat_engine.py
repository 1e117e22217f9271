"""Continuous (iteration-level) batching: many chat requests, each with its own LoRA adapter,
generating together on one base model, one token per step.

    engine = ChatEngine(model, tokenizer, max_batch=32, max_queue=64)
    engine.start()                                # the model thread
    engine.submit(row)                            # a Row: prompt ids, adapter, limits, emit()
    engine.call(pl.delete_adapter, model, "x")    # model work between two steps (a Future)
    engine.stop()

Why per step. Batching whole requests (what `peftlab serve` does for classification, and what
pl.generate does) makes a batch last as long as its longest answer: rows that finished early
sit idle, and a request that arrives a moment after the batch started waits for all of it.
Orca (Yu et al. 2022, "Orca: A Distributed Serving System for Transformer-Based Generative
Models", OSDI) schedules at the granularity of one iteration instead: after every decoding
step the scheduler may remove finished requests and add new ones, so the batch stays full and
a new request waits at most one step (here up to join_wait more if it comes alone: _admit).
vLLM serves the same way. S-LoRA (Sheng et al. 2023, "S-LoRA: Serving Thousands of Concurrent
LoRA Adapters", MLSys 2024) adds the adapters: the base weights are shared by every row, and
each row adds its own adapter's B A x in the same forward pass (peftlab stacks every adapter's
A and B, chat_lora.py, pl.lora.route the fallback; S-LoRA: custom kernels, paged adapters).

The loop below, on one thread that owns the model (so hot-loading an adapter never races a
forward pass):

    repeat:
        run queued model work (load / delete an adapter)
        drop rows whose client went away (disconnect, timeout) or whose adapter was deleted
        admit waiting requests into free slots (a lone one waits up to join_wait steps for
            company): prefill them together, each through its own adapter, then join their
            caches to the running batch                           (chat_batch.Batch.join);
            a prompt that starts like an earlier one through the same adapter reuses that
            one's keys and values and prefills only the rest     (chat_prefix.PrefixCache)
        pick one token per row (greedy, or sampled with the row's own seeded generator)
        emit text to each row; rows that hit the end-of-turn token, a stop string or their
            max_tokens leave the batch, their cache is freed       (Batch.keep)
        one forward pass for every remaining row, each through its own adapter (Batch.step;
            every adapter's A and B stacked, so a mixed batch costs what one adapter costs:
            chat_lora.StackedLora)

A row's numbers are what pl.generate computes for it alone (left padding, explicit positions,
per-row routing), so a greedy answer is the same tokens (tests/test_serve_chat_engine.py checks
logits to 1e-4). The prefill of joining rows delays the running rows by one prefill; splitting
long prompts into chunks (Sarathi) would bound that, and is left out for clarity.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from peftlab.chat.generate import pick, stop_ids
from peftlab.core.state import get_method
from peftlab.lora.named import adapter_names, route
from peftlab.serve.chat_batch import Batch
from peftlab.serve.chat_kernels import PackedLinears
from peftlab.serve.chat_lora import StackedLora
from peftlab.serve.chat_prefix import PrefixCache
from peftlab.serve.chat_protocol import ApiError, cut_at_stop, held_back


@dataclass
class Row:
    """One request inside the engine. emit(kind, value) is called on the engine's thread:
    ("delta", text) while streaming, ("done", (text, finish_reason)) once, or ("error",
    ApiError) once. cancel(reason) from any thread: the row leaves at the next step."""

    prompt: list[int]
    adapter: str | None
    max_tokens: int
    emit: Callable[[str, object], None]
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    tokens: list[int] = field(default_factory=list)   # the answer so far (no end-of-turn)
    sampled: int = 0                                  # tokens picked, the end-of-turn included
    sent: int = 0                                     # characters streamed so far
    finish: str | None = None
    cancelled: str | None = None
    t_first: float | None = None                      # time.monotonic() of the first token
    t_last: float | None = None
    logits: list | None = None                        # each step's logits (record_logits)
    queued: int = 0                                   # the engine's step count at submit

    def __post_init__(self):
        self.generator = None
        if self.temperature > 0:                # seeded as pl.generate(..., seed=seed) alone
            self.generator = torch.Generator()
            if self.seed is None:
                self.generator.seed()           # a fresh random seed, the global RNG untouched
            else:
                self.generator.manual_seed(self.seed)

    def cancel(self, reason: str) -> None:
        if self.finish is None:
            self.cancelled = reason


class ChatEngine:
    """The scheduler of the module docstring. max_batch: rows generating together; max_queue:
    requests waiting for a slot (one more: 429). record_logits: rows keep each step's logits
    (tests compare them with pl.generate). on_step(rows): called after every forward pass.
    prefix_cache_tokens: the most prompt tokens whose keys and values are kept for reuse
    (chat_prefix.py; 0: every prompt is prefilled in full). stacked_lora: every row's adapter
    in one pass per layer (chat_lora.py; False: pl.lora.route, group by group). join_wait:
    the most steps a lone request waits to prefill together with another (_admit). onednn:
    the base's linear layers through oneDNN on a CPU (chat_kernels.py; False: PyTorch's)."""

    def __init__(self, model, tokenizer, max_batch: int = 32, max_queue: int = 64,
                 record_logits: bool = False, on_step: Callable[[int], None] | None = None,
                 prefix_cache_tokens: int = 2048, stacked_lora: bool = True,
                 join_wait: int = 2, onednn: bool = True):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.record_logits, self.on_step = record_logits, on_step
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else tokenizer.eos_token_id
        self.stops = stop_ids(model, tokenizer)
        self.prefix = PrefixCache(prefix_cache_tokens)
        self.stacked = StackedLora(model) if stacked_lora else None
        self.packed = PackedLinears(model, enabled=onednn)
        self.join_wait, self.steps = join_wait, 0     # steps: forward passes so far
        self.tokenizer_lock = threading.Lock()        # the handlers tokenize on other threads
        self.rows: list[Row] = []                     # row i is row i of self.batch
        self.batch: Batch | None = None
        self.waiting: collections.deque[Row] = collections.deque()
        self.work: list[tuple[Callable, Future]] = []
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None
        self.stopping = False

    # --- the other threads' side ---------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive() and not self.stopping

    def submit(self, row: Row) -> None:
        """Queue a row for the next free slot: ApiError 503 when the engine is not running,
        429 when max_queue rows are waiting already."""
        with self.wake:
            if not self.running:
                raise ApiError(503, "the server is not ready (starting up or shutting down); "
                                    "retry shortly", headers={"Retry-After": "1"})
            live = [r for r in self.waiting if r.cancelled is None]
            if len(live) >= self.max_queue:
                raise ApiError(429, f"the server is busy: {self.max_queue} requests are waiting "
                                    f"for a slot (max_queue); retry shortly",
                               code="rate_limit_exceeded", headers={"Retry-After": "1"})
            row.queued = self.steps
            self.waiting = collections.deque(live + [row])
            self.wake.notify()

    def call(self, fn: Callable, *args) -> Future:
        """Run fn(*args) on the engine's thread between two steps; its Future."""
        fut: Future = Future()
        with self.wake:
            if not self.running:
                fut.set_exception(ApiError(503, "the server is not ready; retry shortly"))
                return fut
            self.work.append((lambda: fn(*args), fut))
            self.wake.notify()
        return fut

    def decode(self, tokens: list[int]) -> str:
        with self.tokenizer_lock:
            return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def start(self) -> ChatEngine:
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="peftlab-chat-engine", daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the current step, then answer every row and waiting request 503."""
        with self.wake:
            self.stopping = True
            self.wake.notify()
        if self.thread is not None:
            self.thread.join(timeout)
        gone = ApiError(503, "the server is shutting down")
        for row in [*self.rows, *self.waiting]:
            self._fail(row, gone)
        for _, fut in self.work:
            fut.set_exception(gone)
        self.rows, self.waiting, self.work, self.batch = [], collections.deque(), [], None
        self._forget()

    def _forget(self) -> None:
        """Drop the cached prefixes, stacked adapters and packed weights (the model changed)."""
        self.prefix.clear()
        for part in (self.stacked, self.packed):
            if part is not None:
                part.invalidate()

    # --- the engine's thread ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.wake:
                while not (self.work or self.waiting or self.rows or self.stopping):
                    self.wake.wait()
                if self.stopping:
                    return
                work, self.work = self.work, []
                free = self.max_batch - len(self.rows)
                joining, admit = [], self._admit(free)
                while admit and self.waiting and len(joining) < free:
                    row = self.waiting.popleft()
                    if row.cancelled is None:
                        joining.append(row)
            if work:                     # an adapter may change: drop what was built from it
                self._forget()
            for fn, fut in work:
                try:
                    fut.set_result(fn())
                except Exception as e:                  # noqa: BLE001 - the caller's answer
                    fut.set_exception(e)
            try:
                with torch.no_grad(), self.packed.use():
                    self._leave_gone()
                    self._join([r for r in joining if self._usable(r)])
                    if self.rows:
                        self._step()
            except Exception as e:                      # noqa: BLE001 - a bug, not a crash
                error = ApiError(500, f"generation failed: {type(e).__name__}: {e}")
                for row in self.rows:
                    self._fail(row, error)
                self.rows, self.batch = [], None

    def _admit(self, free: int) -> bool:
        """Whether the waiting rows join now: at once when nothing generates, when two (or
        all free slots' worth) are waiting, else once the first has waited join_wait steps.
        A prefill pass costs about a decoding step however few its tokens (every weight is
        read once per pass), so joiners that share one save passes; vLLM's scheduler
        delays prompts the same way (--scheduler-delay-factor)."""
        live = [r for r in self.waiting if r.cancelled is None]
        return not self.rows or not live or len(live) >= min(free, 2) or \
            self.steps - live[0].queued >= self.join_wait

    def _usable(self, row: Row) -> bool:
        """Whether a joining row's adapter still exists (else it is answered 404)."""
        if row.adapter is None or row.adapter in adapter_names(self.model):
            return True
        self._fail(row, ApiError(404, f"The model '{row.adapter}' was deleted before this "
                                      f"request started.", "model", "model_not_found"))
        return False

    def _fail(self, row: Row, error: ApiError) -> None:
        if row.finish is None:
            row.finish = "error"
            row.emit("error", error)

    def _routing(self, names: list):
        """Row i through adapter names[i]: stacked (chat_lora.py), or pl.lora.route when
        stacked_lora is off; a base without LoRA: no routing."""
        if get_method(self.model) != "lora":
            return contextlib.nullcontext()
        return self.stacked.route(names) if self.stacked is not None else \
            route(self.model, names)

    def _leave(self, keep: list[int]) -> None:
        if len(keep) < len(self.rows):
            self.rows = [self.rows[i] for i in keep]
            self.batch = self.batch.keep(self.model, keep)

    def _leave_gone(self) -> None:
        """Rows cancelled by their client, or whose adapter was deleted, leave now."""
        names = set(adapter_names(self.model))
        for row in self.rows:
            if row.cancelled is None and row.adapter is not None and row.adapter not in names:
                self._fail(row, ApiError(404, f"The model '{row.adapter}' was deleted while "
                                              f"this answer was generated.", "model",
                                         "model_not_found"))
        self._leave([i for i, r in enumerate(self.rows)
                     if r.cancelled is None and r.finish is None])

    def _join(self, rows: list[Row]) -> None:
        """Prefill the new rows together, each through its own adapter (after its cached
        prefix, if any), keep their prompts' keys and values for later ones, append them."""
        if not rows:
            return
        past = [self.prefix.lookup(r.adapter, r.prompt) for r in rows]
        with self._routing([r.adapter for r in rows]):
            new = Batch.prefill(self.model, [r.prompt for r in rows], self.pad,
                                [p if p[1] is not None else None for p in past])
        if self.prefix.max_tokens > 0:
            for i, r in enumerate(rows):
                self.prefix.store(r.adapter, r.prompt, new.row_kv(i))
        self.batch = new if self.batch is None else self.batch.join(self.model, new)
        self.rows += rows

    def _pick(self) -> list[int]:
        """One token per row: argmax for the greedy rows at once, each sampled row with its
        own temperature, top_p and generator (so a seed repeats whatever the batch)."""
        logits = self.batch.logits
        out = logits.argmax(-1).tolist()
        for i, row in enumerate(self.rows):
            if self.record_logits:
                row.logits = (row.logits or []) + [logits[i].cpu()]
            if row.temperature > 0:
                out[i] = int(pick(logits[i:i + 1], row.temperature, row.top_p, row.generator)[0])
        return out

    def _advance(self, row: Row, token: int) -> None:
        """The row's new token: the end-of-turn token, a stop string or max_tokens end it."""
        now = time.monotonic()
        row.t_first, row.t_last, row.sampled = row.t_first or now, now, row.sampled + 1
        if token in self.stops:
            row.finish = "stop"
        else:
            row.tokens.append(token)
            text = self.decode(row.tokens) if row.stop or row.stream else None
            if row.stop and any(s in text for s in row.stop):
                row.finish = "stop"
            elif len(row.tokens) >= row.max_tokens:
                row.finish = "length"
            if row.finish is None and row.stream:
                shown = cut_at_stop(text, row.stop)
                shown = shown[:len(shown) - held_back(shown, row.stop)]
                if len(shown) > row.sent:
                    row.emit("delta", shown[row.sent:])
                    row.sent = len(shown)
        if row.finish is not None:
            text = cut_at_stop(self.decode(row.tokens), row.stop)
            if row.stream and len(text) > row.sent:
                row.emit("delta", text[row.sent:])
            row.emit("done", (text, row.finish))

    def _step(self) -> None:
        tokens = self._pick()
        for row, token in zip(self.rows, tokens):
            if row.cancelled is None:
                self._advance(row, token)
        keep = [i for i, r in enumerate(self.rows) if r.finish is None and r.cancelled is None]
        self._leave(keep)
        if self.rows:
            nxt = torch.tensor([tokens[i] for i in keep])
            with self._routing([r.adapter for r in self.rows]):
                self.batch.step(self.model, nxt)
            self.steps += 1
            if self.on_step is not None:
                self.on_step(len(self.rows))
