"""Saving and loading adapters: safetensors for tensors, JSON for configs, never pickle.

    files.py      atomic writes, reading, the name/shape check before loading
    adapters.py   save_adapter / load_adapter (the peftlab format), format detection
    hf_peft.py    the Hugging Face PEFT on-disk format: dispatch to each method's format.py
"""

from peftlab.io.adapters import adapter_state_dict, load_adapter, read_adapter, save_adapter
from peftlab.io.files import (
    CONFIG_FILE,
    HF_CONFIG_FILE,
    WEIGHTS_FILE,
    atomic_write,
    check_state,
    read_json,
    read_tensors,
    write_json,
    write_tensors,
)

__all__ = ["CONFIG_FILE", "HF_CONFIG_FILE", "WEIGHTS_FILE", "adapter_state_dict",
           "atomic_write", "check_state", "load_adapter", "read_adapter", "read_json",
           "read_tensors", "save_adapter", "write_json", "write_tensors"]
