import random

import numpy as np
import pytest
import torch

from peftlab import runtime


def test_cpu_always_available_and_last():
    assert runtime.available_devices()[-1] == "cpu"
    assert runtime.get_device("cpu").type == "cpu"


def test_env_var_overrides_and_argument_overrides_env(monkeypatch):
    monkeypatch.setenv("PEFTLAB_DEVICE", "cpu")
    assert runtime.get_device().type == "cpu"
    monkeypatch.setenv("PEFTLAB_DEVICE", "tpu")
    with pytest.raises(ValueError, match="tpu"):
        runtime.get_device()
    assert runtime.get_device("cpu").type == "cpu"


def test_unknown_or_missing_device_is_a_clear_error():
    with pytest.raises((ValueError, RuntimeError), match="device|Device"):
        runtime.get_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            runtime.get_device("cuda")


def test_seed_everything_seeds_python_numpy_torch():
    runtime.seed_everything(123)
    a = (random.random(), np.random.rand(), torch.rand(3))
    runtime.seed_everything(123)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    runtime.seed_everything(124)
    assert torch.rand(1).item() != a[2][0].item()


def test_seed_rejects_negative():
    with pytest.raises(ValueError, match="seed"):
        runtime.seed_everything(-1)


def test_online_respects_offline_flag(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert runtime.online() is False


def test_online_false_when_unreachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert runtime.online(host="127.0.0.1", port=9, timeout=0.5) is False
