"""TradeoffExplorer (notebook 06): accuracy vs cost over a comparison report."""

import json
from pathlib import Path

import pytest

import peftlab as pl
from peftlab.widgets.tradeoff import COSTS, TradeoffExplorer, cost_of

REPORT = Path(__file__).resolve().parent.parent / "notebooks" / "results" / "compare_default"

ROWS = [  # method, test accuracy, training state, step time; hand-made so the answers are known
    {"method": "full", "status": "ok", "test_accuracy": 0.96, "training_state_bytes": 400,
     "step_time_s": 0.4, "train_time_s": 20, "setup_s": 0, "trainable": 1000,
     "adapter_bytes": 900, "test_accuracy_std": 0.01},
    {"method": "lora", "status": "ok", "test_accuracy": 0.95, "training_state_bytes": 150,
     "step_time_s": 0.2, "train_time_s": 10, "setup_s": 0, "trainable": 10, "adapter_bytes": 30},
    {"method": "head", "status": "ok", "test_accuracy": 0.60, "training_state_bytes": 100,
     "step_time_s": 0.1, "train_time_s": 5, "setup_s": 0, "trainable": 1, "adapter_bytes": 3},
    {"method": "prompt", "status": "ok", "test_accuracy": 0.55, "training_state_bytes": 200,
     "step_time_s": 0.3, "train_time_s": 15, "setup_s": 0, "trainable": 2, "adapter_bytes": 5},
    {"method": "selection", "status": "ok", "test_accuracy": 0.90, "training_state_bytes": 220,
     "step_time_s": 0.35, "train_time_s": 8, "setup_s": 6, "trainable": 11, "adapter_bytes": 99},
    {"method": "broken", "status": "error", "note": "oom"},
]


def test_pareto_front_feasible_and_best_by_hand():
    tx = TradeoffExplorer(ROWS)
    assert [m for m, *_ in tx.points()] == ["full", "lora", "head", "prompt", "selection"]
    assert tx.pareto() == ["head", "lora", "full"]          # prompt, selection are dominated
    assert tx.best() == "full"                               # limit 1.0: everything fits
    tx.limit.value = 0.5                                     # 200 bytes of training state
    assert [m for m, _, _ in tx.feasible()] == ["lora", "head", "prompt"]
    assert tx.best() == "lora" and "best under it: lora" in tx.summary()
    tx.cost.value = "training time + setup (s)"              # selection pays its scoring
    assert cost_of(ROWS[4], "training time + setup (s)") == 14
    assert tx.pareto() == ["head", "lora", "full"]
    tx.cost.value = "trainable parameters"
    assert tx.pareto() == ["head", "lora", "full"] and tx.threshold() == 500


def test_older_report_keys_are_read():
    old = [{"method": "a", "status": "ok", "test_accuracy": 0.8, "peak_memory_bytes": 10,
            "rss_peak_bytes": 50, "step_time_s": 1.0},
           {"method": "b", "status": "ok", "test_accuracy": 0.9, "peak_memory_bytes": 20,
            "rss_peak_bytes": 40, "step_time_s": 2.0}]
    tx = TradeoffExplorer(old)
    assert set(tx.costs) == {"training state (bytes)", "measured peak memory (bytes)",
                             "step time (s)"}
    tx.cost.value = "measured peak memory (bytes)"
    assert tx.pareto() == ["b"]                               # b: cheaper and more accurate


def test_reads_the_committed_report_and_draws(tmp_path):
    tx = pl.widgets.TradeoffExplorer(REPORT)
    rows = json.loads((REPORT / "report.json").read_text())["rows"]
    ok = [r["method"] for r in rows if r.get("status", "ok") == "ok"]
    assert [m for m, *_ in tx.points()] == ok
    best_acc = max(r["test_accuracy"] for r in rows if r.get("status", "ok") == "ok")
    assert tx.pareto()[-1] in [r["method"] for r in rows if r["test_accuracy"] == best_acc]
    for cost in tx.costs:                                    # every offered cost draws
        tx.cost.value = cost
        fig = tx.figure()
        assert len(fig.axes[0].lines) >= 2                   # front + budget line
    assert tx.image.value[:4] == b"\x89PNG"
    assert "TradeoffExplorer" in tx.info.value and "<table" in tx.table.value
    same = TradeoffExplorer(REPORT / "report.json")
    assert same.pareto() == TradeoffExplorer(REPORT).pareto()


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="peftlab compare"):
        TradeoffExplorer(tmp_path)
    with pytest.raises(ValueError, match="status 'ok'"):
        TradeoffExplorer([{"method": "x", "status": "error"}])
    with pytest.raises(ValueError, match="choose one of"):
        TradeoffExplorer(ROWS, cost="carbon")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        TradeoffExplorer(ROWS, limit=0)
    with pytest.raises(TypeError, match="report folder"):
        TradeoffExplorer(42)
    assert set(COSTS) >= {"training state (bytes)", "step time (s)"}
