"""ServeMonitor on the chat server (peftlab/widgets/serve_monitor_chat.py): per model, the
requests, tokens and finish reasons equal what the clients were answered; windows subtract;
tokens/s over time comes from the readings of successive refreshes; the classifier's view is
untouched. The tiny Llama with the real SmolLM2 tokenizer (tests/chat_fixtures.py)."""

from __future__ import annotations

import math

import pytest
from chat_fixtures import smollm2_tokenizer
from serve_chat_fixtures import save_adapters, serve, with_adapters

from peftlab import widgets
from peftlab.serve import parse_metrics
from peftlab.serve.metrics import Histogram, MetricsSnapshot
from peftlab.widgets.serve_monitor_chat import ThroughputHistory, chat_figure, is_chat

requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    paths = save_adapters(tmp_path_factory.mktemp("monitor_chat"))
    handle, server = serve(with_adapters(paths, ["a", "b"]), smollm2_tokenizer(), max_batch=4,
                           max_tokens=16)
    yield handle.url, server
    handle.stop()


def ask(url, model, text, max_tokens=6):
    r = requests.post(url + "/v1/chat/completions", json={
        "model": model, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": text}]}, timeout=60)
    return r


def test_monitor_shows_chat_requests_tokens_and_rates_per_model(served):
    url, _ = served
    mon = widgets.ServeMonitor(url, interval=0.5)
    assert is_chat(mon.snapshot)                    # before any traffic: the chat view
    assert mon.chat_rows() == [] and "0 chat requests" in mon.summary()
    assert mon.rows() == []                         # the classifier's rows stay empty
    sent = {"a": 0, "b": 0, "base": 0}
    for model, text in (("a", "Hi"), ("b", "Hi"), ("a", "2+2?"), ("base", "Hello there")):
        r = ask(url, model, text)
        assert r.status_code == 200
        sent[model] += r.json()["usage"]["completion_tokens"]
    assert ask(url, "nope", "Hi").status_code == 404
    mon._button.click()
    rows = {r["model"]: r for r in mon.chat_rows()}
    assert {m: r["requests"] for m, r in rows.items()} == {"a": 2, "b": 1, "base": 1}
    assert {m: r["tokens"] for m, r in rows.items()} == sent
    assert all(sum(r["finished"].values()) == r["requests"] for r in rows.values())
    assert all(r["mean_ttft"] > 0 and r["prompt_tokens"] > 0 for r in rows.values())
    text = mon.summary()
    assert "4 chat requests" in text and "errors: 404: 1" in text and "first token" in text
    assert "404: 1" in mon._head.value and "tokens/s per request" in mon._table.value
    png = mon._image.value
    assert png[:4] == b"\x89PNG"
    rates = mon.history.rates()                     # two readings: one interval per model
    assert set(rates) == {"a", "b", "base"} and all(len(v) == 1 for v in rates.values())
    assert sum(v[0][1] for v in rates.values()) > 0
    mon.mark()
    assert mon._scope.value == "since mark" and all(r["requests"] == 0 for r in mon.chat_rows())
    r = ask(url, "b", "Name a colour.")
    mon.refresh()
    window = {r["model"]: r["requests"] for r in mon.chat_rows()}
    assert window == {"a": 0, "b": 1, "base": 0}
    assert mon.window.tokens_generated["b"] == r.json()["usage"]["completion_tokens"]
    assert mon._image.value != png
    mon._scope.value = "all time"
    assert {r["model"]: r["requests"] for r in mon.chat_rows()}["b"] == 2
    assert len(mon.history.readings) == 4           # the first, the click, mark(), refresh()


def test_throughput_history_is_the_difference_of_readings():
    h = ThroughputHistory(keep=3, window=0)         # window 0: between two readings
    assert h.rates() == {} and h.total_rate() == []
    for t, a, b in ((10.0, 0, 0), (12.0, 20, 0), (14.0, 30, 8)):
        h.record(MetricsSnapshot(tokens_generated={"a": a, "b": b}), t=t)
    assert h.rates() == {"a": [(2.0, 10.0), (4.0, 5.0)], "b": [(2.0, 0.0), (4.0, 4.0)]}
    assert h.total_rate() == [(2.0, 10.0), (4.0, 9.0)]
    # a trailing window: from the earliest reading at most 5 s back (10 s -> 14 s)
    assert h.rates(window=5)["a"] == [(2.0, 10.0), (4.0, 7.5)]
    assert h.rates(window=3)["a"] == [(2.0, 10.0), (4.0, 5.0)]
    h.record(MetricsSnapshot(tokens_generated={"a": 30, "b": 8, "c": 6}), t=16.0)
    assert len(h.readings) == 3                     # keep: the oldest reading dropped
    assert h.rates()["c"] == [(2.0, 0.0), (4.0, 3.0)]
    assert h.rates(window=5)["c"] == [(2.0, 0.0), (4.0, 1.5)]
    assert ThroughputHistory().window == 5.0
    fig = chat_figure(MetricsSnapshot(batch_rows=Histogram([1, 2, 4, math.inf], [3, 5, 6, 6],
                                                           13, 6)), h)
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["1", "2", "3-4"]
    many = Histogram([1, 2, 4, 8, 16, 32, math.inf], [3, 5, 6, 6, 6, 6, 6], 13, 6)
    fig = chat_figure(MetricsSnapshot(batch_rows=many), h)     # empty buckets past 5-8 dropped
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["1", "2", "3-4", "5-8"]


def test_classifier_metrics_keep_the_classifier_view():
    text = ("# TYPE peftlab_batch_size histogram\n"
            'peftlab_batch_size_bucket{le="1.0"} 2.0\npeftlab_batch_size_bucket{le="+Inf"} 2.0\n'
            "peftlab_batch_size_count 2.0\npeftlab_batch_size_sum 2.0\n")
    assert not is_chat(parse_metrics(text)) and not is_chat(MetricsSnapshot())
