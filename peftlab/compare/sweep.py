"""`peftlab sweep` / `pl.compare.sweep.run`: choose each method's settings on validation.

    result = pl.compare.sweep.run({"lora": {"r": [4, 8], "lr": [1e-3, 3e-3]}}, out="runs/sw")
    print(result.table())              # chosen settings, validation, the chosen test accuracy

Two stages, on the task's one data budget (compare/methods.py DATA, the budget `compare`
uses): screening runs every grid point once (seed `seed`); confirmation reruns each method's
`top_k` best screened points at `confirm_seeds` seeds in all (seed + 1, seed + 2, ...), and
the choice is the best of those over all their seeds. Choice: validation only (accuracy, ties
by validation loss: compare/sweep_report.py). Each trial runs in a fresh process, as in
compare (runner.process_pool), and is appended to OUT/trials.jsonl the moment it finishes, so a
killed sweep rerun with the same settings skips every finished trial (a failed trial counts as
finished: it would fail again); a rerun with other settings is refused (sweep_store.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peftlab import measure
from peftlab.compare import runner, sweep_report, sweep_store
from peftlab.compare import sweep_grid as sg
from peftlab.compare.methods import budget_of

# The default grid (`peftlab sweep` without --grid): about 90 minutes of trials on 2 CPU
# cores (plan() prints the estimate): LoRA's 72 structural settings at its spec rate (under
# AdamW the scale alpha / r acts like a learning-rate multiplier, so alpha and rslora already
# move the step size), and a learning-rate axis for every other method.
DEFAULT_GRID = {"text": {
    # full, head, prefix and prompt were widened where a first run chose an edge of the grid
    # (full twice: 2e-4, then 5e-4; prompt at both ends); prompt tuning's paper trains at 0.3
    # (Lester et al., 2021)
    "full": {"lr": [5e-5, 1e-4, 2e-4, 5e-4, 1e-3]},
    "head": {"lr": [1e-2, 2e-2, 5e-2, 1e-1, 2e-1]},
    "lora": {"r": [1, 2, 4, 8, 16, 32], "alpha": ["r", "2r", 16], "rslora": [0, 1],
             "targets": ["qv", "all"], "lr": [3e-3]},
    "prefix": {"virtual_tokens": [10], "lr": [1e-2, 3e-2, 1e-1, 3e-1]},
    "prompt": {"virtual_tokens": [10], "lr": [3e-3, 1e-2, 3e-2, 1e-1, 3e-1]},
    "selection": {"fraction": [0.005], "lr": [1e-3, 2e-3, 5e-3]},
    "adalora": {"target_r": [8], "lr": [3e-3, 1e-2, 3e-2]},
}, "vision": {
    "full": {"lr": [1e-3, 3e-3, 1e-2]}, "head": {"lr": [1e-2, 3e-2, 1e-1]},
    "lora": {"r": [2, 4, 8], "lr": [3e-3, 1e-2, 3e-2]},
    "selection": {"fraction": [0.02], "lr": [1e-2, 3e-2, 1e-1, 3e-1]},
}}

# Seconds per trial, measured (2026-12-07, this repository's 2-core CPU, one torch thread, a
# lightly shared machine): each method's turn in a default `peftlab compare` (fresh process,
# 2,400 x 1 epoch, validation, test); a sweep trial does the same less the inference timing.
# With 2 threads on 2 quiet cores a trial takes at most this. _other: a row not measured.
TRIAL_SECONDS = {"text": {"full": 58, "head": 22, "lora": 37, "lora_qv": 36, "prefix": 32,
                          "prompt": 52, "selection": 63, "adalora": 45, "_other": 45},
                 "vision": {"_other": 4}}   # vision: measured, 2.5-3.4 s a trial
QUICK_SECONDS = 6


def trial_seconds(task: str, method: str, knobs: dict, quick: bool) -> float:
    """The measured (estimated) seconds of one trial."""
    if quick:
        return QUICK_SECONDS
    table = TRIAL_SECONDS.get(task, {})
    name = "lora_qv" if method == "lora" and knobs.get("targets") == "qv" else method
    return table.get(name, table.get("_other", 45))


@dataclass
class Plan:
    """What a sweep will run: the checked grid, its points, the trial counts and estimate."""

    task: str
    grid: dict
    points: list
    screen: int
    confirm: int
    seconds: float
    confirm_seeds: int
    top_k: int

    def text(self) -> str:
        """The plan as printed before a sweep and by --dry-run."""
        per = {}
        for m, k in self.points:
            per.setdefault(m, []).append(k)
        confirm = (f"{self.confirm} confirmation trials (top {self.top_k} per method at "
                   f"{self.confirm_seeds} seeds in all)" if self.confirm_seeds > 1 else
                   "no confirmation stage (--confirm-seeds 1)")
        lines = [f"sweep plan, {self.task} task: {self.screen} screening trials (1 seed) + "
                 f"{confirm} = {self.screen + self.confirm} trials; "
                 f"estimated {self.seconds / 60:.0f} min on 2 CPU cores (measured seconds "
                 f"per trial, compare/sweep.py TRIAL_SECONDS)"]
        for m, knobs in self.grid.items():
            axes = " x ".join(f"{k} {{{', '.join(map(sg.fmt, v))}}}" for k, v in knobs.items())
            lines.append(f"  {m:<10} {len(per[m]):>4} points: {axes}")
        return "\n".join(lines)


def plan(grid: dict | None = None, *, task: str = "text", confirm_seeds: int = 3,
         top_k: int = 3, quick: bool = False) -> Plan:
    """Check the grid (GridError before anything runs) and count and estimate its trials."""
    if task not in DEFAULT_GRID:
        raise sg.GridError(f"unknown task {task!r} for a sweep; choose from "
                           f"{', '.join(DEFAULT_GRID)}")
    for name, v in (("confirm_seeds", confirm_seeds), ("top_k", top_k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise sg.GridError(f"{name} must be a positive whole number, got {v!r}")
    grid = sg.check(DEFAULT_GRID[task] if grid is None else grid, task)
    points = sg.points(grid, task)
    secs = {m: [trial_seconds(task, m, k, quick) for mm, k in points if mm == m] for m in grid}
    confirm = sum(min(top_k, len(s)) * (confirm_seeds - 1) for s in secs.values())
    seconds = sum(map(sum, secs.values())) + sum(      # finalists: at the method's mean
        sum(s) / len(s) * min(top_k, len(s)) * (confirm_seeds - 1) for s in secs.values())
    return Plan(task, grid, points, len(points), confirm, seconds, confirm_seeds, top_k)


# --- one trial -----------------------------------------------------------------------------------

def _cpu_s() -> float:
    """CPU seconds this process has used, all its threads (what a busy machine cannot
    inflate the way it inflates wall time)."""
    import resource
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _train(the_task, task, method, knobs, seed, device, quick, precision) -> dict:
    """One trial on an already built task: the trial's MethodSpec through runner.run_method."""
    start = _cpu_s()
    row = runner.run_method(sg.spec_for(task, method, knobs), the_task, seed=seed,
                            device=device, quick=quick, precision=precision, light=True)
    return {**row, "cpu_s": _cpu_s() - start}


def _trial_isolated(task, method, knobs, seed, device, quick, model_fn, threads, env,
                    precision) -> dict:
    """What a fresh worker process does for one trial (runner.worker_begin first)."""
    runner.worker_begin(seed, threads, env)
    the_task = runner.make_task(task, seed, quick, model_fn)
    row = _train(the_task, task, method, knobs, seed, device, quick, precision)
    return {**row, "worker_cpu_s": _cpu_s()}     # with the task's set-up


KEEP = ("status", "note", "val_accuracy", "val_loss", "test_accuracy", "test_loss",
        "final_train_loss", "trainable", "steps", "train_size", "epochs", "batch_size", "lr",
        "setup_s", "train_time_s", "cpu_s", "worker_cpu_s", "device", "precision")


def _record(method, knobs, seed, stage, row, seconds) -> dict:
    """The line trials.jsonl stores for one finished trial: ids, full settings, results."""
    return {"trial": sg.trial_id(method, knobs, seed), "point": sg.point_id(method, knobs),
            "method": method, "knobs": knobs, "seed": seed, "stage": stage,
            **{k: row.get(k) for k in KEEP}, "seconds": seconds,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# --- the sweep -----------------------------------------------------------------------------------

@dataclass
class Sweep:
    """A finished (or resumed-and-finished) sweep: its folder, identity, trials, summary."""

    out: Path
    identity: dict
    trials: list
    summary: dict
    ran: int

    def table(self) -> str:
        """The printed result (sweep_report.table)."""
        return sweep_report.table(self.summary, self.identity)

    @property
    def chosen(self) -> dict:
        """{method: the setting chosen on validation, with its test accuracy}."""
        return self.summary["chosen"]


def run(grid: dict | None = None, *, task: str = "text", out: str | Path = "peftlab-runs/sweep",
        seed: int = 0, confirm_seeds: int = 3, top_k: int = 3, quick: bool = False,
        device=None, isolate: bool = True, model_fn=None, overwrite: bool = False,
        progress: bool = False, log: Callable[[str], None] | None = None,
        precision: str = "fp32", plot: bool = True,
        on_trial: Callable[[dict], None] | None = None) -> Sweep:
    """Run (or resume) the sweep of `grid` ({method: {knob: [values]}}; None: DEFAULT_GRID)
    into the folder `out` and return the Sweep. quick: a smoke run (64 training examples, small
    evaluation sets). isolate: every trial in a fresh process. on_trial(record): called after
    each trial is stored (tests use it to interrupt a sweep). Bad input raises before any
    trial runs: sweep_grid.GridError, or sweep_store.SweepStateError for a folder that
    holds another sweep."""
    the_plan = plan(grid, task=task, confirm_seeds=confirm_seeds, top_k=top_k, quick=quick)
    from peftlab.runtime import get_device, seed_everything
    from peftlab.train.precision import resolve_precision
    dev = get_device(device)
    resolve_precision(precision, dev)
    env = runner._peftlab_env()
    budget = ({"train_size": 64, "epochs": 1, "batch_size": budget_of(task)["batch_size"]}
              if quick else budget_of(task))
    identity = {"task": task, "grid": the_plan.grid, "seed": seed,
                "confirm_seeds": confirm_seeds, "top_k": top_k, "quick": quick,
                "budget": budget, "precision": precision,
                "defaults": {m: sg.row_settings(task, m) for m in the_plan.grid},
                "data": env.get("PEFTLAB_DATASET", "shipped"),
                "model": getattr(model_fn, "__qualname__", "embedded")}
    out = sweep_store.open_folder(out, identity, overwrite=overwrite)
    trials = sweep_store.read_trials(out)
    done = {t["trial"] for t in trials}
    if log:
        log(the_plan.text())
        if done:
            log(f"resuming {out}: {len(done)} trial(s) already finished, skipped")
    from tqdm.auto import tqdm
    bar = tqdm(total=the_plan.screen + the_plan.confirm, initial=len(done), desc="sweep",
               unit="trial", disable=not progress)
    pool = runner.process_pool(("peftlab.compare.sweep",)) if isolate else None
    tasks: dict[int, object] = {}
    t0, ran = time.perf_counter(), 0

    def one(method, knobs, s, stage):
        """Run one trial unless it is finished; store it the moment it is done."""
        nonlocal pool, ran
        tid = sg.trial_id(method, knobs, s)
        if tid in done:
            return
        bar.set_postfix_str(tid[:60])
        start = time.perf_counter()
        try:
            if pool is not None:
                row = pool.submit(_trial_isolated, task, method, knobs, s, str(dev), quick,
                                  model_fn, measure.threads(), env, precision).result()
            else:
                if s not in tasks:
                    seed_everything(s)
                    tasks[s] = runner.make_task(task, s, quick, model_fn)
                row = _train(tasks[s], task, method, knobs, s, dev, quick, precision)
        except Exception as e:  # noqa: BLE001  (recorded; the sweep goes on)
            row = {"status": "failed", "note": f"{type(e).__name__}: {e}"}
            if pool is not None and type(e).__name__ == "BrokenProcessPool":
                pool.shutdown()
                pool = runner.process_pool(("peftlab.compare.sweep",))
        rec = _record(method, knobs, s, stage, row, time.perf_counter() - start)
        sweep_store.append_trial(out, rec)
        trials.append(rec)
        done.add(tid)
        ran += 1
        sweep_report.write(out, trials, identity, plot=False)
        bar.update(1)
        if log:
            got = (f"val acc {rec['val_accuracy']:.3f}, val loss {rec['val_loss']:.4f}"
                   if rec["status"] == "ok" else f"FAILED {rec['note'][:80]}")
            log(f"[{time.perf_counter() - t0:7.1f}s] {stage} {tid}: {got} "
                f"({rec['seconds']:.1f}s)")
        if on_trial is not None:
            on_trial(rec)

    try:
        for method, knobs in the_plan.points:
            one(method, knobs, seed, "screen")
        finals = sweep_report.finalists(trials, the_plan.grid, seed, top_k)
        by_id = {sg.point_id(m, k): (m, k) for m, k in the_plan.points}
        for method, ids in finals.items():
            for pid in ids:
                for s in range(seed + 1, seed + confirm_seeds):
                    one(*by_id[pid], s, "confirm")
    except BaseException:
        if pool is not None:                 # stop the running trial's worker too
            for p in list((getattr(pool, "_processes", None) or {}).values()):
                p.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            pool = None
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
        sweep_report.write(out, trials, identity, plot=plot)
    return Sweep(out, identity, trials, sweep_report.summary(trials, identity), ran)
