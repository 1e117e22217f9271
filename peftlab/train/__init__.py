"""Training: the fit() loop every method uses, and what it needs.

    batches.py      loaders from datasets, evaluate() (what a batch is: peftlab/core/batches.py)
    loop.py         fit(): the plain PyTorch loop with progress, evaluation and measurement
    distributed.py  data parallelism under torchrun
    checkpoint.py   checkpoints (safetensors + JSON) and exact resume
    history.py      history.jsonl logs (HistoryLog) and stopping early (StopAfter)
    results.py      FitState (what callbacks see) and FitResult (what fit returns)

    result = pl.train.fit(model, ds.train, ds.validation, tokenizer=tokenizer, epochs=1)
"""

from peftlab.core.batches import forward, logits_of, loss_fn, split_batch, to_device
from peftlab.train.batches import as_loader, check_labels, evaluate
from peftlab.train.checkpoint import CheckpointError
from peftlab.train.history import HistoryLog, StopAfter, read_history
from peftlab.train.distributed import init_distributed, is_main_process, shard, world
from peftlab.train.loop import fit
from peftlab.train.precision import Precision, cpu_bf16_support, resolve_precision
from peftlab.train.results import FitResult, FitState

__all__ = ["CheckpointError", "FitResult", "FitState", "HistoryLog", "Precision", "StopAfter",
           "as_loader", "cpu_bf16_support", "resolve_precision",
           "check_labels", "evaluate", "fit", "forward", "read_history",
           "init_distributed", "is_main_process", "logits_of", "loss_fn", "shard",
           "split_batch", "to_device", "world"]
