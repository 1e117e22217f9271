"""A full disk during save: the save fails with one clear DiskFullError (an OSError, errno
ENOSPC, naming the folder and the space), the adapter saved there before is intact byte for
byte and still loads, no temp file is left behind, and once there is room the same save works.

Both ways in one test: a real size-limited folder (a small tmpfs, where this runs as root and
may mount) and an ENOSPC injected into the one low-level write of peftlab/io/files.py (always:
the same path any disk or quota failure takes). Also a run.json write (checkpoints and run
folders use the same writer)."""

from __future__ import annotations

import copy
import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch

import peftlab as pl
from peftlab.io import files
from peftlab.io.files import CONFIG_FILE, WEIGHTS_FILE, DiskFullError


def tiny_lora(seed: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=2)).eval()
    model = pl.lora.apply(copy.deepcopy(base), pl.lora.LoraConfig(r=2, targets=["query"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1, generator=g)
    return base, model


def mount_tmpfs(folder: Path, size: str) -> bool:
    """Mount a tmpfs of `size` at folder; False where this process may not (not root, no
    CAP_SYS_ADMIN, a container without mount)."""
    if os.geteuid() != 0:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                       capture_output=True)
    return r.returncode == 0


def fill(folder: Path, leave: int) -> Path:
    """Write a filler file until the disk is full, then free `leave` bytes."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def check_refused_and_intact(model, base, folder: Path, before: dict, how: str):
    with pytest.raises(DiskFullError) as e:
        pl.save_adapter(model, folder)
    msg = str(e.value)
    assert e.value.errno == errno.ENOSPC and "No space left" in msg and str(folder) in msg, msg
    assert "unchanged" in msg
    assert contents(folder) == before, f"{how}: the previous adapter changed"   # no temp left
    loaded = pl.load_adapter(copy.deepcopy(base), folder)                       # still loads
    assert loaded is not None


def test_a_full_disk_during_save_is_one_clear_error_and_keeps_the_old_files(tmp_path,
                                                                           monkeypatch):
    base, first = tiny_lora(1)
    _, second = tiny_lora(2)
    ways = []

    # 1. a real full disk: a 256 KiB tmpfs (root only), filled to the last few bytes
    disk = tmp_path / "disk"
    if mount_tmpfs(disk, "256k"):
        try:
            folder = pl.save_adapter(first, disk / "adapter")
            before = contents(folder)
            filler = fill(disk, leave=1024)            # room for a JSON, not for the tensors
            check_refused_and_intact(second, base, folder, before, "tmpfs")
            filler.unlink()                            # room again: the same save works
            pl.save_adapter(second, folder)
            assert contents(folder) != before
            ways.append("tmpfs")
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)

    # 2. an injected ENOSPC in the low-level write, half-way through a file (any machine)
    folder = pl.save_adapter(first, tmp_path / "adapter")
    before = contents(folder)
    real = files._write_bytes

    def half_then_enospc(path, data):
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    for victim in (WEIGHTS_FILE, CONFIG_FILE):         # the first file or the second fails
        def write(path, data, victim=victim):
            (half_then_enospc if Path(path).name.startswith("." + victim) else real)(path, data)
        monkeypatch.setattr(files, "_write_bytes", write)
        check_refused_and_intact(second, base, folder, before, f"injected in {victim}")
    monkeypatch.setattr(files, "_write_bytes", half_then_enospc)
    with pytest.raises(DiskFullError):                 # the Hugging Face PEFT format too
        pl.save_adapter(second, tmp_path / "hf", format="hf-peft")
    assert not (tmp_path / "hf").exists() or not list((tmp_path / "hf").iterdir())
    ways.append("injected")

    # the run and checkpoint writers take the same path
    run_json = tmp_path / "run.json"
    run_json.write_text('{"old": true}\n')
    with pytest.raises(DiskFullError):
        files.write_json(run_json, {"new": True})
    assert run_json.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    monkeypatch.setattr(files, "_write_bytes", real)
    pl.save_adapter(second, folder)
    assert contents(folder) != before
    assert ways == (["tmpfs", "injected"] if os.geteuid() == 0 and
                    mount_allowed() else ["injected"])


def mount_allowed() -> bool:
    probe = Path("/tmp") / f"peftlab-mount-probe-{os.getpid()}"
    try:
        ok = mount_tmpfs(probe, "16k")
        if ok:
            subprocess.run(["umount", str(probe)], check=False)
        return ok
    finally:
        if probe.exists():
            probe.rmdir()
