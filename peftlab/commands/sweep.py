"""`peftlab sweep`: choose each method's settings on validation, resumably.

    peftlab sweep --dry-run                      # the default grid: trials and estimated time
    peftlab sweep --out notebooks/results/sweep_text
    peftlab sweep --grid 'lora:r=4,8,16;alpha=r,2r,16;lr=1e-3,3e-3' --out runs/sw
    peftlab sweep --grid-file grid.json --top-k 2 --confirm-seeds 3 --out runs/sw
    peftlab sweep --quick --methods lora,head --out runs/smoke   # a smoke run

Rerun the same command after a crash or Ctrl-C: finished trials are skipped. A changed grid
in the same --out is refused (name a new --out, or --overwrite to start over). Bad input
(unknown method or knob, an empty grid) stops before any trial with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from peftlab.commands import options as opt

EXAMPLES = """examples:
  peftlab sweep --dry-run
  peftlab sweep --out notebooks/results/sweep_text       # the default grid, ~90 min, 2 CPUs
  peftlab sweep --grid 'lora:r=4,8;alpha=r,2r,16;rslora=0,1;targets=qv,all;lr=1e-3,3e-3'
  peftlab sweep --grid 'prefix:virtual_tokens=5,10,20;lr=1e-2,3e-2' --grid 'head:lr=1e-2,2e-2'
  peftlab sweep --quick --methods lora,head --out runs/smoke
  peftlab compare --lrs-from notebooks/results/sweep_text   # compare with the chosen rates
"""


def add_parser(sub) -> argparse.ArgumentParser:
    """Add `peftlab sweep` to the subcommands; its parser."""
    from peftlab.compare.sweep_grid import KNOBS
    p = sub.add_parser(
        "sweep", help="choose learning rates and each method's knobs on validation",
        description="Run a grid of settings per method (screening at one seed, the top-k "
                    "confirmed at several seeds), each trial in a fresh process, choose on "
                    "validation only, report test accuracy for the chosen settings, and write "
                    "trials.jsonl, summary.csv/.json, chosen.json and one figure per method. "
                    "Knobs: " + "; ".join(f"{k}: {v.help}" for k, v in KNOBS.items()),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["text", "vision"], default="text",
                   help="text: MiniLM on sentiment_contrast (default); vision: digits ResNet")
    p.add_argument("--grid", action="append", default=None, metavar="SPEC",
                   help="METHOD:KNOB=V1,V2;KNOB=...; repeat for more methods (default: the "
                        "task's default grid, compare/sweep.py DEFAULT_GRID)")
    p.add_argument("--grid-file", type=Path, default=None, metavar="JSON",
                   help='a grid as JSON: {"lora": {"r": [4, 8], "lr": [0.001]}, ...}')
    p.add_argument("--methods", type=opt.name_list, default=None,
                   help="only these methods of the grid (comma-separated)")
    p.add_argument("--seed", type=opt.seed, default=0, help="screening seed (default 0)")
    p.add_argument("--confirm-seeds", type=opt.positive_int, default=3,
                   help="seeds in all for the finalists (default 3; 1: no confirmation)")
    p.add_argument("--top-k", type=opt.positive_int, default=3,
                   help="finalists per method confirmed at --confirm-seeds (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 64 training examples, 1 epoch, small evaluation sets")
    p.add_argument("--dry-run", action="store_true",
                   help="print the trials and the estimated time, run nothing")
    p.add_argument("--out", type=Path, default=None,
                   help="sweep folder (default: peftlab-runs/sweep-TASK); rerun to resume")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that holds another sweep (deletes its trials)")
    p.add_argument("--device", type=opt.device, default=None,
                   help="cpu, cuda, cuda:N or mps (default: the best available)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default="fp32",
                   help="as for peftlab compare (default fp32)")
    p.add_argument("--in-process", action="store_true",
                   help="run every trial in this process (starts faster)")
    p.add_argument("--no-plot", action="store_true", help="skip the figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def grid_of(args, parser):
    """The grid the options give (None: the task's default), --methods applied."""
    from peftlab.compare import sweep, sweep_grid
    try:
        grid = None
        if args.grid_file is not None:
            grid = sweep_grid.load_json(args.grid_file)
        if args.grid:
            grid = {**(grid or {}), **sweep_grid.parse_cli(args.grid)}
        if args.methods is not None:
            base = sweep.DEFAULT_GRID[args.task] if grid is None else grid
            bad = [m for m in args.methods if m not in base]
            if bad:
                parser.error(f"argument --methods: {bad[0]!r} is not in the grid; it has "
                             f"{', '.join(base)}")
            grid = {m: base[m] for m in args.methods}
        return grid
    except sweep_grid.GridError as e:
        parser.error(f"argument --grid: {e}")


def main(args, parser) -> int:
    """Check everything, print the plan and estimate, run (or resume) the sweep; exit code."""
    from peftlab.compare import sweep, sweep_grid, sweep_store
    grid = grid_of(args, parser)
    try:
        the_plan = sweep.plan(grid, task=args.task, confirm_seeds=args.confirm_seeds,
                              top_k=args.top_k, quick=args.quick)
    except sweep_grid.GridError as e:
        parser.error(f"argument --grid: {e}")
    if args.dry_run:                  # else sweep.run prints the plan before the first trial
        print(the_plan.text(), flush=True)
        return 0
    out = args.out or Path("peftlab-runs") / f"sweep-{args.task}"
    try:
        opt.check_writable_folder(out)
    except ValueError as e:
        parser.error(str(e))
    from peftlab.runtime import get_device
    from peftlab.train.precision import resolve_precision
    try:
        resolve_precision(args.precision, get_device(args.device))
    except ValueError as e:
        parser.error(f"argument --precision: {e}")
    try:
        result = sweep.run(the_plan.grid, task=args.task, out=out, seed=args.seed,
                           confirm_seeds=args.confirm_seeds, top_k=args.top_k,
                           quick=args.quick, device=args.device, precision=args.precision,
                           isolate=not args.in_process, overwrite=args.overwrite,
                           progress=not args.no_progress, plot=not args.no_plot,
                           log=lambda s: print(s, file=sys.stderr, flush=True))
    except sweep_store.SweepStateError as e:
        parser.error(f"argument --out: {e}")
    print(result.table())
    print(f"wrote {out}: trials.jsonl, summary.csv, summary.json, chosen.json"
          + ("" if args.no_plot else ", sweep_<method>.png"))
    failed = [t for t in result.trials if t["status"] != "ok"]
    for t in failed:
        print(f"{t['trial']} failed: {t['note']}", file=sys.stderr)
    return 1 if failed else 0
