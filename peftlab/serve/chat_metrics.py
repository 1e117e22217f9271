"""The chat server's Prometheus metrics: what it generated, how fast, for which adapter.

    GET /metrics (read back as numbers: peftlab.serve.read_metrics(url).chat_requests, ...)

    peftlab_requests_total{endpoint="chat", adapter, status}   as the classification server
    peftlab_refusals_total{reason}                             every refusal, by reason
    peftlab_queue_length                                       requests waiting for a slot
    peftlab_chat_running_rows                                  rows generating right now
    peftlab_chat_prompt_tokens_total{adapter}                  tokens read (the prompts)
    peftlab_chat_tokens_generated_total{adapter}               tokens generated (end-of-turn
                                                               included: the model computed it)
    peftlab_chat_time_to_first_token_seconds{adapter}          arrival -> first token: queue,
                                                               prefill and the first pick
    peftlab_chat_tokens_per_second{adapter}                    per request, after its first
                                                               token: (tokens - 1) / seconds
    peftlab_chat_request_latency_seconds{adapter}              arrival -> answered
    peftlab_chat_finished_total{adapter, reason}               stop, length, disconnect,
                                                               timeout, adapter_deleted, error
    peftlab_chat_batch_rows                                    rows per forward pass (a mean
                                                               above 1: requests share steps)
    peftlab_chat_prefix_reused_tokens                          prompt tokens not prefilled:
                                                               their keys and values came
                                                               from the prefix cache

`adapter` is the request's model name: the base's or an adapter's. Throughput over a window is
the difference of two readings of the token counter divided by the seconds between them.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RATES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class ChatMetrics:
    """The families above, in their own registry; done() records one finished request."""

    def __init__(self, queue_length, running_rows, prefix_reused=lambda: 0):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("peftlab_requests", "Requests by adapter and status",
                                ["endpoint", "adapter", "status"], registry=r)
        self.refusals = Counter("peftlab_refusals", "Requests refused, by reason", ["reason"],
                                registry=r)
        Gauge("peftlab_queue_length", "Requests waiting for a slot",
              registry=r).set_function(queue_length)
        Gauge("peftlab_chat_running_rows", "Rows generating now",
              registry=r).set_function(running_rows)
        self.prompt_tokens = Counter("peftlab_chat_prompt_tokens", "Prompt tokens read",
                                     ["adapter"], registry=r)
        self.tokens = Counter("peftlab_chat_tokens_generated", "Tokens generated", ["adapter"],
                              registry=r)
        self.ttft = Histogram("peftlab_chat_time_to_first_token_seconds",
                              "Arrival to first token", ["adapter"], buckets=SECONDS, registry=r)
        self.rate = Histogram("peftlab_chat_tokens_per_second",
                              "Tokens per second after the first, per request", ["adapter"],
                              buckets=RATES, registry=r)
        self.latency = Histogram("peftlab_chat_request_latency_seconds", "Arrival to answered",
                                 ["adapter"], buckets=SECONDS, registry=r)
        self.finished = Counter("peftlab_chat_finished", "Requests ended, by reason",
                                ["adapter", "reason"], registry=r)
        self.batch_rows = Histogram("peftlab_chat_batch_rows", "Rows per forward pass",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        Gauge("peftlab_chat_prefix_reused_tokens", "Prompt tokens read from the prefix cache",
              registry=r).set_function(prefix_reused)

    def refused(self, endpoint: str, adapter: str, e) -> None:
        """A request refused before (or instead of) generating: its status and reason."""
        self.requests.labels(endpoint, adapter, str(e.status)).inc()
        self.refusals.labels(e.reason).inc()

    def done(self, adapter: str, row, t0: float, status: int, reason: str) -> None:
        """A request that reached the engine ended: `reason` is the row's finish reason, or
        disconnect / timeout / adapter_deleted / error."""
        self.requests.labels("chat", adapter, str(status)).inc()
        self.finished.labels(adapter, reason).inc()
        if row.sampled:
            self.prompt_tokens.labels(adapter).inc(len(row.prompt))
            self.tokens.labels(adapter).inc(row.sampled)
        if row.t_first is not None:
            self.ttft.labels(adapter).observe(row.t_first - t0)
            if row.sampled > 1 and row.t_last > row.t_first:
                self.rate.labels(adapter).observe((row.sampled - 1) / (row.t_last - row.t_first))
        self.latency.labels(adapter).observe(time.monotonic() - t0)
