"""Several seeds of one method: one row of the report (means, sample standard deviations, the
largest measured peak), and the row of a method that failed."""

from __future__ import annotations

import statistics
import traceback

from peftlab.compare.methods import MethodSpec


def failed_row(name: str, spec: MethodSpec, e: BaseException) -> dict:
    """The report row of a method that raised: its error and traceback (the worker's too)."""
    tb = "".join(traceback.format_exception(e))
    cause = getattr(e, "__cause__", None)          # the worker's traceback, when isolated
    return {"method": name, "status": "failed", "description": spec.description,
            "note": f"{type(e).__name__}: {e}", "traceback": (str(cause) if cause else "") + tb}


def check_run(epochs, seeds) -> None:
    """Refuse an epochs override that is not > 0 and a seeds count that is not a positive int
    (pl.compare.run and the chat comparison, before any training)."""
    if epochs is not None and not epochs > 0:
        raise ValueError(f"epochs must be > 0, got {epochs!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int (runs per method), got {seeds!r}")


MEAN_KEYS = ("test_accuracy", "val_accuracy", "test_loss", "final_train_loss", "step_time_s",
             "setup_s", "train_time_s", "infer_s", "infer_merged_s")


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _std(values):
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) > 1 else None


def aggregate(runs: list[dict], seeds: list[int]) -> dict:
    """One row from the runs of one method over seeds: means of accuracies, losses and times,
    sample standard deviations of the accuracies (None for one seed), the largest measured
    peak, and the exact counts (the same for every seed)."""
    bad = next((r for r in runs if r["status"] != "ok"), None)
    if bad is not None:
        return bad
    row = dict(runs[0])
    for k in MEAN_KEYS:
        row[k] = _mean([r.get(k) for r in runs])
    row["test_accuracy_std"] = _std([r["test_accuracy"] for r in runs])
    row["val_accuracy_std"] = _std([r.get("val_accuracy") for r in runs])
    peaks = [r["measured_peak_bytes"] for r in runs if r.get("measured_peak_bytes") is not None]
    row["measured_peak_bytes"] = max(peaks) if peaks else None
    row["seeds"] = ";".join(map(str, seeds))
    row["test_accuracy_runs"] = ";".join(f"{r['test_accuracy']:.4f}" for r in runs)
    cats = runs[0].get("categories") or {}
    row["category_accuracy"] = {c: _mean([r["categories"][c][0] for r in runs]) for c in cats}
    row["category_accuracy_std"] = {c: _std([r["categories"][c][0] for r in runs]) for c in cats}
    row["category_n"] = {c: n for c, (_, n) in cats.items()}
    row.pop("categories", None)
    return row
