"""The chat server under load: 200 requests from 8 concurrent clients, 20 of them malformed and
interleaved, greedy answers for three models (the base and two adapters), some streamed. Every
good request is answered with pl.generate's answer, every bad one with its own error, none is
lost, and memory stays flat (resident memory after the run within a bound of before it)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from chat_fixtures import smollm2_tokenizer
from serve_chat_fixtures import (
    PROMPTS,
    expected,
    messages,
    rss_mib,
    save_adapters,
    serve,
    with_adapters,
)

requests = pytest.importorskip("requests")

from peftlab.serve import read_metrics

MODELS = {"base": None, "a": "a", "b": "b"}
MALFORMED = [  # (body, status, error code)
    (b"{\"model\": \"a\", ", 400, "invalid_json"),
    ({"model": "nope", "messages": [{"role": "user", "content": "Hi"}]}, 404, "model_not_found"),
    ({"model": "a", "messages": []}, 400, "empty_array"),
    ({"model": "b", "messages": [{"role": "user", "content": "Hi"}], "n": 3}, 400, "unsupported_value"),
    ({"model": "a", "messages": [{"role": "user", "content": "x " * 400}]}, 400,
     "context_length_exceeded"),
]


def _requests(n: int = 200, bad_every: int = 10):
    """n requests: every bad_every-th malformed (20 of 200), every 7th good one streamed."""
    out = []
    for i in range(n):
        if i % bad_every == bad_every - 1:
            out.append(("bad", MALFORMED[(i // bad_every) % len(MALFORMED)]))
        else:
            model, prompt = list(MODELS)[i % 3], (i // 3) % len(PROMPTS)
            out.append(("good", (model, prompt, i % 7 == 0)))
    return out


def _send(url, item):
    kind, spec = item
    if kind == "bad":
        body = spec[0] if isinstance(spec[0], bytes) else json.dumps(spec[0]).encode()
        r = requests.post(url, data=body, headers={"content-type": "application/json"})
        return item, r.status_code, r.json()["error"]["code"]
    model, p, stream = spec
    body = {"model": model, "messages": messages(PROMPTS[p]), "max_tokens": 4, "temperature": 0,
            "stream": stream}
    r = requests.post(url, json=body, stream=stream)
    if not stream:
        return item, r.status_code, r.json()["choices"][0]["message"]["content"]
    lines = [line[6:] for line in r.iter_lines() if line.startswith(b"data: ")]
    assert lines[-1] == b"[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    return item, r.status_code, "".join(c["choices"][0]["delta"].get("content", "")
                                        for c in chunks if c["choices"])


def test_200_requests_with_20_malformed_none_lost_memory_flat(tmp_path_factory):
    tok = smollm2_tokenizer()
    paths = save_adapters(tmp_path_factory.mktemp("load_adapters"))
    ref = with_adapters(paths, ["a", "b"])
    want = {(m, p): expected(ref, tok, PROMPTS[p], MODELS[m], max_new_tokens=4).text
            for m in MODELS for p in range(len(PROMPTS))}
    handle, srv = serve(with_adapters(paths, ["a", "b"]), tok, max_batch=8, max_tokens=16)
    url = handle.url + "/v1/chat/completions"
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda it: _send(url, it), _requests(40)))         # warm up
            before, snap0 = rss_mib(), read_metrics(handle.url)
            items = _requests(200)
            results = list(pool.map(lambda it: _send(url, it), items))
        after = rss_mib()
        window = read_metrics(handle.url) - snap0
    finally:
        handle.stop()
    assert len(results) == 200 and sum(k == "bad" for k, _ in items) == 20
    for (kind, spec), status, got in results:
        if kind == "bad":
            assert (status, got) == spec[1:], (spec, status, got)
        else:
            model, p, _ = spec
            assert status == 200 and got == want[(model, p)], (spec, got)
    assert sum(window.chat_requests.values()) == 180
    assert window.errors == {"400": 16, "404": 4}
    assert not srv.engine.rows and srv.engine.batch is None and not srv.engine.waiting
    print(f"resident memory {before:.0f} -> {after:.0f} MiB over 200 requests; "
          f"{window.mean_rows():.2f} rows per forward pass")
    assert after - before < 64, (before, after)
