"""Property-based: pl.load_adapter on damaged adapter folders. A safetensors file truncated
anywhere or with bits flipped, tensors of the wrong dtype or shape or holding NaN / inf, a
JSON config with unknown keys, wrong types or flipped bytes: each loads (when the damage left
a valid adapter) or is refused with one AdapterError, and a refused load leaves the model
bit-identical (its state_dict, its module types and which parameters train), whether the
model is a plain base, carries the adapter already, or takes it as a second named one."""

from __future__ import annotations

import copy
import json
import os
import traceback

import hypothesis_profile  # noqa: F401  (registers the derandomised profile)
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_profile import examples
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

import peftlab as pl
from peftlab.core.errors import AdapterError
from peftlab.io.files import CONFIG_FILE, WEIGHTS_FILE

PEFTLAB = os.path.dirname(pl.__file__)


def tiny_base():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(plain base, the base with the adapter, the adapter folder's files as bytes)."""
    base = tiny_base()
    model = pl.lora.apply(copy.deepcopy(base), pl.lora.LoraConfig(r=2, targets=["query"]))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    folder = pl.save_adapter(model, tmp_path_factory.mktemp("adapter") / "a")
    files = {f.name: f.read_bytes() for f in folder.iterdir()}
    return base, model, files


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, type(m)) for n, m in model.named_modules()],
            [(n, p.requires_grad) for n, p in model.named_parameters()],
            copy.deepcopy(getattr(model.config, "id2label", None)))


def unchanged(model, snap) -> bool:
    state, types, grads, labels = snap
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in now) \
        and [(n, type(m)) for n, m in model.named_modules()] == types \
        and [(n, p.requires_grad) for n, p in model.named_parameters()] == grads \
        and getattr(model.config, "id2label", None) == labels


def load_checked(model, folder, name=None):
    """Load; on refusal check the error is one clear AdapterError and the model unchanged.
    Returns True if it loaded."""
    snap = snapshot(model)
    try:
        pl.load_adapter(model, folder, name=name)
    except Exception as e:                       # noqa: BLE001 - the property under test
        assert isinstance(e, AdapterError), "".join(traceback.format_exception(e))[-3000:]
        frames = traceback.extract_tb(e.__traceback__)
        assert frames[-1].filename.startswith(PEFTLAB), f"{type(e).__name__}: {e}"
        assert unchanged(model, snap), f"a refused load changed the model: {e}"
        return False
    for n, t in model.state_dict().items():       # what loaded is usable: finite numbers
        if t.is_floating_point():
            assert torch.isfinite(t).all(), f"{n} loaded with NaN / inf"
    return True


TARGETS = st.sampled_from(["plain", "same", "named"])


def load_onto(saved, target, folder):
    base, model, _ = saved
    if target == "plain":
        return load_checked(copy.deepcopy(base), folder)
    if target == "same":
        return load_checked(copy.deepcopy(model), folder)
    return load_checked(copy.deepcopy(model), folder, name="second")


def write(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


# --- damaged bytes ----------------------------------------------------------------------------

@settings(max_examples=examples(40))
@given(which=st.sampled_from([WEIGHTS_FILE, CONFIG_FILE]), data=st.data(), target=TARGETS)
def test_truncated_files_are_refused_and_change_nothing(saved, tmp_path_factory, which, data,
                                                         target):
    files = dict(saved[2])
    end = len(files[which].rstrip()) - 1            # cutting the JSON's final newline is no cut
    cut = data.draw(st.integers(0, end), label="cut at")
    files[which] = files[which][:cut]
    assert not load_onto(saved, target, write(tmp_path_factory.mktemp("cut") / "a", files))


@settings(max_examples=examples(60))
@given(which=st.sampled_from([WEIGHTS_FILE, CONFIG_FILE]), data=st.data(), target=TARGETS)
def test_flipped_bits_load_or_are_refused_and_change_nothing(saved, tmp_path_factory, which,
                                                             data, target):
    files = dict(saved[2])
    raw = bytearray(files[which])
    header = int.from_bytes(raw[:8], "little") + 8 if which == WEIGHTS_FILE else len(raw)
    # flips in the header (names, dtypes, offsets) or the JSON are the interesting ones
    where = st.integers(0, header - 1) if data.draw(st.booleans(), label="header") \
        else st.integers(0, len(raw) - 1)
    for at, bit in data.draw(st.lists(st.tuples(where, st.integers(0, 7)), min_size=1,
                                      max_size=3), label="flips"):
        raw[at] ^= 1 << bit
    files[which] = bytes(raw)
    load_onto(saved, target, write(tmp_path_factory.mktemp("flip") / "a", files))


# --- wrong tensors ----------------------------------------------------------------------------

KINDS = st.sampled_from(["dtype", "shape", "nan", "inf", "-inf", "drop", "extra", "rename",
                         "empty"])
DTYPES = st.sampled_from([torch.float16, torch.bfloat16, torch.float64, torch.int64,
                          torch.int8, torch.uint8, torch.bool])


@settings(max_examples=examples(50))
@given(kinds=st.lists(KINDS, min_size=1, max_size=2), data=st.data(), target=TARGETS)
def test_wrong_tensors_load_or_are_refused_and_change_nothing(saved, tmp_path_factory, kinds,
                                                              data, target):
    tensors = dict(load_bytes(saved[2][WEIGHTS_FILE]))
    for kind in kinds:
        name = data.draw(st.sampled_from(sorted(tensors)), label="tensor")
        t = tensors[name]
        if kind == "dtype":
            tensors[name] = t.to(data.draw(DTYPES, label="dtype"))
        elif kind == "shape":
            tensors[name] = torch.zeros(*t.shape, 2)        # one more axis: never the model's
        elif kind in ("nan", "inf", "-inf"):
            if not t.is_floating_point() or t.numel() == 0:
                t = torch.zeros(3)
            t = t.clone()
            t.view(-1)[data.draw(st.integers(0, t.numel() - 1), label="at")] = float(kind)
            tensors[name] = t
        elif kind == "drop" and len(tensors) > 1:
            del tensors[name]
        elif kind == "extra":
            tensors[name + "_extra"] = t.clone()
        elif kind == "rename":
            tensors["x." + name] = tensors.pop(name)
        elif kind == "empty":
            tensors[name] = torch.zeros(0)
    folder = tmp_path_factory.mktemp("tensors") / "a"
    folder.mkdir()
    (folder / CONFIG_FILE).write_bytes(saved[2][CONFIG_FILE])
    save_file(tensors, str(folder / WEIGHTS_FILE))
    changed_values = any(k in ("nan", "inf", "-inf", "shape", "drop", "extra", "rename",
                               "empty") for k in kinds)
    loaded = load_onto(saved, target, folder)
    if changed_values:
        assert not loaded, f"{kinds} should have been refused"


def test_named_load_without_lora_tensors(saved, tmp_path):
    tensors = {k: v for k, v in load_bytes(saved[2][WEIGHTS_FILE]).items() if ".lora_" not in k}
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / CONFIG_FILE).write_bytes(saved[2][CONFIG_FILE])
    save_file(tensors, str(folder / WEIGHTS_FILE))
    assert not load_onto(saved, "named", folder)


# --- wrong JSON -------------------------------------------------------------------------------

VALUE = st.one_of(st.none(), st.booleans(), st.integers(-2, 10 ** 12),
                  st.floats(allow_nan=False), st.text(max_size=8),
                  st.sampled_from(["lora", "LoraConfig", "peftlab", "full"]),
                  st.lists(st.one_of(st.text(max_size=4), st.integers()), max_size=3),
                  st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


@settings(max_examples=examples(80))
@given(edits=st.lists(st.tuples(st.sampled_from(["top", "config"]),
                                st.one_of(st.sampled_from(
                                    ["format", "format_version", "method", "config_class",
                                     "config", "label_names", "base_model", "num_tensors",
                                     "r", "alpha", "targets", "dropout", "modules_to_save",
                                     "rank_pattern", "variant", "rslora"]),
                                    st.text(min_size=1, max_size=6)),
                                st.one_of(VALUE, st.just("<delete>"))),
                      min_size=1, max_size=3),
       target=TARGETS)
def test_odd_json_loads_or_is_refused_and_changes_nothing(saved, tmp_path_factory, edits,
                                                          target):
    meta = json.loads(saved[2][CONFIG_FILE])
    for where, key, value in edits:
        obj = meta if where == "top" or not isinstance(meta.get("config"), dict) \
            else meta["config"]
        if value == "<delete>":
            obj.pop(key, None)
        else:
            obj[key] = value
    files = {**saved[2], CONFIG_FILE: json.dumps(meta).encode()}
    load_onto(saved, target, write(tmp_path_factory.mktemp("json") / "a", files))


def test_the_intact_adapter_loads_everywhere(saved, tmp_path):
    folder = write(tmp_path / "a", saved[2])
    for target in ("plain", "same", "named"):
        assert load_onto(saved, target, folder)
