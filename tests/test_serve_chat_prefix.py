"""Automatic prefix caching (peftlab/serve/chat_prefix.py): a prompt prefilled after the cached
keys and values of its first tokens computes what a full prefill computes (logits within 1e-5,
the same greedy tokens), per adapter; the cache is keyed by adapter, bounded, and emptied when
an adapter is replaced or deleted, so a new version never answers with the old one's cache;
and a lone request waits at most join_wait steps to prefill together with another."""

from __future__ import annotations

import collections
import threading

import pytest
import timing
import torch
from chat_fixtures import smollm2_tokenizer
from serve_chat_fixtures import PROMPTS, expected, messages, save_adapters, with_adapters

import peftlab as pl
from peftlab.chat import ChatTemplate
from peftlab.serve.chat_batch import Batch
from peftlab.serve.chat_engine import ChatEngine, Row
from peftlab.serve.chat_prefix import PrefixCache, common_prefix


@pytest.fixture(scope="module")
def tok():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return save_adapters(tmp_path_factory.mktemp("prefix_adapters"))


@pytest.fixture(scope="module")
def ref(paths):
    return with_adapters(paths, ["a", "b"])


def _ids(tok, prompt):
    return ChatTemplate(tok).prompt_ids(messages(prompt))


@torch.no_grad()
def test_prefill_after_a_cached_prefix_computes_the_full_prefill(ref, tok):
    prompts = [_ids(tok, p) for p in PROMPTS[:4]]
    shared = common_prefix(prompts[0], prompts[1])
    assert shared >= 8                       # the rendered system message and "user" turn
    adapters = ["a", "b", None, "a"]
    cache = PrefixCache()
    for adapter, p in zip(adapters, prompts):       # each adapter's prefixes, from other prompts
        with pl.lora.route(ref, [adapter]):
            other = Batch.prefill(ref, [p[:shared] + [tok.eos_token_id]], tok.pad_token_id)
        cache.store(adapter, p[:shared] + [tok.eos_token_id], other.row_kv(0))
    past = [cache.lookup(a, p) for a, p in zip(adapters, prompts)]
    assert [n for n, _ in past] == [shared] * 4 and cache.hits == 4
    past[2] = None                                  # one row without a hit: prefilled in full
    with pl.lora.route(ref, adapters):
        full = Batch.prefill(ref, prompts, tok.pad_token_id)
        hit = Batch.prefill(ref, prompts, tok.pad_token_id, past)
        torch.testing.assert_close(hit.logits, full.logits, atol=1e-5, rtol=0)
        assert torch.equal(hit.pos, full.pos)
        for _ in range(6):                          # greedy steps on both: the same tokens
            a, b = full.logits.argmax(-1), hit.logits.argmax(-1)
            assert torch.equal(a, b)
            full.step(ref, a)
            hit.step(ref, b)
            torch.testing.assert_close(hit.logits, full.logits, atol=1e-5, rtol=0)
    for i, p in enumerate(prompts):                 # a row's own keys: its tokens, no padding
        assert all(k.shape[2] == len(p) + 6 for k, _ in hit.row_kv(i))


def test_the_cache_is_keyed_by_adapter_bounded_and_leaves_the_last_token():
    kv = lambda n: [(torch.zeros(1, 1, n, 2), torch.ones(1, 1, n, 2))]
    cache = PrefixCache(max_tokens=20, min_tokens=3)
    cache.store("a", [1, 2, 3, 4, 5, 6], kv(6))
    assert cache.lookup("b", [1, 2, 3, 4, 5, 6, 7]) == (0, None)     # another adapter: a miss
    assert cache.lookup(None, [1, 2, 3, 4, 5, 6, 7]) == (0, None)    # the base too
    n, got = cache.lookup("a", [1, 2, 3, 4, 5, 6])                   # the same prompt again:
    assert n == 5 and got[0][0].shape[2] == 5                       # its last token recomputed
    assert cache.lookup("a", [1, 2, 9, 9])[0] == 0                    # 2 tokens: below min_tokens
    cache.store("a", [1, 2, 3], kv(3))                               # covered: nothing stored
    assert len(cache) == 1 and cache.held == 6
    for i in range(4):                                               # 6 + 4 x 6 > 20: LRU out
        cache.store("b", [10 + i] * 6, kv(6))
    assert cache.held <= 20 and cache.lookup("a", [1, 2, 3, 4, 9])[0] == 0
    cache.clear()
    assert len(cache) == 0 and cache.held == 0
    assert PrefixCache(max_tokens=0).lookup("a", [1, 2, 3, 4, 5]) == (0, None)


class Sink:
    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, kind, value):
        self.events.append((kind, value))
        if kind in ("done", "error"):
            self.done.set()


def _answer(engine, tok, prompt, adapter, n=8):
    sink = Sink()
    row = Row(prompt=_ids(tok, prompt), adapter=adapter, max_tokens=n, emit=sink)
    engine.submit(row)
    assert sink.done.wait(timing.budget(60))
    return row, sink.events[-1]


def test_engine_reuses_prefixes_and_forgets_them_when_an_adapter_changes(paths, ref, tok):
    engine = ChatEngine(with_adapters(paths, ["a", "b"]), tok, max_batch=4).start()
    try:
        for prompt in PROMPTS[:4]:                  # later prompts hit the system prefix
            for adapter in ("a", None):
                row, (kind, (text, _)) = _answer(engine, tok, prompt, adapter)
                want = expected(ref, tok, prompt, adapter, max_new_tokens=8)
                assert kind == "done" and row.tokens == want.tokens and text == want.text
        assert engine.prefix.hits >= 6 and engine.prefix.reused >= 6 * 8
        # "a" replaced by another adapter under the same name: its cached keys are stale
        engine.call(pl.load_adapter, engine.model, paths["c"], "a").result(timing.budget(60))
        assert len(engine.prefix) == 0
        new = with_adapters(paths, ["c"])
        row, (kind, _) = _answer(engine, tok, PROMPTS[1], "a")
        assert row.tokens == expected(new, tok, PROMPTS[1], "c", max_new_tokens=8).tokens
        assert len(engine.prefix) == 1
        engine.call(pl.delete_adapter, engine.model, "b").result(timing.budget(60))
        assert len(engine.prefix) == 0
    finally:
        engine.stop()


def test_engine_without_a_prefix_cache(paths, ref, tok):
    engine = ChatEngine(with_adapters(paths, ["a"]), tok, prefix_cache_tokens=0).start()
    try:
        for prompt in PROMPTS[:2]:
            row, _ = _answer(engine, tok, prompt, "a")
            assert row.tokens == expected(ref, tok, prompt, "a", max_new_tokens=8).tokens
        assert engine.prefix.hits == 0 and len(engine.prefix) == 0
    finally:
        engine.stop()


def test_a_lone_request_waits_join_wait_steps_for_company(paths, tok):
    engine = ChatEngine(with_adapters(paths, ["a"]), tok, max_batch=4, join_wait=2)
    row = lambda: Row(prompt=[1, 2], adapter=None, max_tokens=1, emit=Sink())
    engine.waiting = collections.deque([row()])
    assert engine._admit(4)                             # nothing generating: at once
    engine.rows = [row()]
    assert not engine._admit(3)                         # alone, 0 steps waited
    engine.steps = 2
    assert engine._admit(3)                             # join_wait steps waited
    engine.steps = 0
    assert engine._admit(1)                             # it fills the free slots
    engine.waiting.append(row())
    assert engine._admit(3)                             # two prefill together
    engine.waiting[1].cancel("disconnect")
    assert not engine._admit(3)                         # a cancelled one is no company


@pytest.mark.parametrize("bad", [-1, 2.5, "64", True])
def test_a_bad_prefix_cache_size_is_refused_before_the_server_starts(ref, tok, bad):
    from peftlab.serve import create_chat_app
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    with pytest.raises(ValueError, match=r"--prefix-cache-tokens\) must be 0 \(no prefix cache\) "
                                         r"or a positive int, got"):
        create_chat_app(ref, tok, prefix_cache_tokens=bad)
    assert sorted(pl.adapter_names(ref)) == ["a", "b"]             # nothing loaded or removed
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in before.items())
    assert PrefixCache(0).max_tokens == 0                   # 0 is the documented "off"
