"""The served model's linear layers through oneDNN (peftlab/serve/chat_kernels.py): the same
logits as PyTorch's default kernels within 1e-5 over a prefill and decoding steps, the same
greedy tokens, each layer's own forward back after the block; the LoRA matrices untouched;
new weights used once invalidate() ran."""

from __future__ import annotations

import pytest
import torch
from chat_fixtures import smollm2_tokenizer
from serve_chat_fixtures import PROMPTS, messages, save_adapters, with_adapters

from peftlab.chat import ChatTemplate
from peftlab.serve.chat_batch import Batch
from peftlab.serve.chat_kernels import PackedLinears, onednn_linear_works
from peftlab.serve.chat_lora import StackedLora

pytestmark = pytest.mark.skipif(not onednn_linear_works(), reason="no oneDNN linear in torch")


@pytest.fixture(scope="module")
def tok():
    return smollm2_tokenizer()


def _run(model, prompts, pad, names, n=5):
    out, tokens = [], []
    with torch.no_grad(), StackedLora(model).route(names):
        batch = Batch.prefill(model, prompts, pad)
        for _ in range(n):
            out.append(batch.logits.clone())
            tokens.append(batch.logits.argmax(-1))
            batch.step(model, tokens[-1])
    return torch.stack(out), torch.stack(tokens)


def test_packed_linears_compute_what_the_default_kernels_compute(tmp_path, tok):
    model = with_adapters(save_adapters(tmp_path), ["a", "b"])
    prompts = [ChatTemplate(tok).prompt_ids(messages(p)) for p in PROMPTS]
    names = ["a", None, "b", "a", None]
    want, want_tokens = _run(model, prompts, tok.pad_token_id, names)
    packed = PackedLinears(model)
    with packed.use():
        got, tokens = _run(model, prompts, tok.pad_token_id, names)
        layers = [m for m in model.modules() if "forward" in vars(m)]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert torch.equal(tokens, want_tokens)
    assert model.lm_head in packed.packed and len(layers) == len(packed.packed) >= 15
    assert not any(n.rsplit(".", 1)[-1] in ("lora_A", "lora_B") for n, m in
                   model.named_modules() if m in packed.packed)      # adapters stay as they are
    assert not any("forward" in vars(m) for m in model.modules())   # restored after the block
    with packed.use(), torch.enable_grad():                         # gradients: the default
        x = torch.randn(2, 32, requires_grad=True)
        model.lm_head(x).sum().backward()
        assert x.grad is not None
    with torch.no_grad():                                           # new weights: used after
        model.lm_head.weight.mul_(2.0)                              # invalidate()
    packed.invalidate()
    with torch.no_grad(), packed.use():
        x = torch.randn(3, 32)
        torch.testing.assert_close(model.lm_head(x), x @ model.lm_head.weight.T, atol=1e-5,
                                   rtol=0)


def test_disabled_changes_nothing(tmp_path, tok):
    model = with_adapters(save_adapters(tmp_path), ["a"])
    with PackedLinears(model, enabled=False).use():
        assert not any("forward" in vars(m) for m in model.modules())
