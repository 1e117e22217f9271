"""Reading a sweep's trials: the finalists, the choice, the warnings, the files.

The choice reads validation only: the best mean validation accuracy over a setting's seeds,
ties broken by the lower mean validation loss (accuracy ties are common on small splits and
were the rule on the shipped task before its validation split got held-out words and
templates of its own, issue 31). Test
accuracy is measured in every trial (so no trial ever reruns to get it) and kept in
trials.jsonl, but no choice reads it: the report shows it for the chosen settings only.

    OUT/summary.csv    every trial, one row: stage, seed, every knob, validation, seconds
    OUT/summary.json   the finalists, the choice per method, the compare rows' rates, warnings,
                       how much each knob moved the best validation loss
    OUT/chosen.json    what `peftlab compare --lrs-from` reads: per compare row its chosen lr
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

from peftlab.compare import sweep_grid as sg
from peftlab.compare.sweep_grid import rank_key
from peftlab.compare.sweep_store import write_json

CHOICE_RULE = ("chosen on validation only: highest mean validation accuracy over the seeds, "
               "ties to the lower mean validation loss")


def _mean(xs):
    """The mean of the values that are not None (None if there are none)."""
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _std(xs):
    """The sample standard deviation of the values that are not None (None below 2)."""
    xs = [x for x in xs if x is not None]
    return statistics.stdev(xs) if len(xs) > 1 else None


def by_point(trials: list[dict], seeds=None) -> dict[str, dict]:
    """{point id: {method, knobs, runs}} of the finished trials (optionally only `seeds`),
    with each point's means over its runs."""
    out: dict[str, dict] = {}
    for t in trials:
        if t["status"] != "ok" or (seeds is not None and t["seed"] not in seeds):
            continue
        p = out.setdefault(t["point"], {"point": t["point"], "method": t["method"],
                                        "knobs": t["knobs"], "runs": []})
        p["runs"].append(t)
    for p in out.values():
        for k in ("val_accuracy", "val_loss", "test_accuracy"):
            p[k] = _mean([r.get(k) for r in p["runs"]])
        p["val_accuracy_std"] = _std([r.get("val_accuracy") for r in p["runs"]])
        p["test_accuracy_std"] = _std([r.get("test_accuracy") for r in p["runs"]])
        p["seeds"] = sorted(r["seed"] for r in p["runs"])
    return out


def ranked(points: dict, method: str) -> list[dict]:
    """The points of `method`, best first (rank_key: validation only)."""
    return sorted((p for p in points.values() if p["method"] == method),
                  key=lambda p: rank_key(p["val_accuracy"], p["val_loss"]))


def finalists(trials: list[dict], grid: dict, seed: int, top_k: int) -> dict[str, list[str]]:
    """{method: the top_k point ids of its screening stage (seed `seed`), best first}."""
    screen = by_point(trials, {seed})
    return {m: [p["point"] for p in ranked(screen, m)[:top_k]] for m in grid}


def choose(trials: list[dict], grid: dict, seed: int, top_k: int) -> dict[str, dict]:
    """{method: the chosen point} among its finalists, ranked over all their seeds."""
    final = finalists(trials, grid, seed, top_k)
    points = by_point(trials)
    out = {}
    for m, ids in final.items():
        best = sorted((points[i] for i in ids), key=lambda p: rank_key(p["val_accuracy"],
                                                                       p["val_loss"]))
        if best:
            out[m] = best[0]
    return out


def row_choices(trials: list[dict], grid: dict, task: str, seed: int) -> dict[str, dict]:
    """{compare row: its lr chosen on validation}: among the trials that hold the row's own
    settings (LoRA rank 8, alpha 2r, all linear for `lora`, ...) and vary lr. The rule is
    choose()'s: the confirmed points (several seeds) by their means where there are any,
    else the screening seed's ranking."""
    screen, every = by_point(trials, {seed}), by_point(trials)
    out = {}
    for row in sg.METHODS[task]:
        method, fixed = sg.row_point(task, row)
        if method not in grid:
            continue
        same = [p for p in ranked(screen, method)
                if all(p["knobs"].get(k) == v for k, v in fixed.items() if k != "lr")]
        confirmed = [every[p["point"]] for p in same if len(every[p["point"]]["seeds"]) > 1]
        pool = sorted(confirmed, key=lambda p: rank_key(p["val_accuracy"], p["val_loss"])) \
            if confirmed else same
        if pool:
            p = pool[0]
            out[row] = {"lr": p["knobs"]["lr"], "method": method, "point": p["point"],
                        "seeds": p["seeds"], "val_accuracy": p["val_accuracy"],
                        "val_loss": p["val_loss"], "candidates": len(same)}
    return out


def edge_warnings(grid: dict, chosen: dict[str, dict], rows: dict[str, dict] | None = None):
    """One line per chosen value at the smallest or largest of its ordered knob's values
    (3 or more of them): the best may lie beyond the grid."""
    out = []
    items = [(m, p["knobs"], m) for m, p in chosen.items()]
    items += [(c["method"], {"lr": c["lr"]}, f"compare row {r}")
              for r, c in (rows or {}).items()]
    for method, knobs, who in items:
        for knob, value in knobs.items():
            values = grid.get(method, {}).get(knob, [])
            if not sg.KNOBS[knob].ordered or len(values) < 3 or value not in values:
                continue
            lo, hi = min(values), max(values)
            if value in (lo, hi):
                side = "smallest" if value == lo else "largest"
                out.append(f"WARNING: {who}: the chosen {knob}={sg.fmt(value)} is the {side} "
                           f"value of its grid ({', '.join(map(sg.fmt, values))}): the best may "
                           f"lie beyond it; extend the grid")
    return out


def knob_effects(trials: list[dict], grid: dict, seed: int) -> dict[str, list[dict]]:
    """{method: [{knob, best (value, val loss) per value, spread}]}, the largest spread first:
    how much the best screening validation loss moves between a knob's values (the best over
    every other knob), i.e. which choice matters most here."""
    screen = by_point(trials, {seed})
    out = {}
    for m, knobs in grid.items():
        rows = []
        for knob, values in knobs.items():
            if len(values) < 2:
                continue
            best = {}
            for v in values:
                ps = [p for p in ranked(screen, m) if p["knobs"].get(knob) == v]
                if ps:
                    best[sg.fmt(v)] = {"val_accuracy": ps[0]["val_accuracy"],
                                       "val_loss": ps[0]["val_loss"]}
            losses = [b["val_loss"] for b in best.values() if b["val_loss"] is not None]
            if len(losses) > 1:
                rows.append({"knob": knob, "best": best, "spread": max(losses) - min(losses)})
        out[m] = sorted(rows, key=lambda r: -r["spread"])
    return out


def summary(trials: list[dict], identity: dict) -> dict:
    """What summary.json holds: the stages, the finalists, the choice, the rows' rates,
    the warnings and the knob effects, from the finished trials."""
    grid, seed, k = identity["grid"], identity["seed"], identity["top_k"]
    chosen = choose(trials, grid, seed, k)
    rows = row_choices(trials, grid, identity["task"], seed)
    return {
        "task": identity["task"], "rule": CHOICE_RULE, "budget": identity["budget"],
        "trials_done": sum(t["status"] == "ok" for t in trials),
        "trials_failed": sum(t["status"] != "ok" for t in trials),
        "seconds": sum(t.get("seconds") or 0 for t in trials),
        "finalists": finalists(trials, grid, seed, k),
        "chosen": {m: {key: p[key] for key in ("point", "knobs", "seeds", "val_accuracy",
                                                "val_accuracy_std", "val_loss",
                                                "test_accuracy", "test_accuracy_std")}
                   for m, p in chosen.items()},
        "rows": rows, "warnings": edge_warnings(grid, chosen, rows),
        "knob_effects": knob_effects(trials, grid, seed)}


CSV_HEAD = ["trial", "stage", "status", "method", "seed", *sg.KNOBS, "val_accuracy", "val_loss",
            "final_train_loss", "trainable", "steps", "train_size", "epochs", "batch_size",
            "setup_s", "train_time_s", "cpu_s", "seconds", "finished", "note"]


def summary_csv(trials: list[dict]) -> str:
    """Every trial, one row, with every knob (blank where the method has no such knob);
    test accuracy is not a column: only the chosen settings' is reported."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=CSV_HEAD, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for t in trials:
        w.writerow({**t, **{k: sg.fmt(v) for k, v in t["knobs"].items()}})
    return buf.getvalue()


def table(doc: dict, identity: dict) -> str:
    """The printed result: per method its chosen settings, validation (and the chosen
    setting's test accuracy), the rows' rates, the knob effects and the warnings."""
    b = doc["budget"]
    size = "all" if b["train_size"] is None else f"{b['train_size']:,}"
    lines = [f"sweep on the {doc['task']} task: {doc['trials_done']} trials done, "
             f"{doc['trials_failed']} failed, {doc['seconds'] / 60:.1f} min of trials; budget "
             f"{size} examples x {b['epochs']:g} epoch(s), batch {b['batch_size']}",
             doc["rule"], "",
             f"{'method':<10} {'val acc':>7} {'val loss':>8} {'test acc':>8} {'± std':>6} "
             f"{'seeds':>6}  chosen settings"]
    for m, c in doc["chosen"].items():
        std = "-" if c["test_accuracy_std"] is None else f"{c['test_accuracy_std']:.3f}"
        knobs = ", ".join(f"{k}={sg.fmt(c['knobs'][k])}" for k in sg.knobs_of(m)
                          if k in c["knobs"])
        lines.append(f"{m:<10} {c['val_accuracy']:>7.3f} {c['val_loss']:>8.4f} "
                     f"{c['test_accuracy']:>8.3f} {std:>6} {len(c['seeds']):>6}  {knobs}")
    if doc["rows"]:
        lines += ["", "learning rate per compare row (among the trials with its own settings):"]
        lines += [f"  {r:<10} lr={sg.fmt(c['lr'])} (val acc {c['val_accuracy']:.3f}, val loss "
                  f"{c['val_loss']:.4f}, {len(c['seeds'])} seed(s), of {c['candidates']} lr "
                  f"values)" for r, c in doc["rows"].items()]
    for m, effects in doc["knob_effects"].items():
        if effects:
            lines.append(f"{m}: best validation loss moves by " + "; ".join(
                f"{e['knob']} {e['spread']:.2g}" for e in effects))
    return "\n".join(lines + ([""] + doc["warnings"] if doc["warnings"] else []))


def write(out: str | Path, trials: list[dict], identity: dict, plot: bool = True) -> dict:
    """Rewrite summary.csv, summary.json, chosen.json (and the figures), each atomically."""
    from peftlab.io.files import atomic_write
    out = Path(out)
    doc = summary(trials, identity)
    text = summary_csv(trials)
    atomic_write(out / "summary.csv", lambda tmp: Path(tmp).write_text(text, "utf-8"))
    write_json(out / "summary.json", doc)
    write_json(out / "chosen.json", {
        "sweep": out.as_posix(), "task": doc["task"], "rule": doc["rule"],
        "budget": doc["budget"], "identity": identity, "rows": doc["rows"],
        "methods": doc["chosen"], "warnings": doc["warnings"]})
    paths = {"csv": out / "summary.csv", "json": out / "summary.json",
             "chosen": out / "chosen.json"}
    if plot:
        from peftlab.compare.sweep_plot import write_figures
        paths.update(write_figures(out, trials, identity))
    return paths


def committed(task: str) -> Path:
    """Where the task's committed sweep is: notebooks/results/sweep_<task>/chosen.json."""
    return (Path(__file__).resolve().parents[2] / "notebooks" / "results" / f"sweep_{task}"
            / "chosen.json")


def chosen_lrs(source, task: str, rows: list[str]) -> tuple[dict[str, float], object]:
    """({row: lr}, what the report records as lr_source) for `peftlab compare`: source None:
    the committed sweep of the task if there is one, else the spec.py rates; "spec": those;
    a path (a chosen.json or its folder): that sweep's rates for the rows it chose."""
    if source == "spec" or (source is None and not committed(task).is_file()):
        return {}, "each method's spec.py (no sweep)"
    path = Path(committed(task) if source is None else source)
    path = path / "chosen.json" if path.is_dir() else path
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"lrs_from {path}: not a sweep's chosen.json ({e}); run `peftlab "
                         f"sweep --out DIR` first, or use the spec.py rates (\"spec\")") from None
    if doc.get("task") != task:
        raise ValueError(f"lrs_from {path}: a sweep of the {doc.get('task')!r} task, not "
                         f"{task!r}")
    chosen = {r: c for r, c in doc.get("rows", {}).items() if r in rows}
    return {r: c["lr"] for r, c in chosen.items()}, {
        "sweep": doc.get("sweep", _shown(path.parent)), "file": _shown(path),
        "rows": list(chosen), "candidates": {r: c.get("candidates") for r, c in chosen.items()},
        "budget": doc.get("budget"), "rule": doc.get("rule")}


def _shown(path: Path) -> str:
    """path relative to the repository (or the working directory) where it lies inside, so a
    committed report names no machine's folders; else as given."""
    path = Path(path).resolve()
    for root in (Path(__file__).resolve().parents[2], Path.cwd().resolve()):
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return path.as_posix()


def lr_line(src: dict, methods: list[str] | None = None) -> str:
    """The report's line on where its rates came from (src: chosen_lrs' lr_source; methods:
    the report's rows): which rows the sweep chose among several rates on validation, which
    had a single rate in its grid (taken, not chosen), and which use their spec.py rate."""
    rows = src.get("rows") or []
    others = [m for m in (methods or []) if m not in rows]
    spec = f"{', '.join(others)}: from spec.py" if others else \
        ("" if methods is not None else "the others from their spec.py")
    if not rows:
        return f"lr: the sweep {src['sweep']} has no rate for these rows; each from its spec.py"
    n = src.get("candidates")
    if n is None:                           # a report written before the counts were recorded
        return f"lr: from the sweep {src['sweep']} ({', '.join(rows)})" + \
            (f"; {spec}" if spec else "")
    chose = [f"{r} (best of {n[r]})" for r in rows if (n.get(r) or 0) > 1]
    single = [r for r in rows if (n.get(r) or 0) <= 1]
    parts = [f"chosen on validation for {', '.join(chose)}"] if chose else []
    parts += [f"{', '.join(single)}: the grid's only rate (taken, not chosen)"] if single else []
    return f"lr: from the sweep {src['sweep']}: " + "; ".join(parts + ([spec] if spec else []))
