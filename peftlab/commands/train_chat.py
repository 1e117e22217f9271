"""`peftlab train --task chat`: the chat model (SmolLM2-135M-Instruct, or --base-model) learns
the answers of a user's conversations (JSON Lines: "messages", or "prompt" and "response").

The same run folder, checkpoints, Ctrl-C / --stop-after and --resume as a text run
(commands/train.py does the training); here: which task the data is, the chat defaults
(LoRA on every linear layer, the chat comparison's learning rates, batch 8), the checks that
refuse what does not apply to chat, and the end of a run: greedy answers to the test split
scored by exact match and per field (pl.chat.scoring).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from peftlab.commands import methods as registered
from peftlab.commands import runs
from peftlab.commands.methods import apply_method, describe

LORA_FAMILY = ("lora", "qlora", "adalora")      # the methods that read --targets as LoRA does


def task(args, parser) -> str:
    """--task, with auto resolved: chat when the data holds conversations."""
    from peftlab.data.chat import is_chat_source

    try:
        chat = is_chat_source(args.data)
    except Exception:  # noqa: BLE001  (an unreadable file: the data check below says why)
        chat = False
    if args.task == "auto":
        return "chat" if chat else "text"
    if args.task == "text" and chat:
        parser.error(f"argument --task: {args.data} holds conversations (chat data), not "
                     f"labelled texts; drop --task text (or pass --task chat) to train the "
                     f"chat model on it")
    return args.task


def learning_rate(method: str, task: str) -> float:
    """The default peak learning rate: the chat comparison's for the method (chat), else the
    method's text-task default."""
    if task == "chat":
        from peftlab.compare.methods import rows
        chat = rows("chat")
        if method in chat:
            return chat[method].budget.lr
    return registered.learning_rate(method)


def defaults(s: dict, args, parser) -> None:
    """The chat run's defaults (LoRA on every linear layer: the placement the chat
    comparison found best on validation) and the options that do not apply to it."""
    text_only = [f for f, v in (("--text-column", args.text_column != "text"),
                                ("--label-column", args.label_column != "label"),
                                ("--labels", args.labels is not None)) if v]
    if text_only:
        parser.error(f"argument {text_only[0]}: chat data has no text or label columns (each "
                     f"line is a conversation); drop {', '.join(text_only)}")
    if args.method in ("head",):
        parser.error("argument --method head: a chat model has no classification head to "
                     "train alone; choose lora (default), qlora, ia3, prompt, prefix, ...")
    if s["method"] in LORA_FAMILY and not s.get("targets"):
        s["targets"] = ["all-linear"]

def prepare(s: dict, resuming: bool, parser) -> dict:
    import peftlab as pl
    from peftlab.models import ModelNotFoundError

    try:
        ds = pl.data.load_dataset(s["data"], seed=s["seed"])
    except (pl.data.DatasetError, pl.chat.ChatDataError, ValueError) as e:
        parser.error(f"argument --data: {e}")
    if not isinstance(ds, pl.data.ChatDatasetSplits):
        parser.error(f"argument --data: {s['data']} holds no conversations: --task chat needs "
                     f"JSON Lines with 'messages' (a list of {{role, content}}) or 'prompt' "
                     f"and 'response' on each line")
    try:
        model, tok = pl.models.chat_model(s["base_model"])
    except (ModelNotFoundError, OSError, ValueError) as e:
        parser.error(f"argument --base-model: {e}")
    if s["max_length"] != "auto":
        parser.error("argument --max-length: a chat run keeps every conversation whole "
                     "(batches are as long as their longest example); drop --max-length")
    total = math.ceil(math.ceil(len(ds.train) / s["batch_size"]) * s["epochs"])
    pl.runtime.seed_everything(s["seed"])          # the adapter's initial weights: seeded
    try:
        apply_method(model, tok, s, ds.train, total)
    except (ValueError, TypeError, KeyError) as e:
        parser.error(f"argument --method {s['method']}: {e}")
    return {"settings": s, "resuming": resuming, "ds": ds, "model": model, "tokenizer": tok,
            "total": total, "truncated": 0}


def finish(plan: dict, result, staging: Path, out: Path, step: int) -> int:
    """A chat run's end: greedy answers to the test split scored (exact match, per field),
    the adapter saved, run.json written, the folder renamed."""
    import peftlab as pl
    from peftlab.chat.scoring import evaluate

    s, ds, model, tok = plan["settings"], plan["ds"], plan["model"], plan["tokenizer"]
    test = evaluate(model, tok, ds.test, batch_size=2 * s["batch_size"], examples=3)
    test.pop("generated")
    held = {k: v for k, v in result.final.items() if k != "generated"}
    pl.save_adapter(model, staging / runs.ADAPTER_DIR)
    runs.write_run(staging, info(plan, "done", step, validation=held, test=test,
                                  train_time_s=result.train_time, trainable=result.trainable,
                                  total_parameters=result.total, precision=result.precision,
                                  cpu=pl.train.precision.cpu_bf16_support()))
    runs.finish(staging, out)
    loss = held.get("loss", float("nan"))
    print(f"{describe(s)}: validation loss {loss:.4f} per answer token, test exact match "
          f"{test['exact_match']:.3f} ({test['n']} conversations)")
    print(f"saved {out}/ ({runs.ADAPTER_DIR}/, {runs.RUN_FILE}, {runs.HISTORY_FILE}, "
          f"{runs.CHECKPOINT_DIR}/); talk to it: peftlab chat --model {out}")
    return 0


def info(plan: dict, status: str, step: int, digest: str | None = None, **extra) -> dict:
    """run.json of a chat run (digest: the data's sha256; default: computed once)."""
    import peftlab as pl

    s, ds = plan["settings"], plan["ds"]
    if digest is None:
        digest = plan.setdefault("sha256", runs.file_digest(Path(s["data"]))
                                 if Path(s["data"]).exists() else None)
    return {"format": runs.FORMAT, "version": 1, "peftlab_version": pl.__version__,
            "task": "chat", "status": status, "step": step, "total_steps": plan["total"],
            "created": plan.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            "method": describe(s), "base_model": s["base_model"], "settings": s,
            "data": {"path": s["data"], "task": "chat", "system": ds.train.system,
                     "sizes": {k: len(getattr(ds, k)) for k in ("train", "validation", "test")},
                     "sha256": digest},
            "max_length": None, **extra}
