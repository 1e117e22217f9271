"""SweepExplorer (notebook 13): a sweep's validation results one knob at a time."""

from pathlib import Path

import pytest

import peftlab as pl
from peftlab.compare import sweep_grid as sg
from peftlab.compare import sweep_report, sweep_store
from peftlab.widgets.sweep_explorer import BEST, MEAN, SweepExplorer

COMMITTED = Path(__file__).resolve().parent.parent / "notebooks" / "results" / "sweep_text"

GRID = {"lora": {"lr": [3e-3], "r": [1, 2, 4], "alpha": ["r", 16], "rslora": [False],
                 "targets": ["qv", "all"]},
        "head": {"lr": [0.01, 0.02, 0.05]}}
IDENTITY = {"task": "text", "grid": GRID, "seed": 0, "confirm_seeds": 3, "top_k": 3}
# hand-made validation accuracies, so every answer below is known: {(r, targets, alpha): acc}
SCREEN = {(1, "qv", "r"): 0.70, (1, "qv", 16): 0.75, (2, "qv", "r"): 0.72, (2, "qv", 16): 0.74,
          (4, "qv", "r"): 0.80, (4, "qv", 16): 0.71, (1, "all", "r"): 0.85, (1, "all", 16): 0.90,
          (2, "all", "r"): 0.88, (2, "all", 16): 0.86, (4, "all", "r"): 0.93, (4, "all", 16): 0.87}
CONFIRM = {(4, "all", "r"): (0.91, 0.89), (1, "all", 16): (0.95, 0.94), (2, "all", "r"): (0.80, 0.80)}
HEAD = {0.01: 0.60, 0.02: 0.70, 0.05: 0.65}


def _trial(method, knobs, seed, acc, stage="screen"):
    return {"trial": sg.trial_id(method, knobs, seed), "point": sg.point_id(method, knobs),
            "method": method, "knobs": knobs, "seed": seed, "stage": stage, "status": "ok",
            "val_accuracy": acc, "val_loss": 1 - acc, "test_accuracy": acc + 0.01}


def _lora(r, targets, alpha):
    return {"lr": 3e-3, "r": r, "alpha": alpha, "rslora": False, "targets": targets}


def trials():
    out = [_trial("lora", _lora(*k), 0, a) for k, a in SCREEN.items()]
    out += [_trial("head", {"lr": lr}, 0, a) for lr, a in HEAD.items()]
    out += [_trial("lora", _lora(*k), s, a, "confirm") for k, accs in CONFIRM.items()
            for s, a in zip((1, 2), accs)]
    out.append({**_trial("head", {"lr": 0.05}, 1, 0.0), "status": "error", "note": "boom"})
    return out


def test_lines_spread_and_best_by_hand():
    sx = SweepExplorer((trials(), IDENTITY))
    assert sx.method.value == "lora" and sx.x.value == "r" and sx.group.value == "targets"
    assert set(sx.fixed) == {"r", "alpha", "targets"}            # the knobs the grid varies
    assert sx.fixed["r"].disabled and sx.fixed["targets"].disabled and not sx.fixed["alpha"].disabled
    lines = {g: [(x, round(m, 3)) for x, m, _ in pts] for g, pts in sx.lines().items()}
    assert lines == {"qv": [(1, 0.75), (2, 0.74), (4, 0.80)],      # the best alpha per rank
                     "all": [(1, 0.90), (2, 0.88), (4, 0.93)]}
    assert sx.spread() == pytest.approx({"qv": 0.06, "all": 0.05})
    sx.fixed["alpha"].value = 16                                    # hold alpha at 16
    assert [round(m, 3) for _, m, _ in sx.lines()["qv"]] == [0.75, 0.74, 0.71]
    assert sx.spread() == pytest.approx({"qv": 0.04, "all": 0.04})
    assert sx.best()["knobs"] == _lora(1, "all", 16)
    sx.fixed["alpha"].value = BEST
    sx.x.value = "targets"                                         # placement on the x axis
    assert sx.group.value == "(none)" and list(sx.group.options) == ["(none)", "r", "alpha"]
    assert sx.fixed["targets"].disabled and not sx.fixed["r"].disabled
    assert [(x, round(m, 3)) for x, m, _ in sx.lines()[None]] == [("qv", 0.80), ("all", 0.93)]
    assert sx.best()["knobs"] == _lora(4, "all", "r")              # seed 0 ranks it first


def test_seeds_chosen_and_test_only_for_the_chosen():
    sx = SweepExplorer((trials(), IDENTITY))
    sx.seeds.value = MEAN                                          # confirmed points: 3 seeds
    all_line = dict((x, round(m, 4)) for x, m, _ in sx.lines()["all"])
    assert all_line == {1: 0.93, 2: 0.86, 4: 0.91}
    chosen = sx.chosen()
    assert chosen["knobs"] == _lora(1, "all", 16) and chosen["seeds"] == [0, 1, 2]
    assert chosen == sweep_report.choose(trials(), GRID, 0, 3)["lora"]
    text = sx.summary()
    assert "chosen: lr=0.003, r=1, alpha=16, rslora=0, targets=all" in text
    assert f"test {chosen['test_accuracy']:.3f}" in text and text.count("test ") == 1
    sx.seeds.value = 1                                             # one confirmation seed
    assert {x for x, _, _ in sx.lines()["all"]} == {1, 2, 4}
    assert "qv" not in sx.lines()                                  # no qv point ran seed 1


def test_switching_method_and_drawing():
    sx = SweepExplorer((trials(), IDENTITY))
    fig = sx.figure()
    assert len(fig.axes[0].lines) >= 2 and sx.image.value[:4] == b"\x89PNG"
    assert "SweepExplorer" in sx.info.value and "<table" in sx.table.value
    sx.method.value = "head"
    assert list(sx.x.options) == ["lr"] and set(sx.fixed) == {"lr"}
    assert [(x, m) for x, m, _ in sx.lines()[None]] == [(0.01, 0.60), (0.02, 0.70), (0.05, 0.65)]
    assert sx.chosen()["knobs"] == {"lr": 0.02} and "head" in sx.summary()
    sx.metric.value = "validation loss"
    assert [round(m, 3) for _, m, _ in sx.lines()[None]] == [0.40, 0.30, 0.35]
    sx.figure()


def test_reads_a_sweep_folder_and_errors_name_the_fix(tmp_path):
    out = sweep_store.open_folder(tmp_path / "sw", IDENTITY)
    for t in trials():
        sweep_store.append_trial(out, t)
    sx = pl.widgets.SweepExplorer(out, method="head")
    assert sx.chosen()["knobs"] == {"lr": 0.02}
    with pytest.raises(FileNotFoundError, match="peftlab sweep --out"):
        SweepExplorer(tmp_path)
    with pytest.raises(ValueError, match="no finished trial"):
        SweepExplorer(([], IDENTITY))
    with pytest.raises(ValueError, match="choose one of"):
        SweepExplorer((trials(), IDENTITY), method="prefix")
    with pytest.raises(ValueError, match="choose one of"):
        SweepExplorer((trials(), IDENTITY), metric="test accuracy")
    with pytest.raises(ValueError, match="varies"):
        SweepExplorer((trials(), IDENTITY), x="rslora")


@pytest.mark.skipif(not (COMMITTED / "sweep.json").is_file(), reason="no committed text sweep")
def test_the_committed_sweep_opens_and_agrees_with_its_summary():
    import json
    doc = json.loads((COMMITTED / "summary.json").read_text(encoding="utf-8"))
    for method, c in doc["chosen"].items():
        sx = SweepExplorer(COMMITTED, method=method)
        assert sx.chosen()["point"] == c["point"], method
        assert sx.figure() is not None and sx.lines()
