"""The comparison report: one row per method, ratios to full fine-tuning, tables and files.

Memory is reported twice, under two names, because the two numbers answer different questions:
  training_state_bytes   an exact *count*: weights + gradients + optimizer state + the
                         activations autograd saved for backward on the first batch
                         (peftlab.measure). Deterministic; a lower bound of any real peak.
  measured_peak_bytes    a *measurement*: the peak resident memory above the model-loaded
                         baseline (CPU, each method in a fresh process; temporaries, allocator
                         slack and one-off setup such as selection's Fisher scoring included),
                         or the CUDA allocator's peak above the baseline on a GPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from peftlab import measure


def _ratios(rows: list[dict]) -> None:
    ref = next((r for r in rows if r["method"] == "full" and r["status"] == "ok"), None)
    for r in rows:
        for key, out in (("step_time_s", "step_time_ratio"),
                         ("training_state_bytes", "state_ratio"),
                         ("measured_peak_bytes", "measured_ratio")):
            ok = ref and r["status"] == "ok" and ref.get(key) and r.get(key) is not None
            r[out] = r[key] / ref[key] if ok else None


def pareto_front(points) -> list[str]:
    """[(name, cost, accuracy)] -> the names no other point beats on both axes (as accurate or
    better for less cost, more accurate for as little), cheapest first."""
    front, best = [], -math.inf
    for name, _, acc, *_ in sorted(points, key=lambda p: (p[1], -p[2])):
        if acc > best:
            front.append(name)
            best = acc
    return front


# --- categories: errors by kind --------------------------------------------------------------

HELD_OUT = " (held-out template)"
ORDER = ["plain", "negation", "contrast", "expectation reversal"]


def category_order(rows: list[dict]) -> list[str]:
    """Categories present in the rows: training templates first, then held-out ones."""
    cats = {c for r in rows for c in (r.get("category_accuracy") or {})}

    def key(c):
        base = c.removesuffix(HELD_OUT)
        return (c.endswith(HELD_OUT), ORDER.index(base) if base in ORDER else len(ORDER), c)
    return sorted(cats, key=key)


def short_category(c: str) -> str:
    """'expectation reversal (held-out template)' -> 'reversal*' (a column label)."""
    base = c.removesuffix(HELD_OUT).replace("expectation reversal", "reversal")
    return base + ("*" if c.endswith(HELD_OUT) else "")


def category_column(c: str) -> str:
    return f"acc[{c}]"


# --- the report --------------------------------------------------------------------------------

COLUMNS = ["method", "status", "seeds", "trainable", "total", "trainable_pct",
           "test_accuracy", "test_accuracy_std", "val_accuracy", "val_accuracy_std",
           "step_time_s", "step_time_ratio", "step_time_spread", "train_step_time_s",
           "setup_s", "train_time_s",
           "training_state_bytes", "state_ratio", "measured_peak_bytes", "measured_ratio",
           "adapter_bytes", "infer_s", "infer_merged_s", "steps", "train_size", "epochs",
           "batch_size", "lr", "final_train_loss", "test_loss", "weights_bytes",
           "gradients_bytes", "optimizer_bytes", "activations_bytes", "measured_kind",
           "device", "precision", "description", "test_accuracy_runs", "note"]

STATE_KIND = ("exact count: weights + gradients + optimizer state + activations saved for "
              "backward (peftlab.measure)")


def _f(v, fmt):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt(v)


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
        """The printed table: one line per method; ratios are against full fine-tuning; the
        per-category table follows when the task has categories."""
        mb = measure.human_bytes
        head = (f"{'method':<10} {'trainable':>11} {'%':>7} {'test acc':>8} {'± std':>6} "
                f"{'step ms':>7} {'x full':>6} {'setup s':>7} {'state':>9} {'x full':>6} "
                f"{'peak':>9} {'x full':>6} {'adapter':>9}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            if r["status"] != "ok":
                lines.append(f"{r['method']:<10} {r['status'].upper()}: {r['note'][:80]}")
                continue
            lines.append(
                f"{r['method']:<10} {r['trainable']:>11,} {r['trainable_pct']:>6.3f}% "
                f"{r['test_accuracy']:>8.3f} {_f(r.get('test_accuracy_std'), lambda v: f'{v:.3f}'):>6} "
                f"{_f(r['step_time_s'], lambda v: f'{1000 * v:.0f}'):>7} "
                f"{_f(r.get('step_time_ratio'), lambda v: f'{v:.2f}'):>6} "
                f"{_f(r.get('setup_s'), lambda v: f'{v:.1f}'):>7} "
                f"{mb(r['training_state_bytes']):>9} "
                f"{_f(r.get('state_ratio'), lambda v: f'{v:.2f}'):>6} "
                f"{_f(r.get('measured_peak_bytes'), mb):>9} "
                f"{_f(r.get('measured_ratio'), lambda v: f'{v:.2f}'):>6} "
                f"{measure.human_bytes(r['adapter_bytes']):>9}")
        seeds = self.settings.get("seeds") or [self.settings.get("seed", 0)]
        kind = next((r.get("measured_kind") for r in self.rows if r.get("measured_kind")), "-")
        lines += [(f"test acc: held-out words and templates; mean over {len(seeds)} seed(s) "
                   f"{', '.join(map(str, seeds))}; ± = sample std over seeds"),
                  f"state: {STATE_KIND}",
                  f"peak: measured, {kind}",
                  "setup: one-off work before training (selection: Fisher scoring)"]
        lines += self.budget_lines() + self.timing_lines()
        cats = self.category_table()
        return "\n".join(lines) + ("\n\n" + cats if cats else "")

    def budget_lines(self) -> list[str]:
        """The one data budget of the run, stated once, the labelled rows that differ, and
        where the learning rates came from (empty for a report older than issue 31)."""
        st, b = self.settings, self.settings.get("budget")
        if not b:
            return []
        size = "all" if b["train_size"] is None else f"{b['train_size']:,}"
        src = st.get("lr_source") or "-"
        from peftlab.compare.sweep_report import lr_line
        return [f"data budget: every method {size} training examples, {b['epochs']:g} epoch(s), "
                f"batch {b['batch_size']}" + "".join(
                    f"; {m}: {label}" for m, label in (st.get("labelled") or {}).items()),
                lr_line(src, [r["method"] for r in self.rows]) if isinstance(src, dict) else f"lr: {src}"]

    def timing_lines(self) -> list[str]:
        """How the step times were taken, the precision, and a warning when the machine was
        busy (the interleaved turns of a method differed by more than BUSY_SPREAD)."""
        from peftlab.compare.timing import BUSY_SPREAD
        st = self.settings
        out = []
        if st.get("timing"):
            prec = st.get("precision", "fp32")
            cpu = st.get("cpu_bf16") or {}
            where = (f"; CPU {cpu.get('isa', '?')}, bf16 instructions "
                     f"{'yes' if cpu.get('supported') else 'no'}" if cpu else "")
            out.append(f"step ms: {st['timing']}; precision {prec}{where}")
        spreads = {r["method"]: r["step_time_spread"] for r in self.rows
                   if r.get("step_time_spread") is not None}
        worst = max(spreads.items(), key=lambda kv: kv[1], default=None)
        if worst and worst[1] > BUSY_SPREAD:
            out.append(f"WARNING: the machine was busy while timing: {worst[0]}'s turns "
                       f"differed by {100 * worst[1]:.0f}% of its median (above "
                       f"{100 * BUSY_SPREAD:.0f}%); the step-time ratios are rough: re-run on "
                       f"a quiet machine")
        return out

    def category_table(self) -> str:
        """Test accuracy per category of sentence (errors by kind); '' without categories."""
        cats = category_order(self.rows)
        if not cats:
            return ""
        ok = [r for r in self.rows if r["status"] == "ok"]
        n = next(r.get("category_n", {}) for r in ok)
        head = f"{'method':<10} " + " ".join(f"{short_category(c):>10}" for c in cats)
        lines = ["test accuracy by kind of sentence (* = held-out template)", head,
                 f"{'examples':<10} " + " ".join(f"{n.get(c, 0):>10}" for c in cats),
                 "-" * len(head)]
        for r in ok:
            acc = r.get("category_accuracy") or {}
            lines.append(f"{r['method']:<10} " + " ".join(
                f"{_f(acc.get(c), lambda v: f'{v:.3f}'):>10}" for c in cats))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def figure(self, title: str | None = None):
        """Accuracy vs trainable parameters, step time and memory (plots/compare.py)."""
        from peftlab.plots.compare import compare_figure
        return compare_figure(self.rows, title=title or f"peftlab compare: {self.task} task")

    def category_figure(self, title: str | None = None):
        """Per-category test accuracy of every method, a heat map (plots/compare.py)."""
        from peftlab.plots.compare import category_figure
        cats = category_order(self.rows)
        return category_figure(self.rows, cats, [short_category(c) for c in cats],
                               title=title or "test accuracy by kind of sentence (* = held-out template)")

    def csv_columns(self) -> list[str]:
        return COLUMNS + [category_column(c) for c in category_order(self.rows)]

    def csv_row(self, r: dict) -> dict:
        acc = r.get("category_accuracy") or {}
        return {**{k: r.get(k) for k in COLUMNS},
                **{category_column(c): acc.get(c) for c in category_order(self.rows)}}

    def write(self, out: str | Path, plot: bool = True) -> dict[str, Path]:
        """Write report.csv, report.json and (plot=True) compare.png, plus categories.png when
        the task has categories, into the folder `out` (each file written atomically)."""
        import csv
        import io

        from peftlab.io.files import atomic_write
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "report.csv", "json": out / "report.json"}
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=self.csv_columns(), extrasaction="ignore",
                           lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow(self.csv_row(r))
        text = buf.getvalue()
        doc = json.dumps({"task": self.task, "settings": self.settings, "rows": self.rows},
                         indent=2, default=str) + "\n"
        for key, content in (("csv", text), ("json", doc)):
            atomic_write(paths[key], lambda tmp, c=content: Path(tmp).write_text(c, "utf-8"))
        if plot:
            import matplotlib.pyplot as plt
            figs = [("png", "compare.png", self.figure())]
            if category_order(self.rows):
                figs.append(("categories_png", "categories.png", self.category_figure()))
            for key, name, fig in figs:
                paths[key] = out / name
                atomic_write(paths[key], lambda tmp, f=fig: f.savefig(
                    tmp, dpi=110, bbox_inches="tight", format="png"))
                plt.close(fig)
        return paths

    @classmethod
    def load(cls, path: str | Path) -> Report:
        """Read a report.json (or the folder holding it) written by `write`."""
        path = Path(path)
        path = path / "report.json" if path.is_dir() else path
        d = json.loads(path.read_text(encoding="utf-8"))
        for r in d["rows"]:        # a first-edition report: its "peak" was the exact state count
            if "training_state_bytes" not in r and "peak_memory_bytes" in r:
                r["training_state_bytes"] = r["peak_memory_bytes"]
                r.setdefault("state_ratio", r.get("memory_ratio"))
        if d["task"] == "chat" and cls is Report:
            return ChatReport(d["task"], d["rows"], d["settings"])
        return cls(d["task"], d["rows"], d["settings"])


# --- the chat task's report (compare/chat.py) ----------------------------------------------

CHAT_COLUMNS = [
    "method", "status", "seeds", "trainable", "total", "trainable_pct", "exact_match",
    "exact_match_std", "retention", "retention_std", "field_accuracy", "held_out_loss",
    "step_time_s", "step_time_ratio", "step_time_spread", "train_step_time_s", "train_time_s",
    "setup_s", "training_state_bytes", "adapter_bytes", "generate_s", "steps", "train_size",
    "epochs", "batch_size", "lr", "final_train_loss", "exact_match_runs", "retention_runs",
    "device", "precision", "description", "note"]


class ChatReport(Report):
    """The chat comparison (compare/chat.py): exact match, retention, held-out loss, cost."""

    def csv_columns(self) -> list[str]:
        cats = list(dict.fromkeys(c for r in self.rows for c in (r.get("categories") or {})))
        return CHAT_COLUMNS + [f"em[{c}]" for c in cats]

    def csv_row(self, r: dict) -> dict:
        cats = {f"em[{c}]": v[0] for c, v in (r.get("categories") or {}).items()}
        return {**{k: r.get(k) for k in CHAT_COLUMNS}, **cats}

    def table(self) -> str:
        mb = measure.human_bytes
        head = (f"{'method':<12} {'trainable':>11} {'%':>7} {'exact':>6} {'± std':>6} "
                f"{'retain':>6} {'loss':>7} {'step ms':>7} {'x lora':>6} {'state':>9} "
                f"{'adapter':>9} {'gen s':>6}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            if r["status"] != "ok":
                lines.append(f"{r['method']:<12} {r['status'].upper()}: {r['note'][:90]}")
                continue
            lines.append(
                f"{r['method']:<12} {r['trainable']:>11,} {r['trainable_pct']:>6.3f}% "
                f"{r['exact_match']:>6.3f} {_f(r.get('exact_match_std'), lambda v: f'{v:.3f}'):>6} "
                f"{r['retention']:>6.3f} {_f(r.get('held_out_loss'), lambda v: f'{v:.4f}'):>7} "
                f"{_f(r.get('step_time_s'), lambda v: f'{1000 * v:.0f}'):>7} "
                f"{_f(r.get('step_time_ratio'), lambda v: f'{v:.2f}'):>6} "
                f"{_f(r.get('training_state_bytes'), mb):>9} "
                f"{mb(r.get('adapter_bytes') or 0):>9} {r['generate_s']:>6.1f}")
        st = self.settings
        seeds = st.get("seeds") or [st.get("seed", 0)]
        n = next((r["test_n"] for r in self.rows if r.get("test_n")), "?")
        k = next((r["retention_n"] for r in self.rows if r.get("retention_n")), "?")
        lines += [(f"exact: greedy answers to the {n} held-out test examples (new names, "
                   f"cities and templates), normalised exact match; mean over {len(seeds)} "
                   f"seed(s)"),
                  (f"retain: exact match on {k} questions the base model answers right "
                   f"(1.0 = nothing forgotten)"),
                  "loss: validation cross-entropy per answer token after training",
                  "state: exact count: weights + gradients + optimizer state + saved activations",
                  "data budget: the same for every method: " + ", ".join(f"{k} {v}" for k, v in (
                      st.get("budget") or {}).items() if k != "lr") + "; lr: " + ", ".join(
                      f"{m} {b['lr']:g}" for m, b in (st.get("budgets") or {}).items())]
        lines += self.timing_lines()
        cats = list(dict.fromkeys(c for r in self.rows for c in (r.get("categories") or {})))
        if cats:
            lines += ["", "exact match by test category", f"{'method':<12} " +
                      " ".join(f"{c:>18}" for c in cats)]
            for r in self.rows:
                if r["status"] == "ok":
                    lines.append(f"{r['method']:<12} " + " ".join(
                        f"{r['categories'][c][0]:>18.3f}" for c in cats))
        return "\n".join(lines)

    def figure(self, title: str | None = None):
        """Exact match (held-out test) and retention per method, against trainable numbers."""
        import matplotlib.pyplot as plt
        ok = [r for r in self.rows if r["status"] == "ok"]
        fig, ax = plt.subplots(figsize=(7, 3.6))
        x = range(len(ok))
        ax.bar([i - 0.2 for i in x], [r["exact_match"] for r in ok], 0.4,
               label="exact match (held-out test)")
        ax.bar([i + 0.2 for i in x], [r["retention"] for r in ok], 0.4,
               label="retention (base answers kept)")
        ax.set_xticks(list(x), [f"{r['method']}\n{r['trainable']:,}" for r in ok], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("share exactly right")
        ax.set_title(title or "peftlab compare: chat task (trainable numbers under each name)",
                     fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        return fig

    def category_table(self) -> str:
        return ""
