"""Checkpoints: save a training run mid-way and resume it to the same final weights.

    pl.train.fit(model, ds.train, ds.validation, tokenizer=tok, epochs=3,
                 checkpoint_every=50, checkpoint_dir="run/checkpoints")
    # ... interrupted; later, on a fresh model built and adapted the same way:
    pl.train.fit(model, ds.train, ds.validation, tokenizer=tok, epochs=3,
                 checkpoint_every=50, checkpoint_dir="run/checkpoints",
                 resume_from="run/checkpoints")          # the latest checkpoint in it

A checkpoint is a folder step-000050/ holding two files, never a pickle:

    trainer.safetensors   every trainable parameter and every buffer of the model (adapter
                          weights, AdaLoRA's importance scores, BatchNorm statistics), the
                          optimizer's state tensors (AdamW's moments and step counts), the
                          random number generators' states (torch, CUDA, NumPy, the loader's)
    trainer.json          the step, the epoch and how far into it, the optimizer's
                          hyper-parameters, the LR scheduler's counters, Python's RNG state

What makes the resumed run *identical* to an uninterrupted one: the same weights, optimizer
moments, learning rate schedule position, random state (dropout masks), and the same data
order. The data order needs care: a shuffling DataLoader draws its permutation at the start of
each epoch, so a checkpoint also keeps the random states as they were when the epoch began;
resuming re-creates that epoch's order and skips the batches already trained on.
Exact for DataLoaders that shuffle with torch's generators (what TextSplit.loader and fit
build), on one process.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from peftlab.io.files import read_json, read_tensors, write_json, write_tensors

TENSORS, META = "trainer.safetensors", "trainer.json"
FORMAT = "peftlab-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or made for another run."""


# --- random state -------------------------------------------------------------------------------

def _loader_generator(loader) -> torch.Generator | None:
    g = getattr(loader, "generator", None)
    return g if isinstance(g, torch.Generator) else None


def rng_state(loader=None) -> tuple[dict, dict]:
    """(tensors, json) of every random generator: Python, NumPy, torch CPU/CUDA, the loader's."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    g = _loader_generator(loader)
    if g is not None:
        tensors["loader"] = g.get_state()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, py_gauss = random.getstate()
    meta = {"python": [version, list(internal), py_gauss],
            "numpy": [kind, int(pos), int(has_gauss), float(gauss)]}
    return tensors, meta


def set_rng_state(tensors: dict, meta: dict, loader=None) -> None:
    """Restore what rng_state() captured."""
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"cuda.{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"cuda.{i}"], i)
    g = _loader_generator(loader)
    if g is not None and "loader" in tensors:
        g.set_state(tensors["loader"])
    if "python" in meta:
        version, internal, py_gauss = meta["python"]
        random.setstate((version, tuple(internal), py_gauss))
    if "numpy" in meta and "numpy" in tensors:
        kind, pos, has_gauss, gauss = meta["numpy"]
        np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss,
                             gauss))


def epoch_rng(loader) -> dict:
    """The states that decide an epoch's data order, taken just before iter(loader)."""
    out = {"torch": torch.get_rng_state()}
    g = _loader_generator(loader)
    if g is not None:
        out["loader"] = g.get_state()
    return out


# --- saving -------------------------------------------------------------------------------------

def _model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {f"param.{n}": p.detach() for n, p in model.named_parameters() if p.requires_grad}
    out.update({f"buffer.{n}": b.detach() for n, b in model.named_buffers()})
    return out


def _optimizer_parts(optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, plain = {}, {}
    for idx, entry in sd["state"].items():
        for key, v in entry.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{key}"] = v
            else:
                plain.setdefault(str(idx), {})[key] = v
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def save(folder: str | Path, *, run, step: int, epoch: int, in_epoch: int, total: int,
         epoch_state: dict, loader=None, keep: int = 1) -> Path:
    """Write the checkpoint of `run` (fit's model, optimizer, scheduler, scaler) at `step`
    into folder/step-NNNNNN (a temp folder renamed at the end), keeping the newest `keep`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng_t, rng_meta = rng_state(loader)
    optim_t, optim_meta = _optimizer_parts(run.optimizer)
    tensors = {**_model_tensors(run.model), **optim_t,
               **{f"rng.{k}": v for k, v in rng_t.items()},
               **{f"epoch_rng.{k}": v for k, v in epoch_state.items()}}
    meta = {"format": FORMAT, "version": VERSION, "step": step, "epoch": epoch,
            "in_epoch": in_epoch, "total_steps": total, "optimizer": optim_meta,
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
            "rng": rng_meta}
    json.dumps(meta)   # fail here, before writing, if anything is not JSON
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:06d}.", dir=folder))
    final = folder / f"step-{step:06d}"
    try:
        write_tensors(tmp / TENSORS, tensors)
        write_json(tmp / META, meta)
        os.chmod(tmp, 0o755 & ~_umask())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    for old in checkpoints(folder)[:-keep] if keep else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def checkpoints(folder: str | Path) -> list[Path]:
    """The checkpoint folders (step-NNNNNN) in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and p.name.startswith("step-") and (p / META).is_file())


def latest(path: str | Path) -> Path:
    """`path` itself if it is a checkpoint, else the newest checkpoint inside it."""
    path = Path(path)
    if (path / META).is_file():
        return path
    found = checkpoints(path)
    if not found:
        raise CheckpointError(f"{path}: no checkpoint here (a checkpoint is a folder "
                              f"step-NNNNNN holding {META} and {TENSORS}).")
    return found[-1]


# --- resuming -----------------------------------------------------------------------------------

@dataclass
class ResumePoint:
    """Where a resumed fit() starts: the step, the epoch and how many of its batches are done,
    with the random states to re-create that epoch's data order and then continue."""

    step: int
    epoch: int
    in_epoch: int
    tensors: dict
    meta: dict

    def batches(self, loader):
        """(iterator over the rest of the epoch, the epoch-start RNG states, batches done)."""
        start = {k[len("epoch_rng."):]: v for k, v in self.tensors.items()
                 if k.startswith("epoch_rng.")}
        torch.set_rng_state(start["torch"])
        g = _loader_generator(loader)
        if g is not None and "loader" in start:
            g.set_state(start["loader"])
        it = iter(loader)
        for _ in range(self.in_epoch):       # the batches already trained on
            next(it)
        rng_t = {k[len("rng."):]: v for k, v in self.tensors.items() if k.startswith("rng.")}
        set_rng_state(rng_t, self.meta["rng"], loader)
        return it, start, self.in_epoch


def restore(path: str | Path, run, total: int) -> ResumePoint:
    """Load the checkpoint at `path` (or the newest inside it) into fit's run; everything is
    checked against the model before anything is copied."""
    ckpt = latest(path)
    meta = read_json(ckpt / META)
    if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{ckpt / META} is not a peftlab checkpoint this version reads.")
    if meta["total_steps"] != total:
        raise CheckpointError(f"{ckpt} belongs to a run of {meta['total_steps']} steps but this "
                              f"fit() would take {total}: resume with the same data, epochs, "
                              f"batch_size and max_steps as the interrupted run.")
    tensors = read_tensors(ckpt / TENSORS)
    model = run.model
    expected = _model_tensors(model)
    params = {k for k in expected if k.startswith("param.")}
    saved = {k for k in tensors if k.startswith("param.")}
    if params != saved:
        diff = sorted(params ^ saved)[:5]
        raise CheckpointError(f"{ckpt} does not fit this model: trainable parameters differ "
                              f"({', '.join(diff)}). Build and adapt the model as for the "
                              f"interrupted run.")
    for k in params:
        if tensors[k].shape != expected[k].shape:
            raise CheckpointError(f"{ckpt}: {k[6:]} has shape {tuple(tensors[k].shape)}, the "
                                  f"model's is {tuple(expected[k].shape)}.")
    with torch.no_grad():
        for k in params:
            model.get_parameter(k[6:]).copy_(tensors[k])
        for k, v in tensors.items():
            if k.startswith("buffer.") and k in expected:
                mod_name, _, buf = k[7:].rpartition(".")
                module = model.get_submodule(mod_name)
                old = module._buffers[buf]
                module._buffers[buf] = v.to(device=old.device, dtype=old.dtype)
    opt = meta["optimizer"]
    state = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    for idx, entry in opt["plain"].items():
        state.setdefault(int(idx), {}).update(entry)
    run.optimizer.load_state_dict({"state": state, "param_groups": opt["param_groups"]})
    run.scheduler.load_state_dict(meta["scheduler"])
    if meta.get("scaler"):
        run.scaler.load_state_dict(meta["scaler"])
    return ResumePoint(meta["step"], meta["epoch"], meta["in_epoch"], tensors, meta)
