"""`peftlab train`: your data, one method, a run folder (see peftlab/commands/runs.py).

Everything is checked before training starts: the options, the output folder, the data
(columns, labels, classes), the base model and the method's config. Then the run trains in
OUT.partial/, writing history.jsonl as it goes and a checkpoint every --checkpoint-every
steps, and is renamed to OUT when it has finished. Ctrl-C (once) or --stop-after N stops at
the end of a step with a checkpoint; `peftlab train --resume OUT` continues to the same final
weights an uninterrupted run would have.
"""

from __future__ import annotations

import argparse
import math
import shutil
import signal
import time
from pathlib import Path

from peftlab.commands import methods as registered
from peftlab.commands import options as opt
from peftlab.commands import runs
from peftlab.commands import train_chat as chat
from peftlab.commands.methods import apply_method, describe

EXAMPLES = """examples:
  peftlab train --data reviews.csv --text-column review --label-column topic --out runs/topics
  peftlab train --data my_folder/ --method adalora --r 12 --epochs 5 --out runs/ada
  peftlab train --data reviews.csv --method lora --targets all-linear --r 4 --out runs/wide
  peftlab train --resume runs/topics        # continue an interrupted run (Ctrl-C, --stop-after)
  peftlab train --task chat --data my_chats.jsonl --out runs/chat   # SmolLM2, LoRA all-linear
  peftlab chat --model runs/chat            # then talk to it
"""

# options that define a run (saved in run.json; --resume takes them from there); the
# methods' own options (--r, --virtual-tokens, ...) come from their specs (settings())
COMMON = ("task", "data", "text_column", "label_column", "labels", "max_length", "base_model",
          "method", "epochs", "lr", "batch_size", "seed", "checkpoint_every", "out",
          "overwrite", "precision")


def settings() -> tuple[str, ...]:
    """Every option that defines a run: the common ones and each method's (from its spec)."""
    return COMMON + tuple(o.dest for o in registered.options().values())


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the `train` subcommand to the subparsers `sub`."""
    p = sub.add_parser(
        "train", help="train one method on your data and save a run folder",
        description="Train one method on a text classification dataset of your own (or a "
                    "shipped one) and save the adapter, run.json, history.jsonl and "
                    "checkpoints in a run folder.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--task", choices=("auto", "text", "chat"), default="auto",
                   help="text: classify texts with the encoder (all-MiniLM-L6-v2); chat: teach "
                        "the chat model (SmolLM2-135M-Instruct) the answers of JSON Lines "
                        "conversations ('messages', or 'prompt' and 'response'); auto (default): "
                        "chat when the data holds conversations")
    d.add_argument("--data", metavar="PATH", help="a .csv/.tsv/.jsonl/.json file (split "
                   "80/10/10, seeded), a folder with train (+ validation, test) files, or a "
                   "shipped dataset name")
    d.add_argument("--text-column", default="text", metavar="NAME",
                   help="column holding the texts (default: text)")
    d.add_argument("--label-column", default="label", metavar="NAME",
                   help="column holding the labels: names or integer ids (default: label)")
    d.add_argument("--labels", type=opt.name_list, default=None, metavar="A,B,...",
                   help="label names in the order of their ids (default: sorted)")
    d.add_argument("--max-length", type=opt.max_length, default="auto", metavar="N|auto",
                   help="tokens kept per text; auto: 99%% of the training texts fit "
                        "(default: auto)")
    m = p.add_argument_group("model and method")
    m.add_argument("--base-model", default=None, metavar="NAME_OR_PATH",
                   help="a transformers model folder or hub id (default: the embedded "
                        "all-MiniLM-L6-v2, offline; --task chat: the embedded "
                        "SmolLM2-135M-Instruct)")
    m.add_argument("--method", choices=registered.names(), default="lora",
                   help="default: lora")
    for o in registered.options().values():           # each method's own, from its spec
        m.add_argument(o.flag, type=getattr(opt, o.kind), default=o.default, help=o.help,
                       **({"metavar": "A,B,..."} if o.kind == "name_list" else {}))
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=opt.positive_float, default=3.0, help="default 3")
    t.add_argument("--lr", type=opt.positive_float, default=None,
                   help="peak learning rate (default: per method and task, e.g. lora 3e-3 "
                        "text, 2e-3 chat)")
    t.add_argument("--batch-size", type=opt.positive_int, default=None,
                   help="default 16 (text), 8 (chat)")
    t.add_argument("--seed", type=opt.seed, default=0, help="default 0")
    t.add_argument("--device", type=opt.device, default=None,
                   help="cpu, cuda, cuda:N or mps (default: the best available)")
    t.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default="fp32",
                   help="fp32 (default); bf16 autocast where the CPU/GPU has it (a CPU without "
                        "bf16 instructions runs fp32 and says so); fp16 needs CUDA; auto picks")
    t.add_argument("--checkpoint-every", type=opt.positive_int, default=100, metavar="STEPS",
                   help="save a checkpoint every STEPS steps (default 100; a stop always "
                        "saves one)")
    t.add_argument("--stop-after", type=opt.positive_int, default=None, metavar="STEPS",
                   help="stop after STEPS steps in all, as Ctrl-C would; --resume continues")
    t.add_argument("--progress", action="store_true", help="show a progress bar")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, default=None, metavar="FOLDER",
                   help="the run folder to create")
    o.add_argument("--overwrite", action="store_true",
                   help="replace an existing run folder (only once the new run finishes)")
    o.add_argument("--resume", type=Path, default=None, metavar="FOLDER",
                   help="continue the interrupted run FOLDER with its own settings")
    return p


# --- checks before any work ---------------------------------------------------------------------

def _settings(args, parser) -> tuple[dict, bool]:
    """(the run's settings, resuming?) from the command line or, with --resume, run.json."""
    if args.resume is None:
        if args.data is None or args.out is None:
            parser.error("the following arguments are required: "
                         + ", ".join(o for o, v in (("--data", args.data), ("--out", args.out))
                                     if v is None) + " (or --resume FOLDER)")
        out = args.out
        if out.exists() and out.is_dir() and not args.overwrite:
            parser.error(f"argument --out: {out} exists; pass --overwrite to replace it (the "
                         f"old run stays until the new one finishes), or choose another folder")
        staging = runs.partial(out)
        if staging.exists() and not args.overwrite:
            info = runs.read_run(staging) if (staging / runs.RUN_FILE).is_file() else {}
            parser.error(f"argument --out: {staging} holds an unfinished run "
                         f"({runs.status_line(info)}); continue it with `peftlab train "
                         f"--resume {out}`, or pass --overwrite to start again")
        try:
            opt.check_writable_folder(out)
        except ValueError as e:
            parser.error(str(e))
        s = {k: getattr(args, k) for k in settings()}
        s["data"] = str(Path(args.data).resolve()) if Path(args.data).exists() else args.data
        s["out"] = str(out)
        s["task"] = chat.task(args, parser)
        s["batch_size"] = args.batch_size or (8 if s["task"] == "chat" else 16)
        s["lr"] = args.lr or chat.learning_rate(args.method, s["task"])
        if s["task"] == "chat":
            chat.defaults(s, args, parser)
        return s, False
    given = [k for k in settings() if k != "out" and getattr(args, k) != parser.get_default(k)]
    if args.out is not None or given:
        names = ["--" + k.replace("_", "-") for k in (["out"] if args.out else []) + given]
        parser.error(f"argument --resume: the run keeps the settings it started with (in "
                     f"its run.json); drop {', '.join(names)} (only --stop-after, --device and "
                     f"--progress go with --resume)")
    out = runs.final(args.resume)
    staging = runs.partial(out)
    if not staging.is_dir():
        if out.is_dir():
            parser.error(f"argument --resume: {out} has finished; nothing to resume")
        parser.error(f"argument --resume: no run {out} (and no {staging}) to resume")
    info = runs.read_run(staging)
    from peftlab.train.checkpoint import checkpoints
    if not checkpoints(staging / runs.CHECKPOINT_DIR):
        parser.error(f"argument --resume: {staging} has no checkpoint (it stopped before its "
                     f"first one); start again with --overwrite")
    s = dict(info["settings"])
    digest = info["data"].get("sha256")
    if digest and Path(s["data"]).exists() and runs.file_digest(Path(s["data"])) != digest:
        parser.error(f"argument --resume: the data {s['data']} changed since the run "
                     f"started; resuming would not give the same run. Start again with "
                     f"--overwrite")
    return s, True


def prepare(args, parser) -> dict:
    """Check everything and build the model; a dict the training step needs. Every problem
    ends here with one line and exit code 2, before any file is written."""
    import peftlab as pl
    from peftlab.models import ModelNotFoundError

    s, resuming = _settings(args, parser)
    if s.get("task", "text") == "chat":
        return chat.prepare(s, resuming, parser)
    try:
        ds = pl.data.load_dataset(s["data"], text_column=s["text_column"],
                                  label_column=s["label_column"], label_names=s["labels"],
                                  seed=s["seed"])
    except pl.data.DatasetError as e:
        parser.error(f"argument --data: {e}")
    try:
        model, tok = pl.models.text_classifier(num_labels=ds.num_labels, name=s["base_model"],
                                               seed=s["seed"])
    except (ModelNotFoundError, OSError, ValueError) as e:
        parser.error(f"argument --base-model: {e}")
    if s["max_length"] == "auto":
        s["max_length"] = pl.data.choose_max_length(tok, ds.train.texts,
                                                    lengths=ds.train.token_lengths(tok))
    cut = ds.train.truncated(tok, s["max_length"])
    total = math.ceil(math.ceil(len(ds.train) / s["batch_size"]) * s["epochs"])
    try:
        apply_method(model, tok, s, ds.train, total)
    except (ValueError, TypeError, KeyError) as e:
        parser.error(f"argument --method {s['method']}: {e}")
    return {"settings": s, "resuming": resuming, "ds": ds, "model": model, "tokenizer": tok,
            "total": total, "truncated": cut}


# --- training -----------------------------------------------------------------------------------

class _Interrupt:
    """Ctrl-C once: stop at the end of the current step (with a checkpoint); twice: at once."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        opt.say("\nstopping after this step (Ctrl-C again to stop at once) ...")

    def on_step_end(self, state):
        if self.requested:
            state.stop = True


class _EpochLine:
    def __init__(self, epochs):
        self.epochs = epochs

    def on_epoch_end(self, state):
        acc = state.eval_metrics.get("accuracy")
        shown = f", validation accuracy {acc:.3f}" if acc is not None else ""
        opt.say(f"epoch {state.epoch}/{self.epochs:g}: step {state.step}/{state.total_steps}, "
                f"loss {state.loss:.4f}{shown}")


def _info(plan: dict, status: str, step: int, **extra) -> dict:
    import peftlab as pl

    s, ds = plan["settings"], plan["ds"]
    digest = plan.setdefault("sha256", runs.file_digest(Path(s["data"]))
                             if Path(s["data"]).exists() else None)
    if s.get("task") == "chat":
        return chat.info(plan, status, step, digest, **extra)
    return {"format": runs.FORMAT, "version": 1, "peftlab_version": pl.__version__,
            "status": status, "step": step, "total_steps": plan["total"],
            "created": plan.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            "method": describe(s), "base_model": s["base_model"], "settings": s,
            "data": {"path": s["data"], "text_column": s["text_column"],
                     "label_column": s["label_column"], "label_names": ds.label_names,
                     "num_labels": ds.num_labels, "sizes": {k: len(getattr(ds, k)) for k in
                                                            ("train", "validation", "test")},
                     "sha256": digest},
            "max_length": s["max_length"], **extra}


def execute(args, plan: dict) -> int:
    """Train in OUT.partial/, then finish the run folder; the exit code."""
    import peftlab as pl

    s, ds, model, tok = plan["settings"], plan["ds"], plan["model"], plan["tokenizer"]
    out = Path(s["out"])
    staging = runs.partial(out)
    ckdir = staging / runs.CHECKPOINT_DIR
    if plan["resuming"]:
        old = runs.read_run(staging)
        plan["created"] = old.get("created")
        step0 = int(pl.io.read_json(pl.train.checkpoint.latest(ckdir) / "trainer.json")["step"])
        pl.train.history.truncate_history(staging / runs.HISTORY_FILE, step0)
        opt.say(f"resuming {out} at step {step0} of {plan['total']}")
    else:
        if staging.exists():                 # --overwrite of an unfinished run
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        runs.write_run(staging, _info(plan, "running", 0))
        n = len(ds.train)
        if s.get("task") == "chat":
            opt.say(f"training {describe(s)} on {n} conversations (answer-only loss), "
                    f"{plan['total']} steps")
        else:
            opt.say(f"training {describe(s)} on {n} examples ({ds.num_labels} labels: "
                    f"{', '.join(ds.label_names) or 'ids'}), {plan['total']} steps, max_length "
                    f"{s['max_length']}" + (f" ({plan['truncated']} of {n} training texts are "
                                            f"longer and are cut)" if plan["truncated"] else ""))
    stop = _Interrupt()
    callbacks = [pl.train.HistoryLog(staging / runs.HISTORY_FILE), _EpochLine(s["epochs"]), stop]
    if args.stop_after:
        callbacks.append(pl.train.StopAfter(args.stop_after))
    previous = signal.signal(signal.SIGINT, stop)
    try:
        result = pl.train.fit(
            model, ds.train, ds.validation, tokenizer=tok, epochs=s["epochs"], lr=s["lr"],
            batch_size=s["batch_size"], device=args.device,
            max_length=None if s.get("task") == "chat" else s["max_length"],
            seed=s["seed"], progress=args.progress, callbacks=callbacks,
            precision=s.get("precision", "fp32"),
            checkpoint_every=s["checkpoint_every"], checkpoint_dir=ckdir,
            resume_from=ckdir if plan["resuming"] else None)
    except BaseException as e:      # noqa: BLE001  (Ctrl-C twice included: clean up, explain)
        kept = bool(pl.train.checkpoint.checkpoints(ckdir))
        if kept:
            runs.write_run(staging, {**runs.read_run(staging), "status": "failed",
                                     "error": f"{type(e).__name__}: {e}"})
            where = f"; the run so far is in {staging}: `peftlab train --resume {out}`"
        else:
            shutil.rmtree(staging, ignore_errors=True)
            where = "; nothing was kept"
        opt.say(f"peftlab train: error: {type(e).__name__}: {e}{where}")
        return 130 if isinstance(e, KeyboardInterrupt) else 1
    finally:
        signal.signal(signal.SIGINT, previous)
    step = plan["total"] if not result.stopped else result.history[-1]["step"]
    if result.stopped:
        runs.write_run(staging, _info(plan, "interrupted", step))
        opt.say(f"stopped at step {step} of {plan['total']}; the run is in {staging}; continue "
                f"it with: peftlab train --resume {out}")
        return 0 if args.stop_after and not stop.requested else 130
    if s.get("task") == "chat":
        return chat.finish(plan, result, staging, out, step)
    test = pl.train.evaluate(model, ds.test.loader(tok, batch_size=2 * s["batch_size"],
                                                   max_length=s["max_length"]))
    pl.save_adapter(model, staging / runs.ADAPTER_DIR)
    runs.write_run(staging, _info(plan, "done", step, validation=result.final,
                                  test=test, train_time_s=result.train_time,
                                  trainable=result.trainable, total_parameters=result.total,
                                  precision=result.precision,
                                  cpu=pl.train.precision.cpu_bf16_support()))
    runs.finish(staging, out)
    print(f"{describe(s)}: validation accuracy {result.final.get('accuracy', float('nan')):.3f}, "
          f"test accuracy {test['accuracy']:.3f} ({test['n']} examples)")
    print(f"saved {out}/ ({runs.ADAPTER_DIR}/, {runs.RUN_FILE}, {runs.HISTORY_FILE}, "
          f"{runs.CHECKPOINT_DIR}/)")
    return 0


def main(args, parser) -> int:
    """`peftlab train`: check, train, save; the exit code."""
    return execute(args, prepare(args, parser))
