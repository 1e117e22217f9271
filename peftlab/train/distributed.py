"""More than one process: what pl.train.fit needs to run under torchrun.

    torchrun --nproc_per_node=2 my_script.py      # CPU: gloo; CUDA: nccl, one GPU a process

fit() sees WORLD_SIZE > 1, joins the process group and wraps the model in
DistributedDataParallel. batch_size stays the global batch: every process reads the same batches
and computes its slice (`shard`), so N processes take the same optimizer steps as one.
"""

from __future__ import annotations

import os

import torch

from peftlab.core.batches import split_batch


def world() -> tuple[int, int, int]:
    """(world_size, rank, local_rank) from torchrun's environment; (1, 0, 0) otherwise."""
    return (int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
            int(os.environ.get("LOCAL_RANK", "0")))


def is_main_process() -> bool:
    """True in a single process, and in rank 0 under torchrun: the one that saves and prints."""
    return world()[1] == 0


def init_distributed(device: torch.device) -> torch.device:
    """Join the process group torchrun set up; return this process's device."""
    import torch.distributed as dist

    _, _, local_rank = world()
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type == "mps":
        raise ValueError("Distributed training on Apple MPS is not supported: pass "
                         "device='cpu' (gloo) or run on CUDA GPUs (nccl).")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shard(batch, rank: int, world_size: int):
    """This process's slice of a global batch, and its loss weight.

    Rows are split into `world_size` contiguous chunks (torch.tensor_split). DDP averages the
    processes' gradients, so rank r's mean loss is scaled by n_r * world_size / n: the average
    of the scaled gradients is then exactly the gradient of the mean loss over all n rows. A
    rank left without rows (a tiny last batch) reuses row 0 with weight 0.
    """
    _, labels = split_batch(batch)
    n = labels.shape[0]
    rows = torch.tensor_split(torch.arange(n), world_size)[rank]
    weight = len(rows) * world_size / n
    if len(rows) == 0:
        rows, weight = torch.arange(1), 0.0

    def take(x):
        if torch.is_tensor(x) and x.dim() > 0 and x.shape[0] == n:
            return x[rows.to(x.device)]
        if isinstance(x, dict):
            return {k: take(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(take(v) for v in x)
        return x
    return take(batch), weight
