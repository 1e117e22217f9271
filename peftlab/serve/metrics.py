"""Read a server's metrics back as plain numbers: for monitoring, drift checks and widgets.

    snap = read_metrics("http://127.0.0.1:8000")     # GET /metrics of a running server
    snap = read_metrics(app)                          # in-process: create_app's app (or Server)
    snap.requests          {"reviews": 120}           predict requests answered 200, by adapter
    snap.mean_confidence("reviews"), snap.low_confidence_share(0.9, "reviews")
    snap.class_shares("reviews")                      {"negative": 0.48, "positive": 0.52}
    snap.latency_quantile(0.99)                       seconds, interpolated in the buckets
    window = read_metrics(url) - before               what happened between two readings

    the chat server (serve/chat_metrics.py) beside them:
    snap.chat_requests     {"sql": 40, "SmolLM2-135M-Instruct": 8}   chat answers, by model
    snap.tokens_generated  {"sql": 1830}              snap.mean_ttft("sql")  seconds
    snap.mean_tokens_per_second("sql")                per request, after its first token
    snap.chat_finished     {"sql": {"stop": 38, "disconnect": 2}}

Prometheus counters and histograms only grow, so a window (the traffic of the last minutes,
the requests after a hot-load) is the difference of two readings. Histogram quantiles are
estimated as Prometheus' histogram_quantile does: linearly inside the bucket that holds them.
"""

from __future__ import annotations

import dataclasses
import math
import urllib.request
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Histogram:
    """One histogram series: cumulative counts per upper bound, their sum and count."""

    bounds: list[float] = field(default_factory=list)      # upper bounds, +inf last
    cumulative: list[float] = field(default_factory=list)  # observations <= each bound
    sum: float = 0.0
    count: float = 0.0

    def __sub__(self, other: Histogram) -> Histogram:
        if not other.bounds:
            return dataclasses.replace(self)
        if other.bounds != self.bounds:
            raise ValueError("Cannot subtract histograms with different buckets.")
        return Histogram(list(self.bounds), [a - b for a, b in zip(self.cumulative,
                                                                     other.cumulative)],
                         self.sum - other.sum, self.count - other.count)

    def __add__(self, other: Histogram) -> Histogram:
        if not other.bounds:
            return dataclasses.replace(self)
        if not self.bounds:
            return dataclasses.replace(other)
        return Histogram(list(self.bounds), [a + b for a, b in zip(self.cumulative,
                                                                     other.cumulative)],
                         self.sum + other.sum, self.count + other.count)

    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    def share_below(self, bound: float) -> float:
        """The share of observations <= bound (bound must be one of the bucket bounds)."""
        if bound not in self.bounds:
            raise ValueError(f"{bound} is not a bucket bound; bounds are {self.bounds}.")
        return self.cumulative[self.bounds.index(bound)] / self.count if self.count else math.nan

    def counts(self) -> list[float]:
        """Observations per bucket (not cumulative)."""
        return [c - p for c, p in zip(self.cumulative, [0.0, *self.cumulative[:-1]])]

    def quantile(self, q: float) -> float:
        if not 0 <= q <= 1:
            raise ValueError(f"q must be in [0, 1], got {q}.")
        if not self.count:
            return math.nan
        rank, lower, below = q * self.count, 0.0, 0.0
        for bound, cum in zip(self.bounds, self.cumulative):
            if cum >= rank:
                if math.isinf(bound):
                    return lower              # past the last finite bound: its value
                inside = cum - below
                return lower + (bound - lower) * ((rank - below) / inside if inside else 0.0)
            lower, below = bound, cum
        return lower


def _sub(a: dict, b: dict) -> dict:
    return {k: v - b.get(k, 0) for k, v in a.items()}


@dataclass
class MetricsSnapshot:
    """The metrics of `peftlab serve` at one moment (or, subtracted, over a window)."""

    requests: dict[str, float] = field(default_factory=dict)   # predict 200s by adapter
    errors: dict[str, float] = field(default_factory=dict)     # answers >= 400, by status
    latency: dict[str, Histogram] = field(default_factory=dict)     # seconds, by adapter
    confidence: dict[str, Histogram] = field(default_factory=dict)  # top probability
    predictions: dict[str, dict[str, float]] = field(default_factory=dict)  # adapter -> label
    batch_size: Histogram = field(default_factory=Histogram)        # texts per forward pass
    # the chat server's (all keyed by the request's model: the base's name or an adapter's)
    chat_requests: dict[str, float] = field(default_factory=dict)     # chat answers 200
    prompt_tokens: dict[str, float] = field(default_factory=dict)
    tokens_generated: dict[str, float] = field(default_factory=dict)
    ttft: dict[str, Histogram] = field(default_factory=dict)          # seconds to first token
    tokens_per_second: dict[str, Histogram] = field(default_factory=dict)   # per request
    chat_finished: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> reason
    batch_rows: Histogram = field(default_factory=Histogram)          # rows per forward pass

    def __sub__(self, other: MetricsSnapshot) -> MetricsSnapshot:
        return MetricsSnapshot(
            chat_requests=_sub(self.chat_requests, other.chat_requests),
            prompt_tokens=_sub(self.prompt_tokens, other.prompt_tokens),
            tokens_generated=_sub(self.tokens_generated, other.tokens_generated),
            ttft={k: v - other.ttft.get(k, Histogram()) for k, v in self.ttft.items()},
            tokens_per_second={k: v - other.tokens_per_second.get(k, Histogram())
                               for k, v in self.tokens_per_second.items()},
            chat_finished={k: _sub(v, other.chat_finished.get(k, {}))
                           for k, v in self.chat_finished.items()},
            batch_rows=self.batch_rows - other.batch_rows,
            requests=_sub(self.requests, other.requests),
            errors=_sub(self.errors, other.errors),
            latency={k: v - other.latency.get(k, Histogram()) for k, v in self.latency.items()},
            confidence={k: v - other.confidence.get(k, Histogram())
                        for k, v in self.confidence.items()},
            predictions={k: _sub(v, other.predictions.get(k, {}))
                         for k, v in self.predictions.items()},
            batch_size=self.batch_size - other.batch_size)

    @property
    def adapters(self) -> list[str]:
        return sorted(set(self.requests) | set(self.predictions))

    def _hist(self, table: dict[str, Histogram], adapter: str | None) -> Histogram:
        if adapter is not None:
            return table.get(adapter, Histogram())
        total = Histogram()
        for h in table.values():
            total = total + h
        return total

    def mean_latency(self, adapter: str | None = None) -> float:
        """Mean seconds per predict request (all adapters when adapter is None)."""
        return self._hist(self.latency, adapter).mean()

    def latency_quantile(self, q: float, adapter: str | None = None) -> float:
        return self._hist(self.latency, adapter).quantile(q)

    def mean_confidence(self, adapter: str | None = None) -> float:
        """Mean top-class probability of the predictions."""
        return self._hist(self.confidence, adapter).mean()

    def low_confidence_share(self, bound: float = 0.9, adapter: str | None = None) -> float:
        """Share of predictions whose top probability is <= bound (a bucket bound)."""
        return self._hist(self.confidence, adapter).share_below(bound)

    def class_shares(self, adapter: str | None = None) -> dict[str, float]:
        """{label: share of the predictions} (sorted by label)."""
        tables = [self.predictions.get(adapter, {})] if adapter is not None \
            else list(self.predictions.values())
        counts: dict[str, float] = {}
        for t in tables:
            for label, n in t.items():
                counts[label] = counts.get(label, 0) + n
        total = sum(counts.values())
        return {k: (counts[k] / total if total else math.nan) for k in sorted(counts)}

    @property
    def batches(self) -> float:
        """Forward passes run."""
        return self.batch_size.count

    def mean_batch(self) -> float:
        """Texts per forward pass."""
        return self.batch_size.mean()

    def mean_ttft(self, model: str | None = None) -> float:
        """Mean seconds from a chat request's arrival to its first token."""
        return self._hist(self.ttft, model).mean()

    def mean_tokens_per_second(self, model: str | None = None) -> float:
        """Mean per-request generation speed after the first token (tokens / s)."""
        return self._hist(self.tokens_per_second, model).mean()

    def mean_rows(self) -> float:
        """Chat rows per forward pass (above 1: requests shared steps)."""
        return self.batch_rows.mean()


def metrics_text(source) -> str:
    """The Prometheus text of a server: `source` is its URL (http://host:port, with or without
    /metrics), create_app's FastAPI app, its Server, or a CollectorRegistry."""
    if isinstance(source, str):
        if not source.startswith(("http://", "https://")):
            raise ValueError(f"{source!r} is not a server URL: give e.g. 'http://127.0.0.1:8000'.")
        url = source.rstrip("/")
        url = url if url.endswith("/metrics") else url + "/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode("utf-8")
    server = getattr(getattr(source, "state", None), "server", source)   # an app, or a Server
    registry = getattr(server, "registry", server)
    if not isinstance(registry, CollectorRegistry):
        raise TypeError(f"Cannot read metrics from {type(source).__name__}: give the server's "
                        f"URL, the app from peftlab.serve.create_app, its Server or a registry.")
    return generate_latest(registry).decode("utf-8")


def parse_metrics(text: str) -> MetricsSnapshot:
    """A MetricsSnapshot from Prometheus text written by `peftlab serve`."""
    snap = MetricsSnapshot()
    hists = {"peftlab_request_latency_seconds": snap.latency,
             "peftlab_prediction_confidence": snap.confidence,
             "peftlab_chat_time_to_first_token_seconds": snap.ttft,
             "peftlab_chat_tokens_per_second": snap.tokens_per_second}
    for fam in text_string_to_metric_families(text):
        if fam.name == "peftlab_requests":
            for s in fam.samples:
                if not s.name.endswith("_total"):
                    continue
                status, adapter = s.labels["status"], s.labels["adapter"]
                if s.labels["endpoint"] == "predict" and status == "200":
                    snap.requests[adapter] = snap.requests.get(adapter, 0) + s.value
                elif s.labels["endpoint"] == "chat" and status == "200":
                    snap.chat_requests[adapter] = snap.chat_requests.get(adapter, 0) + s.value
                elif int(status) >= 400:
                    snap.errors[status] = snap.errors.get(status, 0) + s.value
        elif fam.name == "peftlab_predictions":
            for s in fam.samples:
                if s.name.endswith("_total"):
                    snap.predictions.setdefault(s.labels["adapter"], {})[s.labels["label"]] = s.value
        elif fam.name in ("peftlab_chat_prompt_tokens", "peftlab_chat_tokens_generated"):
            table = snap.prompt_tokens if fam.name.endswith("prompt_tokens") \
                else snap.tokens_generated
            for s in fam.samples:
                if s.name.endswith("_total"):
                    table[s.labels["adapter"]] = s.value
        elif fam.name == "peftlab_chat_finished":
            for s in fam.samples:
                if s.name.endswith("_total"):
                    snap.chat_finished.setdefault(s.labels["adapter"], {})[s.labels["reason"]] = s.value
        elif fam.name in hists or fam.name in ("peftlab_batch_size", "peftlab_chat_batch_rows"):
            series: dict[str, Histogram] = {}
            for s in fam.samples:
                key = s.labels.get("adapter", "")
                h = series.setdefault(key, Histogram())
                if s.name.endswith("_bucket"):
                    h.bounds.append(float(s.labels["le"]))
                    h.cumulative.append(s.value)
                elif s.name.endswith("_sum"):
                    h.sum = s.value
                elif s.name.endswith("_count"):
                    h.count = s.value
            if fam.name == "peftlab_batch_size":
                snap.batch_size = series.get("", Histogram())
            elif fam.name == "peftlab_chat_batch_rows":
                snap.batch_rows = series.get("", Histogram())
            else:
                hists[fam.name].update(series)
    return snap


def read_metrics(source) -> MetricsSnapshot:
    """parse_metrics(metrics_text(source)): see metrics_text for what `source` may be."""
    return parse_metrics(metrics_text(source))
