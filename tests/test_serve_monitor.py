"""Reading a server's metrics back (peftlab.serve.metrics), the in-process background server
with the lifespan worker, and the ServeMonitor widget: counts per adapter, latency, confidence
and predicted classes equal what the clients saw; windows subtract; refresh follows traffic."""

from __future__ import annotations

import math
import warnings

import pytest
import timing
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

import peftlab as pl
from peftlab import widgets

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
requests = pytest.importorskip("requests")
from peftlab.serve import create_app, parse_metrics, read_metrics, start_background
from peftlab.serve.metrics import Histogram

WORDS = ["the", "film", "was", "good", "bad", "plot", "great", "dull", "movie", "fine"]
TEXTS = ["the film was good", "the plot was dull", "great movie", "the film was bad fine"]


@pytest.fixture
def served(tmp_path):
    """A tiny BERT with adapters 'a' and 'b' (different seeded weights), served in-process."""
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)})

    def base():
        torch.manual_seed(0)
        return BertForSequenceClassification(BertConfig(
            vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
            num_labels=2)).eval()

    paths = {}
    for seed, name in ((1, "a"), (2, "b")):
        m = pl.lora.apply(base(), pl.lora.LoraConfig(r=2, targets=["query", "value"]))
        pl.data.set_label_names(m, ["neg", "pos"])
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.5, generator=g)
        paths[name] = pl.save_adapter(m, tmp_path / name)
    model = pl.load_adapter(base(), paths["a"], name="a")
    pl.load_adapter(model, paths["b"], name="b")
    app = create_app(model, tok, max_wait_ms=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)      # no on_event deprecation
        handle = start_background(app, timeout=timing.budget(30))
    yield handle, app, model, tok
    handle.stop()


def test_metrics_equal_what_clients_saw_and_windows_subtract(served):
    handle, app, _, _ = served
    assert read_metrics(handle.url).requests == {}
    seen = {"a": [], "b": []}
    for i in range(6):
        name = "ab"[i % 2]
        body = requests.post(handle.url + "/v1/predict",
                             json={"texts": TEXTS[: 1 + i % 3], "adapter": name}).json()
        seen[name] += body["predictions"]
    assert requests.post(handle.url + "/v1/predict", json={"texts": []}).status_code == 422
    over_http, in_process = read_metrics(handle.url), read_metrics(app)
    assert over_http.requests == in_process.requests == {"a": 3, "b": 3}
    assert over_http.errors == {"422": 1}
    for name, preds in seen.items():
        conf = [max(p["probabilities"]) for p in preds]
        assert over_http.mean_confidence(name) == pytest.approx(sum(conf) / len(conf), abs=1e-6)
        labels = [p["label"] for p in preds]
        want = {k: labels.count(k) / len(labels) for k in sorted(set(labels))}
        assert over_http.class_shares(name) == pytest.approx(want)
        below = sum(c <= 0.9 for c in conf) / len(conf)
        assert over_http.low_confidence_share(0.9, name) == pytest.approx(below)
    assert over_http.batch_size.sum == sum(len(v) for v in seen.values())
    assert over_http.mean_latency() > 0 and over_http.latency_quantile(0.99) > 0
    # a window: only what came after the first reading
    requests.post(handle.url + "/v1/predict", json={"texts": TEXTS, "adapter": "b"})
    window = read_metrics(handle.url) - over_http
    assert window.requests == {"a": 0, "b": 1} and window.confidence["b"].count == len(TEXTS)
    assert window.confidence["a"].count == 0 and math.isnan(window.mean_confidence("a"))


def test_histogram_quantile_interpolates_like_prometheus():
    h = Histogram([0.1, 0.2, 0.4, math.inf], [2, 6, 10, 10], sum=2.0, count=10)
    assert h.quantile(0.5) == pytest.approx(0.1 + 0.1 * (5 - 2) / 4)
    assert h.quantile(1.0) == pytest.approx(0.4)
    assert h.counts() == [2, 4, 4, 0] and h.share_below(0.2) == 0.6
    with pytest.raises(ValueError, match="bucket bound"):
        h.share_below(0.3)
    with pytest.raises(ValueError, match="buckets"):
        h - Histogram([1.0, math.inf], [1, 1], 1, 1)


def test_parse_and_bad_sources():
    assert parse_metrics("").requests == {}
    with pytest.raises(ValueError, match="URL"):
        read_metrics("localhost:8000")
    with pytest.raises(TypeError, match="URL"):
        read_metrics(object())


def test_serve_monitor_widget_follows_traffic(served):
    handle, app, _, _ = served
    mon = widgets.ServeMonitor(handle.url, interval=0.5)
    assert mon.rows() == [] and "0 requests" in mon.summary()
    requests.post(handle.url + "/v1/predict", json={"texts": TEXTS, "adapter": "a"})
    mon._button.click()                                      # the refresh button
    (row,) = mon.rows()
    assert row["adapter"] == "a" and row["requests"] == 1
    assert sum(row["classes"].values()) == pytest.approx(1.0)
    assert 0.5 <= row["mean_confidence"] <= 1 and row["p99_latency"] > 0
    png = mon._image.value
    assert png[:4] == b"\x89PNG"
    requests.post(handle.url + "/v1/predict", json={"texts": ["x"], "adapter": "zz"})   # 404
    mon.refresh()
    assert "errors: 404: 1" in mon.summary() and "404: 1" in mon._head.value
    mon.mark()                                               # a window starts here
    assert mon._scope.value == "since mark" and mon.rows()[0]["requests"] == 0
    assert "errors: none" in mon.summary()
    requests.post(handle.url + "/v1/predict", json={"texts": TEXTS[:2], "adapter": "b"})
    mon.refresh()
    assert {r["adapter"]: r["requests"] for r in mon.rows()} == {"a": 0, "b": 1}
    assert mon.window.confidence["b"].count == 2 and mon._image.value != png
    mon._scope.value = "all time"
    assert {r["adapter"]: r["requests"] for r in mon.rows()} == {"a": 1, "b": 1}
    assert "peftlab-servemonitor" in mon.widget._dom_classes
    # in-process source, and the auto-refresh timer picks up new traffic by itself
    local = widgets.ServeMonitor(app, interval=0.2)
    local._auto.value = True
    try:
        requests.post(handle.url + "/v1/predict", json={"texts": TEXTS[:1], "adapter": "a"})
        # the timer refreshes every 0.2 s: a few refreshes on an idle machine, 50 allowed
        timing.wait_until(lambda: local.snapshot.requests.get("a") == 2,
                          "the ServeMonitor's auto-refresh to show the new request", 10,
                          interval=0.05)
        assert local.snapshot.requests.get("a") == 2
    finally:
        local.stop()
    assert local._timer is None


def test_serve_monitor_reports_an_unreachable_server():
    from peftlab.serve import free_port
    mon = widgets.ServeMonitor(f"http://127.0.0.1:{free_port()}")
    assert "cannot read metrics" in mon._head.value and mon.rows() == []
    with pytest.raises(ValueError, match="interval"):
        widgets.ServeMonitor("http://127.0.0.1:1", interval=0)
