"""Save and load adapters: safetensors for tensors, JSON for the config. Never pickle.

peftlab format (a folder):
    peftlab_adapter.json          {"format": "peftlab", "format_version": 1, "method": ...,
                                   "config_class": ..., "config": {...}, "base_model": {...}}
    adapter_model.safetensors     only the adapter's tensors

Hugging Face PEFT format (format="hf-peft"): adapter_config.json + adapter_model.safetensors
in the layout `peft.PeftModel.from_pretrained` reads; methods that support it implement
`to_hf_peft` / `from_hf_peft` (see peftlab/hf_peft.py).

Every file is written atomically (a temp file in the same folder, then os.replace; an
adapter's two files are both written before either is renamed, so a full disk leaves the old
adapter whole and raises peftlab.io.files.DiskFullError), and
`load_adapter` checks the config and every tensor's name and shape against the model before
it changes anything.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from peftlab.core.errors import AdapterError
from peftlab.core.registry import method_module
from peftlab.core.state import get_config, get_method, get_targets
from peftlab.data.labels import label_names_of, set_label_names
from peftlab.io.files import (
    CONFIG_FILE,
    HF_CONFIG_FILE,
    WEIGHTS_FILE,
    check_numbers,
    check_state,
    atomic_write_all,
    json_writer,
    read_json,
    read_tensors,
    tensor_writer,
)
from peftlab.io.hf_peft import export as export_hf_peft
from peftlab.io.hf_peft import import_ as import_hf_peft

FORMAT_VERSION = 1

# --- config <-> dict ------------------------------------------------------------------------

def config_to_dict(config, targets: list[str] | None = None) -> dict:
    """A JSON-safe dict of a config dataclass; `targets` replaced by the resolved names."""
    d = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if f.name in ("targets", "modules_to_save") and f.name == "targets" and targets:
            v = list(targets)
        if isinstance(v, tuple):
            v = list(v)
        try:
            json.dumps(v)
        except TypeError:
            raise AdapterError(f"Config field {f.name}={v!r} cannot be written to JSON.") from None
        d[f.name] = v
    return d


def config_from_dict(method: str, class_name: str, d: dict):
    try:
        module = method_module(method)
    except ValueError as e:
        raise AdapterError(str(e)) from e
    cls = getattr(module, class_name, None)
    if cls is None or not dataclasses.is_dataclass(cls):
        raise AdapterError(f"peftlab.{method} has no config class {class_name!r}: the adapter "
                           f"was written by another peftlab version.")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise AdapterError(f"Adapter config has fields {unknown} that {class_name} does not "
                           f"know: the adapter was written by a newer peftlab.")
    try:
        return cls(**d)
    except (TypeError, ValueError) as e:
        raise AdapterError(f"The saved {class_name} is not valid: {e}") from e


# --- the generic state protocol --------------------------------------------------------------

def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter consists of (method-defined; default: trainable parameters)."""
    method = get_method(model)
    if method is None:
        raise AdapterError("This model carries no peftlab method: apply one first "
                           "(e.g. pl.lora.apply(model, pl.lora.LoraConfig(...))).")
    fn = getattr(method_module(method), "adapter_state_dict", None)
    if fn is not None:
        return fn(model)
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def load_adapter_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    method = get_method(model)
    fn = getattr(method_module(method), "load_adapter_state", None)
    if fn is not None:
        return fn(model, tensors)
    expected = adapter_state_dict(model)
    check_state(expected, tensors)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for k, v in tensors.items():
            target = params.get(k, buffers.get(k))
            target.copy_(v.to(target.dtype))


# --- public API -------------------------------------------------------------------------------

def _base_fingerprint(model: nn.Module) -> dict:
    cfg = getattr(model, "config", None)
    return {"class": type(model).__name__,
            "name_or_path": getattr(cfg, "_name_or_path", None) if cfg is not None else None}


def save_adapter(model: nn.Module, path: str | Path, format: str = "peftlab",
                 name: str | None = None) -> Path:
    """Write the model's adapter (only its tensors + config) to the folder `path`.

    name: which of several named adapters (pl.adapter_names(model)); default the first. A
    later one is written exactly as if it were a model's only adapter, so the folder loads
    onto a plain base (pl.load_adapter(base, path)) or by name beside others."""
    if format not in ("peftlab", "hf-peft"):
        raise ValueError(f"Unknown adapter format {format!r}: use 'peftlab' or 'hf-peft'.")
    method = get_method(model)
    if method is None:
        raise AdapterError("This model carries no peftlab method, so there is no adapter to "
                           "save; apply one first, or save the whole model with save_pretrained.")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AdapterError(f"{path} exists and is a file; an adapter is saved as a folder.")
    module = method_module(method)
    if name is not None and name != _first_name(module, model, name):
        if format != "peftlab":
            raise AdapterError(f"Adapter {name!r} is not the model's first adapter: save it "
                               f"with format='peftlab', load that folder onto a plain base "
                               f"model and export the first adapter with format='hf-peft'.")
        config, targets, tensors = module.named_adapter(model, name)
        return _write_peftlab(model, path, method, config, targets, tensors)
    if format == "hf-peft":
        hf_config, tensors = export_hf_peft(model)
        atomic_write_all([(path / WEIGHTS_FILE, tensor_writer(tensors, {"format": "pt"})),
                          (path / HF_CONFIG_FILE, json_writer(hf_config))])
        _remove_stale(path / CONFIG_FILE)
        return path
    return _write_peftlab(model, path, method, get_config(model), get_targets(model),
                          adapter_state_dict(model))


def _first_name(module, model: nn.Module, name: str) -> str:
    """The model's first adapter name, after checking that `name` is one of its adapters."""
    names = module.adapter_names(model) if hasattr(module, "adapter_names") else ["default"]
    if name not in names:
        raise AdapterError(f"No adapter named {name!r} to save: the model has {names}.")
    return names[0]


def _write_peftlab(model: nn.Module, path: Path, method: str, config, targets,
                   tensors: dict) -> Path:
    meta = {
        "format": "peftlab",
        "format_version": FORMAT_VERSION,
        "method": method,
        "config_class": type(config).__name__,
        "config": config_to_dict(config, targets),
        "base_model": _base_fingerprint(model),
        "num_tensors": len(tensors),
        "num_parameters": int(sum(t.numel() for t in tensors.values())),
    }
    names = label_names_of(model)
    if names:
        meta["label_names"] = names      # model.config.id2label, restored by load_adapter
    # both files are written before either replaces its old version: a full disk leaves the
    # old adapter whole, never new weights beside an old config
    atomic_write_all([(path / WEIGHTS_FILE,
                       tensor_writer(tensors, {"format": "pt", "peftlab": method})),
                      (path / CONFIG_FILE, json_writer(meta))])
    _remove_stale(path / HF_CONFIG_FILE)
    return path


def _remove_stale(config_file: Path) -> None:
    """A folder saved earlier in the other format keeps its config file; it would describe the
    new tensors wrongly (read_adapter looks at peftlab_adapter.json first), so remove it."""
    if config_file.is_file():
        config_file.unlink()


def read_adapter(path: str | Path):
    """(format, method, config object, tensors) from an adapter folder, either format.
    Everything is checked (format, version, config fields, safetensors) before it returns."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"{path}: no such adapter folder (save_adapter writes a folder "
                           f"holding {CONFIG_FILE} or {HF_CONFIG_FILE}, and {WEIGHTS_FILE}).")
    if (path / CONFIG_FILE).is_file():
        meta = read_json(path / CONFIG_FILE)
        if not isinstance(meta, dict):
            raise AdapterError(f"{path / CONFIG_FILE} must hold a JSON object.")
        if meta.get("format") != "peftlab":
            raise AdapterError(f"{path / CONFIG_FILE} does not say format 'peftlab'.")
        version = meta.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise AdapterError(f"{path / CONFIG_FILE}: format_version must be an integer, got "
                               f"{version!r}: the file was edited by hand or is damaged.")
        if version > FORMAT_VERSION:
            raise AdapterError(f"{path} has format_version {meta['format_version']}; this "
                               f"peftlab reads up to {FORMAT_VERSION}. Upgrade peftlab.")
        missing = [k for k in ("method", "config_class", "config") if k not in meta]
        if missing:
            raise AdapterError(f"{path / CONFIG_FILE} lacks {', '.join(missing)}: it was not "
                               f"written by save_adapter, or was edited by hand.")
        wrong = [f"{k} must be {kind.__name__}, got {meta[k]!r:.40}"
                 for k, kind in (("method", str), ("config_class", str), ("config", dict))
                 if not isinstance(meta[k], kind)]
        if wrong:
            raise AdapterError(f"{path / CONFIG_FILE}: {'; '.join(wrong)}: it was edited by "
                               f"hand or is damaged.")
        config = config_from_dict(meta["method"], meta["config_class"], meta["config"])
        return "peftlab", meta["method"], config, read_tensors(path / WEIGHTS_FILE)
    if (path / HF_CONFIG_FILE).is_file():
        hf_cfg = read_json(path / HF_CONFIG_FILE)
        method, config, tensors = import_hf_peft(hf_cfg, read_tensors(path / WEIGHTS_FILE))
        return "hf-peft", method, config, tensors
    raise AdapterError(f"{path} holds neither {CONFIG_FILE} (peftlab) nor {HF_CONFIG_FILE} "
                       f"(Hugging Face PEFT).")


def adapter_label_names(path: str | Path) -> list[str]:
    """The class names saved with a peftlab adapter (its JSON's label_names), or []."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        return []
    meta = read_json(file)
    names = (meta.get("label_names") if isinstance(meta, dict) else None) or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise AdapterError(f"{file}: label_names must be a list of strings, got {names!r}.")
    return names


def load_adapter(model: nn.Module, path: str | Path, name: str | None = None) -> nn.Module:
    """Load an adapter onto `model` (format detected). On a plain base model the saved method
    is applied first. Everything is checked on a copy before the model itself is touched.
    Class names saved with the adapter go to model.config.id2label / label2id.

    name: load it as a named adapter beside those already on the model (LoRA, and AdaLoRA
    after to_lora; see pl.set_adapter, peftlab/lora/named.py); loading a name again replaces
    that adapter. On a plain model the first adapter gets this name (default "default")."""
    _, method, config, tensors = read_adapter(path)
    check_numbers(tensors, f"The adapter in {path}")
    names = adapter_label_names(path)
    current = get_method(model)
    if name is not None:
        named = getattr(method_module(method), "load_named", None)
        if named is None:
            raise AdapterError(f"Named adapters are implemented for LoRA (and AdaLoRA after "
                               f"pl.adalora.to_lora); {path} holds a {method!r} adapter. Load "
                               f"it without name= onto its own base model.")
        if current == method and name != method_module(method).adapter_names(model)[0]:
            return named(model, name, config, tensors, names, str(path))
    if current is not None and current != method:
        raise AdapterError(f"{path} holds a {method!r} adapter but the model carries "
                           f"{current!r}; load it onto a plain base model.")
    if current == method:
        _check_same_config(get_config(model), config, path)
    module = method_module(method)
    prepare = getattr(module, "prepare_load", None)

    def attach(m: nn.Module) -> None:
        if get_method(m) is None:
            if prepare is not None:
                prepare(m, config, tensors)
            else:
                module.apply(m, config)
        load_adapter_state(m, tensors)
        if names and getattr(getattr(m, "config", None), "id2label", None) is not None:
            set_label_names(m, names)

    # dry run on a copy: any mismatch raises here, and the caller's model is untouched
    try:
        attach(copy.deepcopy(model))
    except AdapterError:
        raise
    except (ValueError, RuntimeError, KeyError) as e:
        raise AdapterError(f"The adapter in {path} does not fit this model: {e}") from e
    attach(model)
    if name is not None and current is None:
        method_module(method).rename_first(model, name)
    return model


def _check_same_config(have, saved, path) -> None:
    """Loading into a model that already carries the method: its config must match the file's
    (targets / modules_to_save are checked tensor by tensor instead)."""
    if type(have) is not type(saved) or not dataclasses.is_dataclass(have):
        return
    diff = [f"{f.name}={getattr(saved, f.name)!r} in the adapter, {getattr(have, f.name)!r} "
            f"in the model" for f in dataclasses.fields(have)
            if f.name not in ("targets", "modules_to_save")
            and getattr(have, f.name) != getattr(saved, f.name)]
    if diff:
        raise AdapterError(f"The adapter in {path} was saved with another config: "
                           f"{'; '.join(diff)}. Load it onto a plain base model instead.")
