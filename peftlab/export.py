"""pl.export_merged: the adapted model as a complete, self-checked transformers folder.

    pl.export_merged(model, "deploy/support")            # tokenizer found from the model
    # anywhere, no peftlab needed:
    AutoModelForSequenceClassification.from_pretrained("deploy/support")
    AutoTokenizer.from_pretrained("deploy/support")

What it writes. The update is merged into a copy of the model (W <- W + scale * B @ A for
LoRA, the active named adapter and its head when there are several; AdaLoRA, selection, IA3
deltas likewise; full fine-tuning and head-only are plain models already), the copy is
unloaded to the model's own transformers classes and written with save_pretrained
(config.json, model.safetensors), class names in config.id2label / label2id, and beside it
the model's *input processor*: the tokenizer (an image processor for an image model). The
caller's model is not touched.

Which processor. The one passed as tokenizer=; else the one the model was loaded with, found
from what the model remembers (`model.config.name_or_path`: the folder or hub id the loader
read; the embedded chat model's label maps to its cached tokenizer). A folder without its
tokenizer would still load, but transformers then builds an *empty* tokenizer that maps every
word to [UNK]: so when none can be found, export refuses before writing anything and says to
pass tokenizer=. A processor that cannot be this model's (ids beyond its vocabulary, most
probe words unknown, a vocabulary a fraction of the model's) is refused the same way.

The check. The folder is written to a temporary sibling; before it is moved into place it is
reloaded with plain transformers (the Auto class that matches the model, e.g.
AutoModelForSequenceClassification, AutoModelForCausalLM, AutoModelForImageClassification, and
AutoTokenizer / AutoImageProcessor) and a probe (PROBE_TEXTS, or seeded random images) is run
through both: the reloaded processor must encode it exactly as the given one does, and the
reloaded model must give the adapted model's outputs (to 1e-4 of their scale in fp32). A
failed check removes the temporary folder (an older export at `path` stays as it was) and
raises ExportCheckError saying what differed. The merge itself is checked first, before
anything is written: the merged copy must give the adapted model's outputs (a wrong merge is
refused with nothing on disk). Measured cost of the check (reload + forward passes of three
short sentences; one CPU thread, the development machine, best of 3): 0.08 s on the embedded
MiniLM classifier (writing it takes 0.11 s), 0.5 s on the embedded 135M chat model (writing:
1.0 s), 0.02 s on a 2-layer test BERT. Finding the tokenizer when none is given adds 0.1 s
(MiniLM) / 0.6 s (chat). check=False skips it.

A method that cannot be merged into weights (prefix and prompt tuning: their virtual tokens
are extra inputs, not a weight update; see each method's spec.py) is refused with its reason;
so is a model that is not a transformers model (the project's torchvision ResNet: save its
adapter with pl.save_adapter).
"""

from __future__ import annotations

import copy
import inspect
import os
import shutil
import uuid
from pathlib import Path

import torch
from torch import nn

from peftlab.core import registry
from peftlab.core.state import get_method
from peftlab.data.labels import label_names_of, set_label_names

# the probe of the check: everyday words, so any real tokenizer knows most of them
PROBE_TEXTS = ["the soup was cold and bland", "what a great goal in the last minute", "not bad"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
# the Auto classes export tries, in order: (its name, the transformers table that says which
# model class it builds for a config's model_type); public names of transformers.models.auto
AUTO_CLASSES = (("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
                ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
                ("AutoModelForImageClassification", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
                ("AutoModelForTokenClassification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"),
                ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
                ("AutoModel", "MODEL_MAPPING_NAMES"))


class ExportCheckError(RuntimeError):
    """The written folder, reloaded with plain transformers, does not reproduce the model."""


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain copy of `model` with its adapter merged into the weights (the method's
    unload(merge=True)); a method whose spec says it cannot merge is refused first."""
    method = get_method(model)
    if method is not None and not registry.spec(method).mergeable:
        raise ValueError(registry.cannot_merge(method))
    clone = copy.deepcopy(model)
    if method is not None:
        registry.method_module(method).unload(clone, merge=True)
    return clone


def export_merged(model: nn.Module, path: str | Path, tokenizer=None,
                  label_names: list[str] | None = None, check: bool = True) -> Path:
    """Write `model` with its adapter merged in as a complete transformers folder at `path`.

    model: a transformers model (it needs save_pretrained), plain or carrying a LoRA, AdaLoRA,
    selection, IA3 or full adapter. tokenizer: its tokenizer (an image model: its image
    processor); None finds the one the model was loaded with, or refuses before writing
    (module docstring). label_names: the class names for config.id2label (default: the
    model's own, when it has real names). check: reload the folder with plain transformers and
    compare outputs before it is moved into place (see the module docstring for its cost).
    Returns the folder. An existing folder at `path` is replaced only once the new one is
    complete and checked."""
    from transformers.utils import logging as hf_logging

    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"export_merged writes a transformers folder, and {type(model).__name__} "
                        f"is not a transformers model (no save_pretrained). Save its adapter "
                        f"with pl.save_adapter, or the merged weights with safetensors: "
                        f"safetensors.torch.save_file(pl.<method>.unload(model, merge=True)"
                        f".state_dict(), 'model.safetensors').")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is a file; export_merged writes a folder.")
    method = get_method(model)
    if method is not None and not registry.spec(method).mergeable:   # the true cause first
        raise ValueError(registry.cannot_merge(method))
    images = _takes_images(model)
    processor = tokenizer if tokenizer is not None else find_processor(model, images)
    probe = _probe(model, processor, images) if check else None   # refuses a wrong processor
    names = list(label_names) if label_names is not None else label_names_of(model)
    clone = merged_copy(model)
    if names:
        set_label_names(clone, names)       # checks len(names) against the head first
    clone.eval()
    if check:                               # the merge first: refused before writing
        want, merged = _outputs(model, probe), _outputs(clone, probe)
        _compare(merged, want, model, "The merged copy (before writing)", "the merge is wrong",
                 ValueError)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    bars = not hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()       # no "Writing model shards" bar in a notebook cell
    try:
        clone.save_pretrained(tmp, safe_serialization=True)
        del clone
        processor.save_pretrained(tmp)
        if check:
            check_folder(tmp, model, probe, merged, images)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        if not bars:
            hf_logging.enable_progress_bar()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path


# --- which processor -----------------------------------------------------------------------

def _takes_images(model: nn.Module) -> bool:
    return getattr(model, "main_input_name", "input_ids") == "pixel_values"


def find_processor(model: nn.Module, images: bool = False):
    """The tokenizer (or image processor) `model` was loaded with, from what it remembers;
    raises ValueError naming the argument to pass when there is none (nothing is written)."""
    from peftlab.models.chat import DEFAULT_CHAT_LABEL, chat_tokenizer
    from peftlab.runtime import online

    arg = "tokenizer=<its image processor>" if images else "tokenizer=<its tokenizer>"
    source = str(getattr(model.config, "name_or_path", "") or "")
    if not images and source == DEFAULT_CHAT_LABEL:
        return chat_tokenizer()                     # the embedded chat model's own
    if not source:
        raise ValueError(f"export_merged writes the model's {'image processor' if images else 'tokenizer'} "
                         f"beside it, and this {type(model).__name__} does not say where it "
                         f"was loaded from (model.config.name_or_path is empty: built from a "
                         f"config?). Pass {arg}; nothing was written.")
    folder = Path(source).expanduser()
    if folder.exists() and not images and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(f"{type(model).__name__} was loaded from {folder}, which holds no "
                         f"tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...). Pass {arg}; "
                         f"nothing was written.")
    from transformers import AutoImageProcessor, AutoTokenizer

    loader = AutoImageProcessor if images else AutoTokenizer
    kwargs = {} if folder.exists() or online() else {"local_files_only": True}
    try:
        found = loader.from_pretrained(str(folder) if folder.exists() else source, **kwargs)
    except (OSError, ValueError) as e:
        raise ValueError(f"export_merged could not load the {loader.__name__[4:]} of "
                         f"{source!r}, where {type(model).__name__} was loaded from "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                         f"Pass {arg}; nothing was written.") from e
    pad = getattr(model.config, "pad_token_id", None)
    if not images and found.pad_token is None and pad is not None:
        found.pad_token = found.convert_ids_to_tokens(pad)   # as the loaders set it
    return found


# --- the probe and the check ---------------------------------------------------------------

def _encode(processor, images: bool, probe_images=None) -> dict:
    if images:
        return dict(processor(images=probe_images, return_tensors="pt"))
    padded = processor.pad_token is not None
    out = processor(PROBE_TEXTS if padded else PROBE_TEXTS[:1], padding=padded,
                    return_tensors="pt")
    return {k: v for k, v in out.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def _probe(model: nn.Module, processor, images: bool) -> dict:
    """The probe input encoded by `processor`, after checking it can be this model's."""
    who = type(processor).__name__
    if not hasattr(processor, "save_pretrained") or not callable(processor):
        raise TypeError(f"tokenizer= must be a transformers tokenizer or image processor (it "
                        f"needs save_pretrained and to be callable), got {who}.")
    if images:
        cfg = model.config
        size, channels = getattr(cfg, "image_size", 32), getattr(cfg, "num_channels", 3)
        g = torch.Generator().manual_seed(0)
        pics = (torch.rand(2, size, size, channels, generator=g) * 255).to(torch.uint8).numpy()
        return {"images": list(pics), "inputs": _encode(processor, True, list(pics))}
    enc = _encode(processor, False)
    ids = enc["input_ids"]
    rows = model.get_input_embeddings().weight.shape[0]
    if int(ids.max()) >= rows:
        raise ValueError(f"The tokenizer given ({who}) is not this model's: it encodes the probe "
                         f"to token id {int(ids.max())}, and the model has only {rows} token "
                         f"embeddings. Pass the tokenizer the model was trained with; nothing "
                         f"was written.")
    special = set(processor.all_special_ids) - {processor.unk_token_id}
    words = [i for i in ids[enc["attention_mask"].bool()].tolist() if i not in special]
    unk = processor.unk_token_id
    if len(processor) < rows // 2 or (unk is not None and words
                                      and sum(i == unk for i in words) > len(words) / 2):
        raise ValueError(f"The tokenizer given ({who}, {len(processor)} tokens) is not this "
                         f"model's ({rows} token embeddings): it maps "
                         f"{sum(i == unk for i in words)} of the {len(words)} tokens of "
                         f"{PROBE_TEXTS!r} to its unknown token, or its vocabulary is a fraction "
                         f"of the model's. Pass the tokenizer the model was trained with; "
                         f"nothing was written.")
    return {"inputs": enc}


@torch.no_grad()
def _outputs(model: nn.Module, probe: dict) -> torch.Tensor:
    """The model's logits on the probe (float, CPU), in eval mode; its mode is restored."""
    was = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        takes = inspect.signature(model.forward).parameters
        out = model(**{k: v.to(device) for k, v in probe["inputs"].items()
                       if k in takes or k != "token_type_ids"})
    finally:
        model.train(was)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits.detach().float().cpu()


def auto_class(model: nn.Module):
    """The transformers Auto class that builds type(model) from its config (falls back to the
    model's own class, which save_pretrained names in config.architectures)."""
    import transformers
    from transformers.models.auto import modeling_auto

    kind, cls = getattr(model.config, "model_type", None), type(model).__name__
    for auto, table in AUTO_CLASSES:
        if getattr(modeling_auto, table, {}).get(kind) == cls:
            return getattr(transformers, auto)
    return getattr(transformers, cls, type(model))


def _compare(got: torch.Tensor, want: torch.Tensor, model: nn.Module, what: str, cause: str,
             error=None, rel: float | None = None) -> None:
    """Raise `error` unless got == want to `rel` (default: 1e-4 in fp32, 2e-2 in 16 bits) of
    their scale (at least 1e-2)."""
    if rel is None:
        floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
        rel = 1e-4 if floats and floats[0] == torch.float32 else 2e-2
    tol = rel * max(1e-2, float(want.abs().max()))
    diff = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
    if not diff <= tol:
        raise (error or ExportCheckError)(
            f"{what} does not reproduce the adapted model: its logits on the probe differ by "
            f"{diff:.3g} (allowed {tol:.2g}), so {cause}. Nothing was exported; report it with "
            f"the method and model, and save the adapter with pl.save_adapter meanwhile.")


def check_folder(folder: Path, model: nn.Module, probe: dict, merged: torch.Tensor,
                 images: bool) -> None:
    """Reload `folder` with plain transformers and check it reproduces `merged` (the merged
    copy's logits on `probe`, which match the adapted model's); raise ExportCheckError saying
    what differed."""
    from transformers import AutoImageProcessor, AutoTokenizer

    auto = auto_class(model)
    reloaded = (AutoImageProcessor if images else AutoTokenizer).from_pretrained(folder)
    plain = auto.from_pretrained(folder).eval()
    enc = _encode(reloaded, images, probe.get("images"))
    for k, v in probe["inputs"].items():
        if k not in enc or enc[k].shape != v.shape or not torch.equal(enc[k].to(v.dtype), v):
            raise ExportCheckError(
                f"The exported folder's {type(reloaded).__name__} (reloaded with "
                f"{'AutoImageProcessor' if images else 'AutoTokenizer'}) encodes the probe "
                f"differently from the one given ({k} differs): the folder would feed the "
                f"model other inputs. Nothing was exported; pass a tokenizer whose "
                f"save_pretrained writes its whole vocabulary.")
    # the same weights through the same code: equal up to kernel order, so a tight tolerance
    _compare(_outputs(plain, {"inputs": enc}), merged, model,
             f"The exported folder, reloaded with {auto.__name__},",
             "the written weights are wrong", rel=1e-5)
