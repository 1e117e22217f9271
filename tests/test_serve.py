"""`peftlab serve`: started as a real process on a free local port; every endpoint, every bad
input, concurrent clients with mixed adapters (micro-batched, nothing lost, each answer equal
to that adapter alone), a hot-load mid-stream, and /metrics read with prometheus_client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import timing
import torch

import peftlab as pl

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
requests = pytest.importorskip("requests")
from prometheus_client.parser import text_string_to_metric_families

TEXTS = ["my order is late again", "great service, thanks", "the app crashes",
         "refund please", "love the new update", "nothing works"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Three saved adapters on the embedded base and what each predicts alone."""
    tmp = tmp_path_factory.mktemp("serve")
    model, tok = pl.models.text_classifier(num_labels=2, seed=0)
    pl.lora.apply(model, pl.lora.LoraConfig(r=2, targets=["query"]))
    pl.data.set_label_names(model, ["neg", "pos"])
    out = {}
    for i, name in enumerate(("a", "b", "c")):
        g = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.3, generator=g)
        path = pl.save_adapter(model, tmp / name)
        preds = pl.predict(model, tok, TEXTS)
        out[name] = (str(path), {t: preds.probabilities[j].tolist() for j, t in enumerate(TEXTS)})
    (tmp / "empty").mkdir()
    out["empty"] = (str(tmp / "empty"), None)
    return out


@pytest.fixture(scope="module")
def server(adapters):
    port = free_port()
    cmd = [sys.executable, "-m", "peftlab", "serve", "--adapter", f"a={adapters['a'][0]}",
           "--adapter", f"b={adapters['b'][0]}", "--host", "127.0.0.1", "--port", str(port),
           "--max-wait-ms", "20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    limit = timing.budget(240)        # start-up: import torch, load the base, two adapters
    deadline = time.monotonic() + limit
    while True:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read().decode()[-3000:])
        try:
            if requests.get(url + "/healthz", timeout=5).status_code == 200:
                break
        except requests.RequestException:      # not listening yet, or too busy to answer
            pass
        if time.monotonic() > deadline:
            proc.kill()
            timing.slow("`peftlab serve` start-up (until /healthz answers)", limit)
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=timing.budget(30))
    except subprocess.TimeoutExpired:         # it did not stop on SIGTERM in time: end it
        proc.kill()
        proc.wait()


def close(got, want):
    return all(abs(x - y) <= 1e-4 for x, y in zip(got, want))


def test_endpoints_and_predictions(server, adapters):
    h = requests.get(server + "/healthz").json()
    assert h == {"status": "ok", "adapters": ["a", "b"]}
    assert requests.get(server + "/v1/adapters").json() == {"adapters": ["a", "b"],
                                                            "default": "a"}
    for name in ("a", "b"):
        r = requests.post(server + "/v1/predict", json={"texts": TEXTS[:3], "adapter": name})
        assert r.status_code == 200
        body = r.json()
        assert body["adapter"] == name and len(body["predictions"]) == 3
        for t, p in zip(TEXTS, body["predictions"]):
            assert close(p["probabilities"], adapters[name][1][t])
            assert p["label"] == ["neg", "pos"][max(range(2), key=lambda k: p["probabilities"][k])]
    r = requests.post(server + "/v1/predict", json={"texts": ["x"]})     # default adapter
    assert r.status_code == 200 and r.json()["adapter"] == "a"


@pytest.mark.parametrize("body,status,words", [
    (b"{not json", 400, "malformed"), (b"[1, 2]", 400, "object"),
    (json.dumps({"adapter": "a"}), 422, "texts"), (json.dumps({"texts": []}), 422, "texts"),
    (json.dumps({"texts": "one"}), 422, "texts"), (json.dumps({"texts": ["ok", 3]}), 422, "texts[1]"),
    (json.dumps({"texts": ["x"] * 65}), 413, "at most"),
    (json.dumps({"texts": ["x" * 2001]}), 413, "characters"),
    (json.dumps({"texts": ["x"], "adapter": "nope"}), 404, "unknown adapter"),
    (json.dumps({"texts": ["x"], "adapter": 5}), 422, "adapter"),
])
def test_bad_predict_requests_answer_json(server, body, status, words):
    r = requests.post(server + "/v1/predict", data=body,
                      headers={"content-type": "application/json"})
    assert r.status_code == status
    assert words in r.json()["error"]
    assert requests.get(server + "/healthz").status_code == 200       # still serving


def test_bad_adapter_requests(server, adapters):
    r = requests.post(server + "/v1/adapters", json={"name": "x", "path": adapters["empty"][0]})
    assert r.status_code == 400 and "error" in r.json()
    r = requests.post(server + "/v1/adapters", json={"name": "x"})
    assert r.status_code == 422
    r = requests.post(server + "/v1/adapters", data=b"nope")
    assert r.status_code == 400
    assert requests.delete(server + "/v1/adapters/zzz").status_code == 404
    assert requests.delete(server + "/v1/adapters/a").status_code == 409
    r = requests.post(server + "/v1/predict", json={"texts": TEXTS[:1], "adapter": "b"})
    assert r.status_code == 200                                        # the old ones serve on
    assert close(r.json()["predictions"][0]["probabilities"], adapters["b"][1][TEXTS[0]])


def test_concurrent_mixed_clients_hot_load_and_metrics(server, adapters):
    def client(k):
        got = []
        for j in range(12):
            name = "ab"[(k + j) % 2]
            texts = [TEXTS[(k + j + i) % len(TEXTS)] for i in range(1 + j % 3)]
            r = requests.post(server + "/v1/predict", json={"texts": texts, "adapter": name})
            got.append((name, texts, r.status_code, r.json()))
        return got

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client, k) for k in range(8)]
        time.sleep(0.5)
        r = requests.post(server + "/v1/adapters", json={"name": "b", "path": adapters["c"][0]})
        assert r.status_code == 201, r.text
        results = [x for f in futures for x in f.result()]
    assert len(results) == 96
    for name, texts, status, body in results:
        assert status == 200, body
        assert len(body["predictions"]) == len(texts)
        for t, p in zip(texts, body["predictions"]):
            versions = ["a"] if name == "a" else ["b", "c"]        # b, or its new version c
            assert any(close(p["probabilities"], adapters[v][1][t]) for v in versions)
    r = requests.post(server + "/v1/predict", json={"texts": TEXTS, "adapter": "b"})
    for t, p in zip(TEXTS, r.json()["predictions"]):                 # the new version serves
        assert close(p["probabilities"], adapters["c"][1][t])

    text = requests.get(server + "/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    ok = sum(s.value for s in fams["peftlab_requests"].samples
             if s.name == "peftlab_requests_total" and s.labels["status"] == "200"
             and s.labels["endpoint"] == "predict")
    assert ok >= 96
    errors = {s.labels["status"] for s in fams["peftlab_requests"].samples
              if s.name == "peftlab_requests_total"}
    assert {"400", "404", "413", "422"} <= errors
    batches = {s.name: s.value for s in fams["peftlab_batch_size"].samples}
    assert batches["peftlab_batch_size_count"] < ok                   # requests shared passes
    assert any(s.labels.get("adapter") == "b" for s in fams["peftlab_prediction_confidence"].samples)
    assert "peftlab_request_latency_seconds" in fams and "peftlab_input_length_chars" in fams

    assert requests.delete(server + "/v1/adapters/b").json()["adapters"] == ["a"]
    assert requests.post(server + "/v1/predict",
                         json={"texts": ["x"], "adapter": "b"}).status_code == 404
