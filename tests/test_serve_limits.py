"""The server under load and abuse, in-process on 127.0.0.1 (peftlab.serve.start_background):
oversized and malformed bodies, wrong content types, invalid UTF-8, thousands of texts, a
bounded queue that answers 429 when full, 503 before the worker runs, a per-request timeout
(504), a slow client (408), adapters hot-loaded and deleted while requests for them are in
flight, and a flood of mixed good and bad requests from many clients: every request gets its
answer or a clear refusal, the queue never holds more than its bound, memory stays flat.
Every wait is an event with a deadline from tests/timing.py."""

from __future__ import annotations

import json
import os
import resource
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import timing
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

import peftlab as pl

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
requests = pytest.importorskip("requests")
from prometheus_client.parser import text_string_to_metric_families

from peftlab import cli
from peftlab.serve import app as serve_app
from peftlab.serve import create_app, start_background

WORDS = ["the", "film", "was", "good", "bad", "plot", "great", "dull", "movie", "fine"]
TEXTS = ["the film was good", "the plot was dull", "great movie", "the film was bad fine"]
JSON = {"content-type": "application/json"}


def tokenizer():
    return BertTokenizer(vocab={w: i for i, w in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)})


def base():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=2)).eval()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Saved adapters a, b, c (different seeded weights) and what each predicts alone."""
    tmp, tok, out = tmp_path_factory.mktemp("limits"), tokenizer(), {}
    for seed, name in ((1, "a"), (2, "b"), (3, "c")):
        m = pl.lora.apply(base(), pl.lora.LoraConfig(r=2, targets=["query", "value"]))
        pl.data.set_label_names(m, ["neg", "pos"])
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.5, generator=g)
        path = pl.save_adapter(m, tmp / name)
        probs = pl.predict(m.eval(), tok, TEXTS).probabilities
        out[name] = (str(path), {t: probs[i].tolist() for i, t in enumerate(TEXTS)})
    return out


@pytest.fixture
def serve(adapters):
    """serve(**limits) -> (url, Server): adapters a and b on the tiny base, in-process."""
    handles = []

    def start(**limits):
        model = pl.load_adapter(base(), adapters["a"][0], name="a")
        pl.load_adapter(model, adapters["b"][0], name="b")
        app = create_app(model, tokenizer(), **{"max_wait_ms": 1, **limits})
        handles.append(start_background(app, timeout=timing.budget(30)))
        return handles[-1].url, app.state.server

    yield start
    for h in handles:
        h.stop(timeout=timing.budget(10))


def close(got, want):
    return all(abs(x - y) <= 1e-4 for x, y in zip(got, want))


def refusals(url) -> dict[str, float]:
    fams = {f.name: f for f in text_string_to_metric_families(requests.get(url + "/metrics").text)}
    return {s.labels["reason"]: s.value for s in fams["peftlab_refusals"].samples
            if s.name == "peftlab_refusals_total"}


class Hold:
    """Block the model thread (the server's one worker thread) until released: requests then
    pile up in the queue exactly as behind a slow forward pass."""

    def __init__(self, server):
        self.event = threading.Event()
        self.done = server.pool.submit(self.event.wait)

    def release(self):
        self.event.set()
        self.done.result(timeout=timing.budget(10))


# --- the limits, their defaults, the command line ---------------------------------------------

def test_limits_have_documented_defaults_and_are_options_of_peftlab_serve(capsys):
    s = serve_app.Server(None, None)
    assert (s.max_body_bytes, s.max_texts, s.max_chars, s.max_queue, s.timeout) == \
        (1 << 20, 64, 2000, 64, 30.0)
    # the largest valid request fits the body limit, even with every character \u-escaped
    biggest = json.dumps({"texts": ["\u00e9" * s.max_chars] * s.max_texts, "adapter": "x" * 64})
    assert len(biggest.encode()) <= s.max_body_bytes
    from peftlab.serve import limits
    assert "peftlab/serve/limits.py" in serve_app.__doc__
    for doc in ("max_body_bytes", "max_texts", "max_chars", "max_queue", "request_timeout"):
        assert doc in limits.__doc__
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--max-body-bytes", "--max-texts", "--max-chars", "--max-queue",
                 "--request-timeout", "429", "408"):
        assert flag in text
    for bad in (["--max-queue", "0"], ["--request-timeout", "-1"], ["--max-texts", "0"]):
        with pytest.raises(SystemExit) as e:
            cli.main(["serve", "--adapter", "a=/nowhere", *bad])
        assert e.value.code == 2 and "must be a positive" in capsys.readouterr().err
    for kw in ({"max_queue": 0}, {"max_body_bytes": True}, {"request_timeout": float("nan")}):
        with pytest.raises(ValueError):
            serve_app.Server(None, None, **kw)


def test_not_ready_is_503():
    from starlette.testclient import TestClient

    app = create_app(None, None)
    app.state.server.names = lambda: ["a"]
    client = TestClient(app)                    # no `with`: the lifespan (the worker) never runs
    r = client.post("/v1/predict", json={"texts": ["x"]})
    assert r.status_code == 503 and "not ready" in r.json()["error"]
    assert r.headers["retry-after"] == "1"
    h = client.get("/healthz")
    assert h.status_code == 503 and h.json()["status"] == "starting"


# --- bad bodies -----------------------------------------------------------------------------

def test_oversized_malformed_and_mistyped_bodies(serve):
    url, server = serve(max_body_bytes=4096, max_texts=8, max_chars=100)
    cases = [
        (b'{"texts": ["' + b"x" * 5000 + b'"]}', JSON, 413, "max_body_bytes"),
        (iter([b'{"texts": ["', b"y" * 3000, b"z" * 3000, b'"]}']), JSON, 413,
         "max_body_bytes"),                                      # chunked: no Content-Length
        (b'{"texts": ["\xff\xfe bad utf-8"]}', JSON, 400, "malformed"),
        (b"[" * 2000 + b"]" * 2000, JSON, 400, "malformed"),      # nested too deeply
        (b'{"texts": ["ok"]', JSON, 400, "malformed"),
        (b"", JSON, 400, "malformed"),
        (b'"just a string"', JSON, 400, "object"),
        (json.dumps({"texts": ["ok"]}).encode(), {"content-type": "text/plain"}, 415, "JSON"),
        (b"texts=ok", {"content-type": "application/x-www-form-urlencoded"}, 415, "JSON"),
        (json.dumps({"texts": ["x"] * 200}).encode(), JSON, 413, "at most 8"),
        (json.dumps({"texts": ["x" * 101]}).encode(), JSON, 413, "characters"),
        (json.dumps({"texts": [None]}).encode(), JSON, 422, "texts[0]"),
        (json.dumps({"texts": [["nested"]]}).encode(), JSON, 422, "texts[0]"),
        (json.dumps({"texts": {"a": 1}}).encode(), JSON, 422, "texts"),
        (json.dumps({"texts": ["x"], "adapter": ["a"]}).encode(), JSON, 422, "adapter"),
        (json.dumps({"texts": ["x"], "adapter": "zzz"}).encode(), JSON, 404, "unknown"),
    ]
    for body, headers, status, words in cases:
        r = requests.post(url + "/v1/predict", data=body, headers=headers,
                          timeout=timing.budget(30))
        assert r.status_code == status, (body if isinstance(body, bytes) else "chunked",
                                         r.status_code, r.text[:200])
        assert words in r.json()["error"]
    r = requests.post(url + "/v1/adapters", data=b"{" * 5000, headers=JSON)
    assert r.status_code == 413
    r = requests.post(url + "/v1/predict", json={"texts": TEXTS[:2], "adapter": "b"})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2      # still serving
    got = refusals(url)
    assert got["too_large"] == 5 and got["media_type"] == 2 and got["malformed"] == 5
    assert got["wrong_type"] == 4 and got["unknown_adapter"] == 1


# --- the queue bound, the timeout, slow clients ----------------------------------------------

def test_a_full_queue_answers_429_and_the_bound_holds(serve, adapters):
    url, server = serve(max_queue=4, max_batch=2)
    hold = Hold(server)
    with ThreadPoolExecutor(24) as pool:
        futures = [pool.submit(requests.post, url + "/v1/predict",
                               json={"texts": [TEXTS[i % 4]], "adapter": "ab"[i % 2]},
                               timeout=timing.budget(60)) for i in range(24)]
        # the worker holds one batch (at most max_batch texts), the queue max_queue requests;
        # every other request is refused at once
        timing.wait_until(lambda: sum(f.done() for f in futures) >= 24 - 4 - 2,
                          "the requests beyond the queue bound to be refused", 30)
        assert server.queue.qsize() <= 4
        hold.release()
        answers = [f.result() for f in futures]
    codes = Counter(r.status_code for r in answers)
    assert set(codes) <= {200, 429} and codes[429] >= 24 - 4 - 2 and codes[200] >= 4, codes
    for i, r in enumerate(answers):
        if r.status_code == 429:
            assert "busy" in r.json()["error"] and r.headers["retry-after"] == "1"
        else:
            p = r.json()["predictions"]
            assert len(p) == 1 and close(p[0]["probabilities"],
                                         adapters["ab"[i % 2]][1][TEXTS[i % 4]])
    assert refusals(url)["queue_full"] == codes[429]
    assert requests.post(url + "/v1/predict", json={"texts": ["great movie"]}).status_code == 200


def test_a_request_the_model_does_not_reach_in_time_is_504_and_dropped(serve):
    url, server = serve(request_timeout=0.5)
    hold = Hold(server)
    try:
        t0 = time.monotonic()
        r = requests.post(url + "/v1/predict", json={"texts": ["the film"]},
                          timeout=timing.budget(30))
        assert r.status_code == 504 and "0.5 s" in r.json()["error"]
        assert time.monotonic() - t0 < timing.budget(10)
    finally:
        hold.release()
    r = requests.post(url + "/v1/predict", json={"texts": ["the film"]})
    assert r.status_code == 200
    fams = {f.name: f for f in text_string_to_metric_families(requests.get(url + "/metrics").text)}
    passes = {s.name: s.value for s in fams["peftlab_batch_size"].samples}
    assert passes["peftlab_batch_size_count"] == 1       # the timed-out request never ran
    assert refusals(url)["timeout"] == 1


def test_a_slow_client_gets_408_and_does_not_hold_up_others(serve):
    url, server = serve(request_timeout=1.0)
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timing.budget(30)) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 200\r\n\r\n{\"texts\": [\"the")   # ... and stalls
        r = requests.post(url + "/v1/predict", json={"texts": ["great movie"]})
        assert r.status_code == 200                       # others are served meanwhile
        reply = b""
        deadline = time.monotonic() + timing.budget(20)
        while b"\r\n\r\n" not in reply and time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert refusals(url)["slow_client"] == 1


# --- hot-load and delete under traffic, and a flood -------------------------------------------

def test_hot_load_and_delete_while_requests_are_in_flight(serve, adapters):
    url, server = serve()
    stop = threading.Event()

    def client(k):
        got = []
        while not stop.is_set() or len(got) < 5:
            text = TEXTS[(k + len(got)) % 4]
            r = requests.post(url + "/v1/predict", json={"texts": [text], "adapter": "b"},
                              timeout=timing.budget(60))
            got.append((text, r.status_code, r.json()))
        return got

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client, k) for k in range(6)]
        for i in range(6):                              # delete b, load it back (b or c)
            assert requests.delete(url + "/v1/adapters/b").status_code == 200
            r = requests.post(url + "/v1/adapters",
                              json={"name": "b", "path": adapters["bc"[i % 2]][0]})
            assert r.status_code == 201, r.text
        stop.set()
        results = [x for f in futures for x in f.result(timeout=timing.budget(120))]
    codes = Counter(status for _, status, _ in results)
    assert set(codes) <= {200, 404}, codes
    for text, status, body in results:
        if status == 404:
            assert "unknown adapter 'b'" in body["error"]
        else:
            p = body["predictions"][0]["probabilities"]
            assert close(p, adapters["b"][1][text]) or close(p, adapters["c"][1][text])


def rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), else the peak so far."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


MIXED = [
    ({"texts": TEXTS[:2], "adapter": "a"}, 200), ({"texts": TEXTS[1:], "adapter": "b"}, 200),
    ({"texts": ["great movie"]}, 200), ({"texts": []}, 422), ({"texts": ["x"] * 100}, 413),
    ({"texts": ["x"], "adapter": "nope"}, 404), (b"{broken", 400), (b"\xff\xff", 400),
    ({"texts": ["x" * 5000]}, 413), ({"texts": [1, 2]}, 422),
]


def test_a_flood_of_mixed_requests_is_answered_with_bounded_queue_and_memory(serve, adapters):
    url, server = serve(max_queue=8)
    depth = []

    def client(k, n):
        s = requests.Session()
        out = []
        for j in range(n):
            body, want = MIXED[(k * 7 + j) % len(MIXED)]
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = s.post(url + "/v1/predict", data=data, headers=JSON, timeout=timing.budget(60))
            out.append((body, want, r.status_code, r.json()))
            depth.append(server.queue.qsize())
        return out

    def flood(clients, n):
        with ThreadPoolExecutor(clients) as pool:
            return [x for f in [pool.submit(client, k, n) for k in range(clients)]
                    for x in f.result(timeout=timing.budget(300))]

    flood(8, 4)                                         # warm-up: allocator, caches
    before = rss_mb()
    results = flood(10, 8) + flood(10, 8)               # 160 requests from 10 clients
    growth = rss_mb() - before                          # (benchmarks/soak_serve.py: longer)
    assert len(results) == 160
    codes = Counter()
    for body, want, status, answer in results:
        codes[status] += 1
        if status == 429:                               # the queue bound: a clear refusal
            assert "busy" in answer["error"]
            continue
        assert status == want, (body, status, answer)
        if want == 200:
            for t, p in zip(body["texts"], answer["predictions"]):
                assert close(p["probabilities"], adapters[body.get("adapter", "a")][1][t])
        else:
            assert answer["error"]
    assert max(depth) <= 8
    assert growth < max(30.0, 0.1 * before), f"memory grew {growth:.0f} MB over {before:.0f} MB"
    assert requests.get(url + "/healthz").json()["status"] == "ok"
