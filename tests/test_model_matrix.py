"""Bring your own model: every method on four tiny, randomly initialised models built from
configs (no downloads), each through apply -> train a few steps -> save -> load -> merge (where
the method can) -> unload, with the invariants a user relies on:

    * apply changes no output where the method starts at the base (LoRA, AdaLoRA, selection);
    * training changes nothing outside the method's trainable parameters;
    * save -> load onto a fresh base model gives identical logits (peftlab format, and the
      Hugging Face PEFT format where the method has one);
    * merged logits == unmerged logits;
    * unload (without merging) gives the base model's state back bit for bit.

The models: a BERT-like encoder (classifier head), GPT-2 (an LM whose head is tied to the
input embeddings; Conv1D layers), a Llama-like decoder without biases and with grouped-query
attention (score head), and a CNN with BatchNorm (fc head). They are trained in eval mode
(dropout is 0 anyway) so that BatchNorm's running statistics, which any train-mode forward
pass updates, stay part of the bit-for-bit comparison.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftlab as pl
from peftlab.core.batches import logits_of, split_batch

VOCAB = 100


# --- the models ----------------------------------------------------------------------------

class SmallCNN(nn.Module):
    """conv -> BN -> ReLU (x2) -> pool -> hidden Linear -> ReLU -> fc (the head)."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.hidden = nn.Linear(8, 16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h))).mean((2, 3))
        return self.fc(F.relu(self.hidden(h)))


def build(arch: str) -> nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    if arch == "bert":
        model = tf.BertForSequenceClassification(tf.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64, num_labels=2,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    elif arch == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
            eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    elif arch == "llama":
        model = tf.LlamaForSequenceClassification(tf.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=2))
        assert not any(n.endswith(".bias") for n, _ in model.named_parameters())   # no biases
    else:
        model = SmallCNN()
        with torch.no_grad():            # non-trivial running statistics
            for bn in (model.bn1, model.bn2):
                bn.running_mean.normal_(0, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def batches(arch: str, n: int = 3, bs: int = 4) -> list:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        if arch == "cnn":
            out.append((torch.randn(bs, 3, 8, 8, generator=g), torch.randint(0, 3, (bs,), generator=g)))
            continue
        ids = torch.randint(3, VOCAB, (bs, 8), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 6:] = 0                                  # one right-padded row
        labels = ids if arch == "gpt2" else torch.randint(0, 2, (bs,), generator=g)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def loss_fn(model, batch):
    """Cross-entropy: next-token for the GPT-2 LM, sequence labels otherwise."""
    logits, labels = logits_of(model, split_batch(batch)[0]), split_batch(batch)[1]
    if logits.dim() == 3:                                # (B, T, V): shift by one
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    return F.cross_entropy(logits, labels)


@torch.no_grad()
def logits(model, batch):
    return logits_of(model, split_batch(batch)[0])


# --- the methods -----------------------------------------------------------------------------

LORA_TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn", "wte"],   # wte: tied to lm_head
                "llama": ["q_proj", "v_proj"], "cnn": ["conv1", "hidden"]}
LINEAR_TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "k_proj"],
                  "cnn": ["hidden"]}
STEPS = 3
TRANSFORMERS_ONLY = ("prefix", "prompt", "bottleneck")


def apply(method: str, model: nn.Module, arch: str) -> nn.Module:
    if method == "lora":
        return pl.lora.apply(model, pl.lora.LoraConfig(r=2, alpha=4, targets=LORA_TARGETS[arch]))
    if method == "qlora":                  # keep_base: unload gives the float base back
        return pl.qlora.apply(model, pl.qlora.QLoraConfig(r=2, alpha=4, keep_base=True,
                                                          targets=LINEAR_TARGETS[arch]))
    if method == "ia3":                    # the model type's defaults; the CNN has none
        return pl.ia3.apply(model, pl.ia3.IA3Config(targets=["hidden"] if arch == "cnn" else None))
    if method == "adalora":
        return pl.adalora.apply(model, pl.adalora.AdaLoraConfig(
            init_r=4, target_r=2, targets=LINEAR_TARGETS[arch], total_steps=STEPS, tfinal=1))
    if method == "selection":
        return pl.selection.apply(model, pl.selection.SelectionConfig(fraction=0.05),
                                  batches=batches(arch, 2), loss_fn=loss_fn)
    if method == "bottleneck":             # Houlsby after attention and FFN, 4 wide
        return pl.bottleneck.apply(model, pl.bottleneck.BottleneckConfig(bottleneck_size=4))
    if method == "prefix":
        return pl.prefix.apply(model, pl.prefix.PrefixConfig(num_virtual_tokens=3))
    if method == "prompt":
        return pl.prompt.apply(model, pl.prompt.PromptConfig(num_virtual_tokens=3, init="normal"))
    mode = method.split("-")[1]
    heads = ["ln_f"] if arch == "gpt2" and mode != "all" else None   # GPT-2's head is tied
    return pl.full.apply(model, pl.full.FullConfig(mode=mode, modules_to_save=heads))


def train(model: nn.Module, arch: str) -> None:
    """The plain loop: loss + regularization, backward, step, after_step, zero_grad."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step, batch in enumerate(batches(arch, STEPS)):
        (loss_fn(model, batch) + pl.regularization(model)).backward()
        opt.step()
        pl.after_step(model, step)
        opt.zero_grad()


def base_name(name: str) -> str:
    """The name a tensor of an adapted model had in the plain model."""
    name = name.replace(".base_layer.", ".")
    return re.sub(r"parametrizations\.(\w+)\.original", r"\1", name)


def frozen_tensors(model: nn.Module, base_keys) -> dict[str, torch.Tensor]:
    """Every tensor of the base model (parameters and buffers) that does not train, by its
    plain-model name (the method's own state, e.g. AdaLoRA's importance scores, is left out)."""
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    return {base_name(n): t.detach().clone() for n, t in model.state_dict(keep_vars=True).items()
            if id(t) not in trainable and base_name(n) in base_keys}


def unload(method: str, model: nn.Module) -> nn.Module:
    if method == "lora":
        return pl.lora.unload(model, merge=False)
    if method == "adalora":
        return pl.adalora.unload(model, merge=False)
    if method == "selection":
        return pl.selection.unload(model)
    return getattr(pl, method).unload(model)             # prefix and prompt


MERGE = {"lora": (pl.lora.merge, pl.lora.unmerge),
         "adalora": (pl.adalora.merge, pl.adalora.unmerge),
         "ia3": (pl.ia3.merge, pl.ia3.unmerge)}
HF_FORMAT = ("lora", "adalora", "ia3")
ARCHS = ["bert", "gpt2", "llama", "cnn"]
# every registered method (full in two of its modes), from the registry
METHODS = [m for n in pl.core.registry.names()
           for m in (["full-bitfit", "full-all"] if n == "full" else [n])]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_bring_your_own_model(arch, method, tmp_path):
    base = build(arch)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    probe = batches(arch, 1, bs=3)[0]
    want_base = logits(base, probe)
    model = copy.deepcopy(base)
    if arch == "cnn" and method in TRANSFORMERS_ONLY:
        with pytest.raises(TypeError, match="Hugging Face transformers model"):
            apply(method, model, arch)
        assert pl.core.get_method(model) is None
        return
    if arch == "llama" and method == "full-bitfit":      # no biases: BitFit is refused, so
        with pytest.raises(ValueError, match="this model has no biases"):   # told
            apply(method, model, arch)
        assert pl.core.get_method(model) is None
        return

    # apply: the methods that start at the base change no output
    apply(method, model, arch)
    if method in ("lora", "adalora", "selection", "ia3", "bottleneck") \
            or method.startswith("full"):
        torch.testing.assert_close(logits(model, probe), want_base, atol=1e-6, rtol=0)

    # train a few steps: the trainable parameters move, nothing else does
    frozen = frozen_tensors(model, base_state.keys())
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    train(model, arch)
    moved = [n for n, p in model.named_parameters() if p.requires_grad
             and not torch.equal(p, before[n])]
    assert moved, "training changed no trainable parameter"
    after = frozen_tensors(model, base_state.keys())
    assert after.keys() == frozen.keys()
    changed = [k for k in frozen if not torch.equal(after[k], frozen[k])]
    assert not changed, f"changed outside the method's parameters: {changed[:5]}"
    want = logits(model, probe)

    # save -> load onto a fresh base: identical logits
    formats = ("peftlab", "hf-peft") if method in HF_FORMAT else ("peftlab",)
    for fmt in formats:
        pl.save_adapter(model, tmp_path / fmt, format=fmt)
        loaded = pl.load_adapter(copy.deepcopy(base), tmp_path / fmt)
        tol = 0.0 if fmt == "peftlab" else 1e-5            # peft's AdaLoRA scale: init_r + 1e-5
        torch.testing.assert_close(logits(loaded, probe), want, atol=tol, rtol=0, msg=fmt)

    # merge where the method can: merged == unmerged
    plain = copy.deepcopy(model)
    if method in MERGE:
        merge, unmerge = MERGE[method]
        merge(model)
        torch.testing.assert_close(logits(model, probe), want, atol=1e-5, rtol=0)
        unmerge(model)
        torch.testing.assert_close(logits(model, probe), want, atol=1e-5, rtol=0)
    elif method == "qlora":                # merge: into the dequantized float base
        merged = pl.qlora.unload(copy.deepcopy(model), merge=True)
        torch.testing.assert_close(logits(merged, probe), want, atol=1e-5, rtol=0)
    elif method == "selection":
        merged = pl.selection.merge(copy.deepcopy(model))
        torch.testing.assert_close(logits(merged, probe), want, atol=1e-5, rtol=0)

    # unload: the base model back, bit for bit (full fine-tuning has no adapter to take out)
    if method.startswith("full"):
        return
    unload(method, plain)
    assert pl.core.get_method(plain) is None
    now = plain.state_dict()
    assert now.keys() == base_state.keys()
    diff = [k for k in base_state if not torch.equal(now[k], base_state[k])]
    assert not diff, f"unload left {diff[:5]} changed"
    assert torch.equal(logits(plain, probe), want_base)
