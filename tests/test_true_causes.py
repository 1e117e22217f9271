"""Errors that name the true cause: every method, on a model without the part it needs, is
refused with a message that says what is missing and the way out, and the model is left bit
for bit as it was.

The models: a tiny Llama (no biases, head tied to the embeddings), a tiny BERT, the project's
CNN (a torchvision ResNet), bare nn.Sequential stacks, and transformers image models (a
ResNet: no attention, no token embeddings; a ViT: patch embeddings, not tokens).
"""

from __future__ import annotations

import pytest
import torch
from chat_fixtures import tiny_chat_model
from export_fixtures import tiny_bert_with_tokenizer
from torch import nn

import peftlab as pl
from peftlab.core import hf
from peftlab.core.errors import TargetError


def llama():
    return tiny_chat_model()[0]


def bert():
    return tiny_bert_with_tokenizer()[0]


def cnn():
    return pl.models.vision_classifier(pretrained=False)


def linear_stack(bias=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16, bias=bias), nn.ReLU(), nn.Linear(16, 3, bias=bias))


def conv_stack():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))


def hf_resnet():
    import transformers as tf

    torch.manual_seed(0)
    return tf.ResNetForImageClassification(tf.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=2)).eval()


def vit():
    import transformers as tf

    torch.manual_seed(0)
    return tf.ViTForImageClassification(tf.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        image_size=8, patch_size=4, num_channels=1, num_labels=2)).eval()


def attention_of(model):
    return hf.attention_of(model) if hasattr(model, "config") else None


def zero_loss(model, batch):          # a loss the parameters do not reach: all scores 0
    return (model(batch[0]) * 0).sum()


LINEAR_BATCHES = [(torch.randn(2, 8, generator=torch.Generator().manual_seed(0)),
                   torch.tensor([0, 1]))]

# (case id, model builder, apply call, exception, what the message must say: cause + way out)
CASES = [
    ("bitfit-llama", llama, lambda m: pl.full.apply(m, pl.full.FullConfig(mode="bitfit")),
     ValueError, r"this model has no biases.*FullConfig\(mode='head'\)"),
    ("bitfit-linear-no-bias", lambda: linear_stack(bias=False),
     lambda m: pl.full.apply(m, pl.full.FullConfig(mode="bitfit")),
     ValueError, r"this model has no biases"),
    ("bitfit-no-head", linear_stack, lambda m: pl.full.apply(m, pl.full.FullConfig(mode="bitfit")),
     ValueError, r"none was found.*modules_to_save=\[\] to train the biases alone"),
    ("head-tied-llama", llama, lambda m: pl.full.apply(m, pl.full.FullConfig(mode="head")),
     ValueError, r"lm_head shares its weight.*tied.*modules_to_save"),
    ("lora-default-llama", llama, lambda m: pl.lora.apply(m, pl.lora.LoraConfig(r=2)),
     TargetError, r"BERT's name.*calls it 'q_proj'.*targets=\['q_proj', 'v_proj'\]"),
    ("lora-default-cnn", cnn, lambda m: pl.lora.apply(m, pl.lora.LoraConfig(r=2)),
     TargetError, r"BERT's name.*has none.*targets='all-linear', \[nn.Conv2d\]"),
    ("lora-all-linear-cnn", cnn,
     lambda m: pl.lora.apply(m, pl.lora.LoraConfig(r=2, targets="all-linear")),
     TargetError, r"only linear layers are the head \(fc\).*targets=\[nn.Conv2d\]"),
    ("lora-all-linear-convs", conv_stack,
     lambda m: pl.lora.apply(m, pl.lora.LoraConfig(r=2, targets="all-linear")),
     TargetError, r"no linear layers at all.*targets=\[nn.Conv2d\]"),
    ("qlora-all-linear-hf-resnet", hf_resnet,
     lambda m: pl.qlora.apply(m, pl.qlora.QLoraConfig(r=2, targets="all-linear")),
     TargetError, r"only linear layers are the head"),
    ("adalora-all-linear-cnn", cnn, lambda m: pl.adalora.apply(m, pl.adalora.AdaLoraConfig(
        init_r=4, target_r=2, targets=["all-linear"], total_steps=10)),
     TargetError, r"only linear layers are the head"),
    ("adalora-default-llama", llama, lambda m: pl.adalora.apply(m, pl.adalora.AdaLoraConfig(
        init_r=4, target_r=2, total_steps=10)),
     TargetError, r"calls it 'q_proj'"),
    ("ia3-linear-stack", linear_stack, lambda m: pl.ia3.apply(m, pl.ia3.IA3Config()),
     TargetError, r"no default targets.*Name them"),
    ("prefix-cnn", cnn, lambda m: pl.prefix.apply(m, pl.prefix.PrefixConfig(num_virtual_tokens=2)),
     TypeError, r"needs a Hugging Face transformers model.*pl.lora"),
    ("prefix-hf-resnet", hf_resnet,
     lambda m: pl.prefix.apply(m, pl.prefix.PrefixConfig(num_virtual_tokens=2)),
     TypeError, r"keys and values.*no token embedding table.*pl.lora"),
    ("prefix-vit", vit, lambda m: pl.prefix.apply(m, pl.prefix.PrefixConfig(num_virtual_tokens=2)),
     TypeError, r"no token embedding table.*ViTPatchEmbeddings.*pl.lora"),
    ("prompt-hf-resnet", hf_resnet,
     lambda m: pl.prompt.apply(m, pl.prompt.PromptConfig(num_virtual_tokens=2)),
     TypeError, (r"prepends learned vectors to the token embeddings.*does not implement "
                 r"get_input_embeddings.*pl.lora")),
    ("prompt-vit", vit, lambda m: pl.prompt.apply(m, pl.prompt.PromptConfig(num_virtual_tokens=2)),
     TypeError, r"no token embedding table.*ViTPatchEmbeddings"),
    ("selection-zero-scores", linear_stack, lambda m: pl.selection.apply(
        m, pl.selection.SelectionConfig(fraction=0.05), batches=LINEAR_BATCHES, loss_fn=zero_loss),
     ValueError, r"nothing to select by: every score is 0.*fix loss_fn"),
    ("selection-no-parameters", lambda: nn.Sequential(nn.ReLU()), lambda m: pl.selection.apply(
        m, pl.selection.SelectionConfig(fraction=0.05), batches=LINEAR_BATCHES, loss_fn=zero_loss),
     ValueError, r"nothing to select: Sequential has no parameters.*Widen targets"),
]


@pytest.mark.parametrize("build, call, error, message", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_the_message_names_the_cause_and_the_model_is_unchanged(build, call, error, message):
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    attention = attention_of(model)
    with pytest.raises(error, match=message):
        call(model)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)        # bit for bit
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert pl.core.get_method(model) is None
    assert attention_of(model) == attention                           # prefix switches it back


def test_a_model_with_biases_still_gets_bitfit():
    model = bert()
    pl.full.apply(model, pl.full.FullConfig(mode="bitfit"))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(n.endswith(".bias") or n.startswith("classifier.") for n in trained)
