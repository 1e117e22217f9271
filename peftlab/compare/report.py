"""The comparison report: one row per method, ratios to full fine-tuning, table and files."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from peftlab import measure


def _ratios(rows: list[dict]) -> None:
    ref = next((r for r in rows if r["method"] == "full" and r["status"] == "ok"), None)
    for r in rows:
        for key, out in (("step_time_s", "step_time_ratio"), ("peak_memory_bytes", "memory_ratio")):
            r[out] = (r[key] / ref[key] if ref and r["status"] == "ok" and ref[key] else None)


# --- the report --------------------------------------------------------------------------------

COLUMNS = ["method", "status", "trainable", "total", "trainable_pct", "step_time_s",
           "step_time_ratio", "peak_memory_bytes", "memory_ratio", "test_accuracy",
           "val_accuracy", "adapter_bytes", "infer_s", "infer_merged_s", "setup_s",
           "train_time_s", "steps", "train_size", "epochs", "batch_size", "lr",
           "final_train_loss", "test_loss", "weights_bytes", "gradients_bytes",
           "optimizer_bytes", "activations_bytes", "rss_peak_bytes", "peak_kind", "device",
           "description", "note"]


@dataclass
class Report:
    """The result of a comparison run: one row per method.

    task: "text" or "vision". rows: one dict per method (status, trainable parameters, times,
    memory, accuracies, adapter size, ...). settings: how the run was made (seeds, device,
    budgets, versions). table() prints it; write(out) saves report.csv, report.json and the
    plots.
    """

    task: str
    rows: list[dict]
    settings: dict

    def row(self, method: str) -> dict:
        return next(r for r in self.rows if r["method"] == method)

    def table(self) -> str:
        """The printed table: one line per method; ratios are against full fine-tuning."""
        def f(v, fmt):
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt(v)
        head = (f"{'method':<10} {'trainable':>12} {'%':>8} {'step ms':>8} {'x full':>7} "
                f"{'peak mem':>9} {'x full':>7} {'test acc':>8} {'adapter':>9}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            if r["status"] != "ok":
                lines.append(f"{r['method']:<10} {r['status'].upper()}: {r['note'][:70]}")
                continue
            lines.append(
                f"{r['method']:<10} {r['trainable']:>12,} {r['trainable_pct']:>7.3f}% "
                f"{f(r['step_time_s'], lambda v: f'{1000 * v:.0f}'):>8} "
                f"{f(r['step_time_ratio'], lambda v: f'{v:.2f}'):>7} "
                f"{measure.human_bytes(r['peak_memory_bytes']):>9} "
                f"{f(r['memory_ratio'], lambda v: f'{v:.2f}'):>7} "
                f"{r['test_accuracy']:>8.3f} {measure.human_bytes(r['adapter_bytes']):>9}")
        kind = next((r["peak_kind"] for r in self.rows if r["status"] == "ok"), "")
        lines.append(f"peak mem: {kind}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def figure(self, title: str | None = None):
        """Accuracy vs trainable parameters, step time and memory bars (plots/compare.py)."""
        from peftlab.plots.compare import compare_figure
        return compare_figure(self.rows, title=title or f"peftlab compare: {self.task} task")

    def write(self, out: str | Path, plot: bool = True) -> dict[str, Path]:
        """Write report.csv, report.json and (plot=True) compare.png into the folder `out`."""
        import csv
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "report.csv", "json": out / "report.json"}
        with open(paths["csv"], "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            for r in self.rows:
                w.writerow({k: r.get(k) for k in COLUMNS})
        with open(paths["json"], "w", encoding="utf-8") as fh:
            json.dump({"task": self.task, "settings": self.settings, "rows": self.rows}, fh,
                      indent=2, default=str)
            fh.write("\n")
        if plot:
            import matplotlib.pyplot as plt
            fig = self.figure()
            paths["png"] = out / "compare.png"
            fig.savefig(paths["png"], dpi=110, bbox_inches="tight")
            plt.close(fig)
        return paths

    @classmethod
    def load(cls, path: str | Path) -> Report:
        """Read a report.json (or the folder holding it) written by `write`."""
        path = Path(path)
        path = path / "report.json" if path.is_dir() else path
        d = json.loads(path.read_text(encoding="utf-8"))
        return cls(d["task"], d["rows"], d["settings"])
