"""The continuous-batching engine without HTTP: rows joining a running batch at different steps,
each through its own adapter, compute what they compute alone (every step's logits within 1e-4
of a plain forward pass, the tokens of pl.generate); the batch's cache grows, shrinks and is
freed; the bounded queue (429), 503 and the request timeout (504) over HTTP with the engine
held; `peftlab serve` picks the chat server for a chat adapter or run folder."""

from __future__ import annotations

import argparse
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import timing
import torch
from chat_fixtures import smollm2_tokenizer
from serve_chat_fixtures import PROMPTS, expected, messages, save_adapters, serve, with_adapters

import peftlab as pl
from peftlab.chat import ChatTemplate
from peftlab.serve.chat_batch import Batch, kv_tensors
from peftlab.serve.chat_engine import ChatEngine, Row, held_back
from peftlab.serve.chat_protocol import ApiError

requests = pytest.importorskip("requests")


@pytest.fixture(scope="module")
def tok():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return save_adapters(tmp_path_factory.mktemp("engine_adapters"))


@pytest.fixture(scope="module")
def ref(paths):
    return with_adapters(paths, ["a", "b"])


class Sink:
    """Collects a row's events; done is set by its "done" or "error"."""

    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, kind, value):
        self.events.append((kind, value))
        if kind in ("done", "error"):
            self.done.set()


def _row(tok, prompt, adapter, n, **kw):
    sink = Sink()
    ids = ChatTemplate(tok).prompt_ids(messages(prompt))
    return Row(prompt=ids, adapter=adapter, max_tokens=n, emit=sink, **kw), sink


@torch.no_grad()
def test_rows_joining_at_different_steps_compute_what_they_compute_alone(paths, ref, tok):
    engine = ChatEngine(with_adapters(paths, ["a", "b"]), tok, max_batch=8,
                        record_logits=True)
    steps = []
    engine.on_step = steps.append                        # rows per forward pass
    engine.start()
    plan = [(PROMPTS[1], "a", 16), (PROMPTS[2], "b", 12), (PROMPTS[4], None, 10),
            (PROMPTS[0], "a", 14), (PROMPTS[3], "b", 8)]
    rows = []
    try:
        for k, (prompt, adapter, n) in enumerate(plan):
            row, sink = _row(tok, prompt, adapter, n)
            rows.append((row, sink))
            engine.submit(row)
            if k < len(plan) - 1:        # the next request arrives while this one generates
                timing.wait_until(lambda row=row: row.sampled >= 2 or row.finish,
                                  "a row's 2nd token",
                                  30, interval=0.001)
        for row, sink in rows:
            assert sink.done.wait(timing.budget(60))
        timing.wait_until(lambda: engine.batch is None and not engine.rows, "the rows to leave", 10)
    finally:
        engine.stop()
    assert max(steps) >= 3, steps                      # rows did generate side by side
    worst, ties = 0.0, []
    for (row, sink), (prompt, adapter, n) in zip(rows, plan):
        want = expected(ref, tok, prompt, adapter, max_new_tokens=n)
        kind, (text, finish) = sink.events[-1]
        if row.tokens != want.tokens:           # allowed only at a near-tie (reported)
            k = next(i for i, (x, y) in enumerate(zip(row.tokens, want.tokens)) if x != y)
            top = row.logits[k].topk(2).values
            ties.append(float(top[0] - top[1]))
            continue
        assert (kind, text, finish) == ("done", want.text, want.finish_reason)
        seq = torch.tensor([row.prompt + row.tokens])
        with pl.lora.route(ref, [adapter]):            # no cache, no padding: the reference
            alone = ref(seq).logits[0, len(row.prompt) - 1:].float()
        got = torch.stack(row.logits)
        worst = max(worst, float((got - alone[:len(got)]).abs().max()))
    print(f"largest logit difference {worst:.2e}; near-ties {ties}")
    assert worst < 1e-4 and all(gap < 1e-4 for gap in ties), (worst, ties)


@torch.no_grad()
def test_the_batch_joins_leaves_and_trims(ref, tok):
    ids = [ChatTemplate(tok).prompt_ids(messages(p)) for p in PROMPTS[:3]]
    both = Batch.prefill(ref, ids, tok.pad_token_id)
    joined = Batch.prefill(ref, ids[:1], tok.pad_token_id).join(
        ref, Batch.prefill(ref, ids[1:], tok.pad_token_id))
    assert joined.rows == 3 and joined.length == max(map(len, ids))
    torch.testing.assert_close(joined.logits, both.logits, atol=1e-4, rtol=0)
    assert torch.equal(joined.mask, both.mask) and torch.equal(joined.pos, both.pos)
    shortest = min(range(3), key=lambda i: len(ids[i]))
    alone = joined.keep(ref, [shortest])                 # the others leave: padding trimmed
    assert alone.length == len(ids[shortest]) and bool(alone.mask.all())
    assert all(k.shape[0] == 1 and k.shape[2] == alone.length for k, _ in kv_tensors(alone.cache))
    assert joined.keep(ref, []) is None
    alone.step(ref, alone.logits.argmax(-1))
    assert alone.length == len(ids[shortest]) + 1


def test_streamed_text_waits_for_stop_strings_and_whole_characters():
    assert held_back("hello wor", ["world"]) == 3 and held_back("hello", ["xyz"]) == 0
    assert held_back("caf\ufffd", []) == 1


def test_queue_full_timeout_and_not_ready(paths, tok):
    handle, srv = serve(with_adapters(paths, ["a"]), tok, max_batch=1, max_queue=2)
    body = {"model": "a", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    url = handle.url + "/v1/chat/completions"
    gate = threading.Event()
    try:
        held = srv.engine.call(gate.wait)                # the engine thread is busy
        srv.timeout = 0.5                                # the request timeout, for one request
        r = requests.post(url, json=body)
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        srv.timeout = timing.budget(60)
        with ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(requests.post, url, json=body) for _ in range(2)]
            timing.wait_until(lambda: len([w for w in srv.engine.waiting if not w.cancelled])
                              == 2, "two queued requests", 30, interval=0.01)
            r = requests.post(url, json=body)           # max_queue are waiting: one more
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
            gate.set()
            assert [f.result().status_code for f in waiting] == [200, 200]
        held.result(timing.budget(10))
        text = requests.get(handle.url + "/metrics").text
        assert 'peftlab_refusals_total{reason="queue_full"} 1.0' in text
        assert 'peftlab_chat_finished_total{adapter="a",reason="timeout"} 1.0' in text
    finally:
        gate.set()
        handle.stop()
    with pytest.raises(ApiError) as e:                   # stopped: 503
        srv.engine.submit(Row(prompt=[1], adapter=None, max_tokens=1, emit=Sink()))
    assert e.value.status == 503


def test_peftlab_serve_picks_the_chat_server(paths, tok, tmp_path, capsys):
    from serve_chat_fixtures import base_model
    from starlette.testclient import TestClient

    from peftlab.serve import cli
    base = tmp_path / "tiny"
    base_model().save_pretrained(base)
    tok.save_pretrained(base)
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    shutil.copytree(paths["b"], run / "adapter", dirs_exist_ok=True)
    (run / "run.json").write_text(json.dumps({"format": "peftlab-run", "task": "chat",
                                              "status": "done", "data": {"system": "Be terse."}}))
    assert cli.adapter_task(paths["a"]) == "chat" and cli.adapter_task(str(run)) == "chat"
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--adapter", f"a={paths['a']}", "--adapter", f"b={run}",
                              "--base", str(base), "--served-name", "tiny", "--max-tokens", "16"])
    app = cli.make_app(args, parser)
    srv = app.state.server
    assert srv.base == "tiny" and srv.template.system == "Be terse." and srv.max_tokens == 16
    with TestClient(app) as client:
        models = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert models == ["tiny", "a", "b"]
        r = client.post("/v1/chat/completions", json={"model": "b", "messages": [
            {"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
    with pytest.raises(SystemExit):
        cli.make_app(parser.parse_args(["serve"]), parser)             # nothing to serve
    with pytest.raises(SystemExit) as e:                   # a bad cache size: exit 2, nothing loaded
        cli.make_app(parser.parse_args(["serve", "--task", "chat", "--base", "/no/such/base",
                                        "--prefix-cache-tokens", "-1"]), parser)
    assert e.value.code == 2
    assert "--prefix-cache-tokens) must be 0 (no prefix cache)" in capsys.readouterr().err
