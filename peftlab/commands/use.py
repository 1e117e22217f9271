"""`peftlab evaluate` and `peftlab predict`: use a finished run folder.

    peftlab evaluate --model runs/topics --data test.csv
    echo "the striker scored twice" | peftlab predict --model runs/topics
    peftlab predict --model runs/topics --input sentences.txt > predictions.jsonl
    peftlab evaluate --model runs/chat --data held_out.jsonl       # a chat run: exact match
    echo "Extract the name, city and day: Anna flies to Oslo on Friday." | peftlab chat --model runs/chat
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from peftlab.commands import options as opt
from peftlab.commands import runs

EVALUATE_EXAMPLES = """examples:
  peftlab evaluate --model runs/topics --data test.csv
  peftlab evaluate --model runs/topics --data test.jsonl --label-column topic --json
"""
PREDICT_EXAMPLES = """examples:
  echo "the striker scored twice" | peftlab predict --model runs/topics
  peftlab predict --model runs/topics --input sentences.txt > predictions.jsonl

Output: one JSON line per text: {"text": ..., "label": ..., "probabilities": {label: p}}
"""


CHAT_EXAMPLES = """examples:
  peftlab chat --model runs/chat                       # a prompt when stdin is a terminal
  echo "Extract the name, city and day: Anna flies to Oslo on Friday." | peftlab chat --model runs/chat
  peftlab chat --model runs/chat --json < questions.txt > answers.jsonl

Each input line is one user message, answered on its own (no memory of earlier lines), with the
run's system prompt; greedy, so the same line gives the same answer.
"""


def _common(p) -> None:
    p.add_argument("--model", type=Path, required=True, metavar="RUN",
                   help="a run folder written by `peftlab train`")
    p.add_argument("--batch-size", type=opt.positive_int, default=32, help="default 32")
    p.add_argument("--device", type=opt.device, default=None,
                   help="cpu, cuda, cuda:N or mps (default: the best available)")


def add_parsers(sub) -> None:
    """Add the `evaluate` and `predict` subcommands to the subparsers `sub`."""
    e = sub.add_parser("evaluate", help="accuracy of a trained run on labelled data",
                       description="Load a run's adapter onto its base model and report loss "
                                   "and accuracy (overall and per label) on labelled data.",
                       epilog=EVALUATE_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(e)
    e.add_argument("--data", required=True, metavar="PATH",
                   help="a .csv/.tsv/.jsonl/.json file (all of it is used), or a dataset "
                        "folder (its test split)")
    e.add_argument("--text-column", default=None, metavar="NAME",
                   help="default: the run's text column")
    e.add_argument("--label-column", default=None, metavar="NAME",
                   help="default: the run's label column")
    e.add_argument("--json", action="store_true", help="print one JSON object instead")
    p = sub.add_parser("predict", help="label new texts with a trained run",
                       description="Label texts, one per line, from --input FILE or standard "
                                   "input; print one JSON line per text.",
                       epilog=PREDICT_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--input", type=Path, default=None, metavar="FILE",
                   help="a text file, one text per line (default: standard input)")
    c = sub.add_parser("chat", help="answer messages with a trained chat run",
                       description="Load a chat run (`peftlab train --task chat`) and answer "
                                   "each line of standard input (or --input) as one user "
                                   "message: one plain answer line each, or JSON lines with "
                                   "--json.", epilog=CHAT_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(c)
    c.add_argument("--input", type=Path, default=None, metavar="FILE",
                   help="a text file, one user message per line (default: standard input)")
    c.add_argument("--max-new-tokens", type=opt.positive_int, default=64, metavar="N",
                   help="the most tokens per answer (default 64)")
    c.add_argument("--json", action="store_true",
                   help='print one JSON line per message: {"message", "answer", "finish"}')


def _load(args, parser):
    try:
        folder, info = runs.finished_run(args.model)
    except (runs.RunError, ValueError) as e:
        parser.error(f"argument --model: {e}")
    try:
        model, tok = runs.load_run_model(folder, info, args.device)
    except Exception as e:      # noqa: BLE001  (a damaged adapter, a missing base model)
        parser.error(f"argument --model: cannot load {folder}: {e}")
    return info, model, tok


def _evaluate_chat(args, parser, info) -> int:
    """`peftlab evaluate` of a chat run: greedy answers scored by exact match and per field,
    and the held-out loss per answer token."""
    import peftlab as pl
    from peftlab.chat.scoring import evaluate as score

    path = Path(args.data)
    system = info["data"].get("system", pl.chat.DEFAULT_SYSTEM)
    try:
        if path.is_dir():
            split = pl.data.load_dataset(path).test
        else:
            split = pl.chat.read_chat_jsonl(path, "evaluation", system=system)
        pl.chat.scoring.references(split)
    except (pl.data.DatasetError, pl.chat.ChatDataError, ValueError, OSError) as e:
        parser.error(f"argument --data: {e}")
    if args.text_column or args.label_column:
        parser.error("argument --text-column/--label-column: a chat run reads conversations; "
                     "drop them")
    info, model, tok = _load(args, parser)
    loss = pl.train.evaluate(model, split.loader(tok, batch_size=args.batch_size))["loss"]
    out = score(model, tok, split, batch_size=args.batch_size, examples=3)
    out.pop("generated")
    result = {"exact_match": out["exact_match"], "n": out["n"], "loss": loss,
              "fields": out["fields"], "field_accuracy": out["field_accuracy"],
              "examples": out["examples"]}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"exact match {out['exact_match']:.4f} on {out['n']} conversations (loss {loss:.4f} "
          f"per answer token)")
    for k, v in out["fields"].items():
        print(f"  field {k:<10} {v:.4f}")
    return 0


def chat(args, parser) -> int:
    """`peftlab chat`: one answer per input line; the exit code."""
    import peftlab as pl

    if args.input is not None and not args.input.is_file():
        parser.error(f"argument --input: {args.input}: no such file")
    try:
        _, info = runs.finished_run(args.model)
    except (runs.RunError, ValueError) as e:
        parser.error(f"argument --model: {e}")
    if info.get("task") != "chat":
        parser.error(f"argument --model: {args.model} is a text classification run; "
                     f"`peftlab chat` needs a chat run (`peftlab train --task chat`); label "
                     f"texts with `peftlab predict --model {args.model}`")
    system = info["data"].get("system", pl.chat.DEFAULT_SYSTEM)
    interactive = args.input is None and sys.stdin.isatty()
    info, model, tok = _load(args, parser)
    source = open(args.input, encoding="utf-8") if args.input else sys.stdin
    try:
        while True:
            if interactive:
                try:
                    line = input("you> ")
                except EOFError:
                    print(file=sys.stderr)
                    break
            else:
                line = source.readline()
                if not line:
                    break
            message = line.rstrip("\r\n")
            if not message.strip():
                continue
            g = pl.generate(model, tok, message, max_new_tokens=args.max_new_tokens,
                            system=system, details=True)
            if args.json:
                print(json.dumps({"message": message, "answer": g.text,
                                  "finish": g.finish_reason}), flush=True)
            else:
                print(g.text.replace("\n", " ") if not interactive else g.text, flush=True)
    except KeyboardInterrupt:
        print(file=sys.stderr)
    finally:
        if args.input:
            source.close()
    return 0


def evaluate(args, parser) -> int:
    """`peftlab evaluate`: the exit code."""
    import peftlab as pl

    try:
        _, info = runs.finished_run(args.model)
    except (runs.RunError, ValueError) as e:
        parser.error(f"argument --model: {e}")
    if info.get("task") == "chat":
        return _evaluate_chat(args, parser, info)
    d = info["data"]
    text_col = args.text_column or d["text_column"]
    label_col = args.label_column or d["label_column"]
    names = d["label_names"] or None
    path = Path(args.data)
    try:
        if path.is_dir():
            split = pl.data.load_dataset(path, text_column=text_col, label_column=label_col,
                                         label_names=names).test
        else:
            split = pl.data.read_table(path, "evaluation", text_column=text_col,
                                       label_column=label_col, label_names=names)
        if not names and split.labels and max(split.labels) >= d["num_labels"]:
            raise pl.data.DatasetError(f"{path}: class id {max(split.labels)} is unknown to "
                                       f"the model, which has {d['num_labels']} classes")
    except pl.data.DatasetError as e:
        parser.error(f"argument --data: {e}")
    info, model, tok = _load(args, parser)
    loader = split.loader(tok, batch_size=args.batch_size, max_length=info["max_length"])
    metrics = pl.train.evaluate(model, loader)
    preds = pl.predict(model, tok, split.texts, batch_size=args.batch_size,
                       max_length=info["max_length"]).ids
    labels = d["label_names"] or [str(i) for i in range(d["num_labels"])]
    per = {}
    for i, name in enumerate(labels):
        idx = [j for j, y in enumerate(split.labels) if y == i]
        if idx:
            per[name] = {"accuracy": sum(preds[j] == i for j in idx) / len(idx), "n": len(idx)}
    result = {"accuracy": metrics["accuracy"], "loss": metrics["loss"], "n": metrics["n"],
              "per_label": per}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"accuracy {metrics['accuracy']:.4f} on {metrics['n']} examples "
          f"(loss {metrics['loss']:.4f})")
    width = max(len(n) for n in per) if per else 0
    for name, row in per.items():
        print(f"  {name:<{width}}  accuracy {row['accuracy']:.4f}  ({row['n']} examples)")
    return 0


def predict(args, parser) -> int:
    """`peftlab predict`: the exit code."""
    import peftlab as pl

    if args.input is not None and not args.input.is_file():
        parser.error(f"argument --input: {args.input}: no such file")
    try:
        _, info = runs.finished_run(args.model)
    except (runs.RunError, ValueError) as e:
        parser.error(f"argument --model: {e}")
    if info.get("task") == "chat":
        parser.error(f"argument --model: {args.model} is a chat run; answer messages with "
                     f"`peftlab chat --model {args.model}`")
    source = open(args.input, encoding="utf-8") if args.input else sys.stdin
    info, model, tok = _load(args, parser)
    try:
        batch = []

        def flush():
            preds = pl.predict(model, tok, batch, batch_size=args.batch_size,
                               max_length=info["max_length"])
            for text, row in zip(batch, preds):
                print(json.dumps({"text": text, "label": row["label"],
                                  "probabilities": {str(k): round(v, 6) for k, v in
                                                    row["probabilities"].items()}}),
                      flush=True)
            batch.clear()

        for line in source:
            text = line.rstrip("\r\n")
            if text.strip():
                batch.append(text)
            if len(batch) >= args.batch_size:
                flush()
        if batch:
            flush()
    finally:
        if args.input:
            source.close()
    return 0
