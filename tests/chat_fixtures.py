"""Chat-model fixtures for tests: a tiny Llama with the real SmolLM2 tokenizer, and a GGUF of it.

    from chat_fixtures import tiny_chat_model, write_tiny_gguf
    model, tokenizer = tiny_chat_model()          # 2 layers, hidden 32, GQA 4/2, tied head
    write_tiny_gguf(model, tmp_path / "tiny.gguf")  # the same weights as llama.cpp stores them

The tiny model has every architectural feature of SmolLM2-135M-Instruct (grouped-query
attention, RoPE, RMSNorm, SiLU MLP, tied embeddings) and its real 49,152-token tokenizer and chat
template, so chat data, masking and generation are tested on the real token ids in milliseconds.
Its weights are random: what it says is noise.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch

TINY_LLAMA = {"vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from peftlab.models.chat import chat_tokenizer

    return chat_tokenizer()


def smollm2_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (a fresh copy: callers may change padding_side)."""
    return copy.deepcopy(_tokenizer())


def tiny_chat_model(seed: int = 0, **overrides):
    """`(model, tokenizer)`: a tiny LlamaForCausalLM (TINY_LLAMA, `overrides` on top) in eval
    mode, seeded, with the real SmolLM2 tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, **overrides})).eval()
    return model, smollm2_tokenizer()


@functools.lru_cache(maxsize=1)
def tokenizer_fields() -> tuple:
    """`(key, value, type, sub_type)` of every tokenizer.* field of the real GGUF (read once)."""
    import gguf

    from peftlab.models.chat import default_chat_gguf_path

    reader = gguf.GGUFReader(default_chat_gguf_path())
    out = []
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            sub = field.types[1] if len(field.types) > 1 else None
            out.append((key, field.contents(), field.types[0], sub))
    return tuple(out)


def _llama_cpp_permute(w, n_head: int):
    """llama.cpp's convert_hf_to_gguf permutation of q / k rows (rotary halves interleaved);
    transformers' GGUF loader undoes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(model, path: str | Path) -> Path:
    """Write a LlamaForCausalLM as an fp32 GGUF at `path`, with the real tokenizer's metadata."""
    import gguf

    cfg, path = model.config, Path(path)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for key, value, vtype, sub in tokenizer_fields():
        w.add_key_value(key, value, vtype, sub_type=sub)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])   # tied: no output.weight
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = _llama_cpp_permute(t, cfg.num_attention_heads)
            elif gg == "attn_k":
                t = _llama_cpp_permute(t, cfg.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{gg}.weight", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
