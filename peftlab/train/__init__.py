"""Training: the fit() loop every method uses, and what it needs.

    batches.py      loaders from datasets, evaluate() (what a batch is: peftlab/core/batches.py)
    loop.py         fit(): the plain PyTorch loop with progress, evaluation and measurement
    distributed.py  data parallelism under torchrun

    result = pl.train.fit(model, ds.train, ds.validation, tokenizer=tokenizer, epochs=1)
"""

from peftlab.core.batches import forward, logits_of, loss_fn, split_batch, to_device
from peftlab.train.batches import as_loader, evaluate
from peftlab.train.distributed import init_distributed, is_main_process, shard, world
from peftlab.train.loop import FitResult, FitState, fit

__all__ = ["FitResult", "FitState", "as_loader", "evaluate", "fit", "forward",
           "init_distributed", "is_main_process", "logits_of", "loss_fn", "shard",
           "split_batch", "to_device", "world"]
