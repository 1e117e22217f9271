"""The `peftlab` command line (also `python -m peftlab`): subcommands in the argparse way.

    peftlab train --data reviews.csv --text-column review --label-column topic --out runs/x
    peftlab evaluate --model runs/x --data test.csv
    echo "a new sentence" | peftlab predict --model runs/x
    peftlab compare                          # every method on the text task (~5 min, 2 CPUs)
    peftlab compare --quick                  # a smoke run in well under a minute
    peftlab compare --methods full,lora --epochs 2 --device cpu --seed 1 --out runs/x
    peftlab compare --seeds 3                # each method 3 times: mean and std
    peftlab compare --task vision            # the digits ResNet: full, head, LoRA, selection
    peftlab compare --data my.csv --label-column topic   # every method on your data
    peftlab compare --task chat              # base, LoRA, IA3 on the chat model (~6 min)
    peftlab sweep --dry-run                  # choose settings on validation (commands/sweep.py)
    peftlab compare --lrs-from runs/sweep    # compare with a sweep's chosen learning rates
    peftlab train --task chat --data chats.jsonl --out runs/c; peftlab chat --model runs/c
    peftlab --version

Bad options stop at once, before any training, with one plain line naming the option and
exit code 2. train / evaluate / predict / chat live in peftlab/commands/; compare --task chat in
peftlab/compare/chat.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from peftlab.commands import options as opt

EXAMPLES = """examples:
  peftlab train --data reviews.csv --text-column review --label-column topic --out runs/topics
  peftlab evaluate --model runs/topics --data test.csv
  echo "the striker scored twice" | peftlab predict --model runs/topics
  peftlab train --resume runs/topics         # continue an interrupted run
  peftlab compare --quick                    # every method side by side, a smoke run
  peftlab compare --data reviews.csv --label-column topic
  peftlab sweep --dry-run                    # choose settings on validation: the plan
  peftlab train --task chat --data chats.jsonl --out runs/chat
  peftlab chat --model runs/chat             # one answer per line you type

Run `peftlab COMMAND --help` for the options of each command.
"""
COMPARE_EXAMPLES = """examples:
  peftlab compare --quick
  peftlab compare --methods full,lora --epochs 2 --device cpu --seed 1 --out runs/cmp
  peftlab compare --data reviews.csv --text-column review --label-column topic
  peftlab compare --task vision
  peftlab compare --task chat                # base, lora, ia3 on SmolLM2 (chat_extract)
  peftlab compare --task chat --methods all --out notebooks/results/compare_chat
"""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """(the `peftlab` parser, {command: its subparser})."""
    from peftlab import __version__
    from peftlab.commands import train, use

    parser = opt.Parser(prog="peftlab", epilog=EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="peftlab: parameter-efficient fine-tuning from the command "
                                    "line: train on your data, evaluate, predict, compare.")
    parser.add_argument("--version", action="version", version=f"peftlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs = {"train": train.add_parser(sub)}
    use.add_parsers(sub)
    for name in ("evaluate", "predict", "chat"):
        subs[name] = sub.choices[name]
    from peftlab.serve import cli as serve_cli
    subs["serve"] = serve_cli.add_parser(sub)
    from peftlab.commands import sweep as sweep_cmd
    subs["sweep"] = sweep_cmd.add_parser(sub)
    from peftlab.compare import TEXT_METHODS, VISION_METHODS
    from peftlab.compare.methods import defaults
    from peftlab.compare import chat as chat_compare
    cmp = sub.add_parser(
        "compare", help="train every method side by side and write a report",
        description="Train each method on one task from the same pretrained weights, measure "
                    "trainable parameters, step time, peak memory, test accuracy and adapter "
                    "size, print a table and write report.csv, report.json and compare.png.",
        epilog=COMPARE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    subs["compare"] = cmp
    cmp.add_argument("--methods", type=opt.name_list, default=None,
                     help=f"comma-separated subset, or all (default: text: "
                          f"{','.join(defaults('text'))}; chat: "
                          f"{','.join(chat_compare.DEFAULT_METHODS)}). text: "
                          f"{','.join(TEXT_METHODS)}; vision: {','.join(VISION_METHODS)}; "
                          f"chat: {','.join(chat_compare.available())}")
    cmp.add_argument("--task", choices=["text", "vision", "chat"], default="text",
                     help="text: MiniLM on sentiment_contrast (default); vision: digits ResNet; "
                          "chat: SmolLM2-135M-Instruct on chat_extract, exact match and "
                          "retention")
    cmp.add_argument("--data", default=None, metavar="PATH",
                     help="your data instead of sentiment_contrast (text task): a .csv/.tsv/"
                          ".jsonl/.json file or a folder, as for `peftlab train`")
    cmp.add_argument("--text-column", default="text", metavar="NAME",
                     help="with --data: the column holding the texts (default: text)")
    cmp.add_argument("--label-column", default="label", metavar="NAME",
                     help="with --data: the column holding the labels (default: label)")
    cmp.add_argument("--epochs", type=opt.positive_float, default=None,
                     help="epochs for every method (default: each method's own budget)")
    cmp.add_argument("--device", type=opt.device, default=None,
                     help="cpu, cuda, cuda:N or mps (default: the best available)")
    cmp.add_argument("--seed", type=opt.seed, default=0, help="random seed (default 0)")
    cmp.add_argument("--seeds", type=opt.positive_int, default=1,
                     help="runs per method with seeds SEED, SEED+1, ...; the report gives the "
                          "mean and standard deviation (default 1)")
    cmp.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default="fp32",
                     help="fp32 (default); bf16 autocast where the CPU/GPU has it (a CPU "
                          "without bf16 instructions runs fp32 and says so); fp16 needs CUDA; "
                          "the report records what ran and what the CPU offers")
    cmp.add_argument("--in-process", action="store_true",
                     help="run every method in this process (starts faster; the measured "
                          "memory peak is then a lower bound)")
    cmp.add_argument("--quick", action="store_true",
                     help="smoke run: 64 training examples, 1 epoch, small evaluation sets")
    cmp.add_argument("--out", type=Path, default=None,
                     help="output folder (default: peftlab-runs/compare-YYYYmmdd-HHMMSS)")
    cmp.add_argument("--overwrite", action="store_true",
                     help="write into an --out folder that already exists")
    cmp.add_argument("--lrs-from", default=None, metavar="PATH",
                     help="learning rates from a sweep's chosen.json (or its folder; `peftlab "
                          "sweep`), or spec: each method's spec.py rate (default: the task's "
                          "committed sweep, notebooks/results/sweep_TASK, where there is one)")
    cmp.add_argument("--no-plot", action="store_true", help="skip compare.png")
    cmp.add_argument("--progress", action="store_true", help="show a progress bar per method")
    return parser, subs


def _compare_data(args, cmp) -> None:
    """Check --data before any training and hand it to compare's text task (and its worker
    processes) through $PEFTLAB_DATASET."""
    from peftlab import data, models

    if args.data is None:
        if args.text_column != "text" or args.label_column != "label":
            cmp.error("argument --text-column/--label-column: they go with --data")
        return
    if args.task == "chat":
        from peftlab.data.chat import is_chat_source
        if not Path(args.data).exists() or not is_chat_source(args.data):
            cmp.error(f"argument --data: {args.data} is not chat data (JSON Lines with "
                      f"'messages', or 'prompt' and 'response'); --task chat compares methods "
                      f"on conversations")
        return
    if args.task != "text":
        cmp.error("argument --data: your data is text; it goes with --task text")
    try:
        ds = data.load_dataset(args.data, text_column=args.text_column,
                               label_column=args.label_column, seed=args.seed)
    except data.DatasetError as e:
        cmp.error(f"argument --data: {e}")
    _, tok = models.text_encoder()
    n = data.choose_max_length(tok, ds.train.texts)
    path = str(Path(args.data).resolve()) if Path(args.data).exists() else args.data
    os.environ[data.DATASET_ENV] = json.dumps({
        "name": path, "text_column": args.text_column, "label_column": args.label_column,
        "max_length": n})
    opt.say(f"data: {ds!r}, max_length {n}")


def _compare(args, cmp) -> int:
    from peftlab import compare
    if args.methods is not None and args.methods != ["all"]:
        known = compare.available(args.task)
        bad = [m for m in args.methods if m not in known]
        if bad:
            cmp.error(f"argument --methods: unknown method {bad[0]!r} for --task "
                      f"{args.task}; choose from {', '.join(known)}")
    out = args.out or Path("peftlab-runs") / time.strftime("compare-%Y%m%d-%H%M%S")
    try:
        opt.check_writable_folder(out)
    except ValueError as e:
        cmp.error(str(e))
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        cmp.error(f"argument --out: {out} exists and is not empty; pass --overwrite to write "
                  f"into it, or choose another folder")
    _compare_data(args, cmp)
    from peftlab.runtime import get_device
    from peftlab.train.precision import resolve_precision
    try:
        resolve_precision(args.precision, get_device(args.device))
    except ValueError as e:
        cmp.error(f"argument --precision: {e}")
    if args.task == "chat":
        from peftlab.compare import chat as chat_compare
        report = chat_compare.run(args.methods, seed=args.seed, seeds=args.seeds,
                                  device=args.device, precision=args.precision,
                                  epochs=args.epochs, quick=args.quick, progress=args.progress,
                                  data=args.data,
                                  log=lambda s: print(s, file=sys.stderr, flush=True))
        return _report(args, report, out)
    if args.lrs_from not in (None, "spec"):
        try:
            compare.sweep_report.chosen_lrs(args.lrs_from, args.task, [])
        except ValueError as e:
            cmp.error(f"argument --lrs-from: {e}")
    report = compare.run(args.methods, task=args.task, seed=args.seed, seeds=args.seeds,
                         device=args.device, isolate=not args.in_process,
                         lrs_from=args.lrs_from,
                         precision=args.precision,
                         epochs=args.epochs, quick=args.quick, progress=args.progress,
                         log=lambda s: print(s, file=sys.stderr, flush=True))
    return _report(args, report, out)


def _report(args, report, out: Path) -> int:
    """Print the table, write the report, name what failed; the exit code."""
    print(report.table())
    paths = report.write(out, plot=not args.no_plot and
                         any(r["status"] == "ok" for r in report.rows))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    missing = [r["method"] for r in report.rows if r["status"] == "missing"]
    if missing:
        print(f"not run (module missing): {', '.join(missing)}", file=sys.stderr)
    failed = [r for r in report.rows if r["status"] == "failed"]
    for r in failed:
        print(f"\n{r['method']} failed:\n{r.get('traceback', r['note'])}", file=sys.stderr)
    return 1 if failed else 0


def _warning_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the subcommand; the exit code."""
    parser, subs = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from peftlab.commands import train, use

    show = warnings.formatwarning
    warnings.formatwarning = _warning_line       # warnings as one plain line each
    env = os.environ.get("PEFTLAB_DATASET")
    try:
        if args.command == "train":
            return train.main(args, subs["train"])
        if args.command == "evaluate":
            return use.evaluate(args, subs["evaluate"])
        if args.command == "predict":
            return use.predict(args, subs["predict"])
        if args.command == "chat":
            return use.chat(args, subs["chat"])
        if args.command == "sweep":
            from peftlab.commands import sweep as sweep_cmd
            return sweep_cmd.main(args, subs["sweep"])
        if args.command == "serve":
            from peftlab.serve import cli as serve_cli
            return serve_cli.main(args, subs["serve"])
        return _compare(args, subs["compare"])
    finally:
        warnings.formatwarning = show
        if env is None:
            os.environ.pop("PEFTLAB_DATASET", None)
        else:
            os.environ["PEFTLAB_DATASET"] = env


if __name__ == "__main__":
    raise SystemExit(main())
