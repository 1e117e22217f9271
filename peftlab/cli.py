"""Command-line entry points: `peftlab compare` (also `python -m peftlab compare`).

    peftlab compare                          # every method on the text task (~5 min, 2 CPUs)
    peftlab compare --quick                  # a smoke run in well under a minute
    peftlab compare --methods full,lora --epochs 2 --device cpu --seed 1 --out runs/x
    peftlab compare --task vision            # the digits ResNet: full, head, LoRA, selection

Bad options stop at once with argparse's usage message and exit code 2, naming the option.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (passes over the training data), "
                                         f"got {text}")
    return v


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return v


def _device(text: str) -> str:
    from peftlab.runtime import get_device
    try:
        get_device(text)
    except (ValueError, RuntimeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give a comma-separated list, e.g. full,lora")
    return names


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="peftlab", description="peftlab command line.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from peftlab.compare import TEXT_METHODS, VISION_METHODS
    cmp = sub.add_parser(
        "compare", help="train every method side by side and write a report",
        description="Train each method on one task from the same pretrained weights, measure "
                    "trainable parameters, step time, peak memory, test accuracy and adapter "
                    "size, print a table and write report.csv, report.json and compare.png.")
    cmp.add_argument("--methods", type=_methods, default=None,
                     help=f"comma-separated subset (default: all). text: "
                          f"{','.join(TEXT_METHODS)}; vision: {','.join(VISION_METHODS)}")
    cmp.add_argument("--task", choices=["text", "vision"], default="text",
                     help="text: MiniLM on sentiment_contrast (default); vision: digits ResNet")
    cmp.add_argument("--epochs", type=_positive_float, default=None,
                     help="epochs for every method (default: each method's own budget)")
    cmp.add_argument("--device", type=_device, default=None,
                     help="cpu, cuda, cuda:N or mps (default: the best available)")
    cmp.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    cmp.add_argument("--quick", action="store_true",
                     help="smoke run: 64 training examples, 1 epoch, small evaluation sets")
    cmp.add_argument("--out", type=Path, default=None,
                     help="output folder (default: peftlab-runs/compare-YYYYmmdd-HHMMSS)")
    cmp.add_argument("--no-plot", action="store_true", help="skip compare.png")
    cmp.add_argument("--progress", action="store_true", help="show a progress bar per method")
    return parser, cmp


def main(argv: list[str] | None = None) -> int:
    parser, cmp = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from peftlab import compare
    if args.methods is not None:
        known = compare.available(args.task)
        bad = [m for m in args.methods if m not in known]
        if bad:
            cmp.error(f"argument --methods: unknown method {bad[0]!r} for --task "
                      f"{args.task}; choose from {', '.join(known)}")
    out = args.out or Path("peftlab-runs") / time.strftime("compare-%Y%m%d-%H%M%S")
    report = compare.run(args.methods, task=args.task, seed=args.seed, device=args.device,
                         epochs=args.epochs, quick=args.quick, progress=args.progress,
                         log=lambda s: print(s, file=sys.stderr, flush=True))
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


if __name__ == "__main__":
    raise SystemExit(main())
