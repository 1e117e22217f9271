"""The figures of `peftlab sweep`: one per method, validation against the method's main knob.

    sweep_lora.png    validation accuracy (left) and loss (right) against the rank, one line
                      per seed and placement (solid: all linear layers, dashed: query/value)

Each point is the best trial at that knob value for that seed (the best over every other knob,
by validation accuracy then loss), so a line shows what the knob can reach. The loss panel
separates settings whose accuracies tie. A method swept on lr alone is drawn against lr. Only
reads the trials.
"""

from __future__ import annotations

from pathlib import Path

from peftlab.compare import sweep_grid as sg
from peftlab.compare.sweep_grid import rank_key


def _xaxis(method: str, grid: dict) -> str:
    """The knob a method's figure is drawn against: its main knob if swept, else lr."""
    main = sg.MAIN.get(method)
    knobs = grid.get(method, {})
    if main in knobs and len(knobs[main]) > 1:
        return main
    return "lr"


def lines(trials: list[dict], method: str, knob: str, group: str | None = None):
    """{(seed, group value): [(x, val acc, val loss)] sorted by x}: the best trial per x."""
    best: dict[tuple, dict] = {}
    for t in trials:
        if t["status"] != "ok" or t["method"] != method:
            continue
        key = (t["seed"], t["knobs"].get(group) if group else None, t["knobs"][knob])
        if key not in best or rank_key(t["val_accuracy"], t["val_loss"]) < \
                rank_key(best[key]["val_accuracy"], best[key]["val_loss"]):
            best[key] = t
    out: dict[tuple, list] = {}
    for (seed, g, x), t in sorted(best.items(), key=lambda kv: (kv[0][0], str(kv[0][1]),
                                                                 kv[0][2])):
        out.setdefault((seed, g), []).append((x, t["val_accuracy"], t["val_loss"]))
    return out


def figure(trials: list[dict], method: str, grid: dict):
    """The Figure of one method (two panels: validation accuracy, validation loss)."""
    import matplotlib.pyplot as plt
    knob = _xaxis(method, grid)
    group = "targets" if method == "lora" and len(grid[method].get("targets", [])) > 1 else None
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = plt.get_cmap("tab10").colors
    seeds = sorted({t["seed"] for t in trials if t["method"] == method})
    for (seed, g), pts in lines(trials, method, knob, group).items():
        style, marker = {"all": ("-", "o"), "qv": ("--", "s")}.get(g, ("-", "o"))
        label = f"seed {seed}" + (f", targets {g}" if g else "")
        xs = [p[0] for p in pts]
        for ax, i in ((ax_acc, 1), (ax_loss, 2)):
            ax.plot(xs, [p[i] for p in pts], style, marker=marker, ms=4,
                    color=colors[seeds.index(seed) % 10], label=label)
    numeric = sg.KNOBS[knob].kind in ("int", "float")
    for ax, what in ((ax_acc, "validation accuracy"), (ax_loss, "validation loss")):
        if numeric:
            ax.set_xscale("log", base=2 if sg.KNOBS[knob].kind == "int" else 10)
            values = grid[method].get(knob) or sorted({t["knobs"][knob] for t in trials
                                                       if t["method"] == method})
            ax.set_xticks(values, [sg.fmt(v) for v in values])
            ax.minorticks_off()
        ax.set_xlabel(f"{knob} ({sg.KNOBS[knob].help})", fontsize=9)
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    ax_loss.set_yscale("log")           # losses near 0 differ by orders of magnitude
    ax_loss.legend(fontsize=7, loc="best")
    fig.suptitle(f"peftlab sweep: {method}, best trial per {knob} value and seed "
                 f"(chosen on validation only)", fontsize=10)
    fig.tight_layout()
    return fig


def write_figures(out: str | Path, trials: list[dict], identity: dict) -> dict[str, Path]:
    """Save sweep_<method>.png for each method with a finished trial (atomically)."""
    import matplotlib.pyplot as plt

    from peftlab.io.files import atomic_write
    paths = {}
    for method in identity["grid"]:
        if not any(t["method"] == method and t["status"] == "ok" for t in trials):
            continue
        fig = figure(trials, method, identity["grid"])
        path = Path(out) / f"sweep_{method}.png"
        atomic_write(path, lambda tmp, f=fig: f.savefig(tmp, dpi=100, bbox_inches="tight",
                                                        format="png"))
        plt.close(fig)
        paths[f"png_{method}"] = path
    return paths
