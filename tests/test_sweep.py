"""`peftlab sweep` and the matched budgets of `compare` (issue 31): one data budget per task,
labelled exceptions only; the vision task's validation split from the held-out pool; the grid
checked before anything runs; trials stored as they finish, a killed sweep resumed without
rerunning a finished trial, a changed grid refused; the choice on validation only; compare
reading a sweep's learning rates. Runs use --quick and a tiny BERT."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from test_compare import tiny_text_model

from peftlab import cli, compare
from peftlab.compare import methods as cm
from peftlab.compare import sweep, sweep_report, sweep_store
from peftlab.compare import sweep_grid as sg

# --- one data budget -----------------------------------------------------------------------------

def test_every_row_has_the_tasks_budget_or_a_label(monkeypatch):
    for task in ("text", "vision", "chat"):
        cm.check_budgets(task)
        for name, spec in cm.METHODS[task].items():
            same = {k: getattr(spec.budget, k) for k in cm.BUDGET_KEYS} == cm.budget_of(task)
            assert same or spec.label, (task, name)
    for name in cm.defaults("text"):                 # the default report: one budget, no label
        assert not cm.TEXT_METHODS[name].label and cm.TEXT_METHODS[name].budget.train_size == \
            cm.DATA["text"].train_size == 2400
    extra = cm.TEXT_METHODS["prefix_2ep"]
    assert extra.label == "prefix, 2 epochs" and extra.budget.epochs == 2 and not extra.default
    assert extra.budget.lr == cm.TEXT_METHODS["prefix"].budget.lr
    silent = dataclasses.replace(cm.TEXT_METHODS["full"], budget=dataclasses.replace(
        cm.TEXT_METHODS["full"].budget, train_size=1280))
    monkeypatch.setitem(cm.TEXT_METHODS, "full", silent)
    with pytest.raises(ValueError, match="'full'.*train_size 1280 \\(task: 2400\\).*without a "
                                         "label"):
        cm.check_budgets("text")
    with pytest.raises(ValueError, match="without a label"):
        compare.run(["full"], quick=True, model_fn=tiny_text_model, isolate=False)


def test_vision_validation_comes_from_the_held_out_pool_disjoint_from_test():
    from peftlab.models import vision
    import torch
    task = cm.vision_task(0, model_fn=lambda: torch.nn.Linear(64, 5))   # the data, not the model
    train, pool = vision.digits_transfer(shots_per_class=10, seed=0)
    val, test = task.validation, task.test
    assert val.dataset is test.dataset and len(val.dataset) == len(pool)
    assert set(val.indices).isdisjoint(test.indices)
    assert sorted(val.indices + test.indices) == list(range(len(pool)))   # all of the pool
    labels = [int(pool.tensors[1][i]) for i in val.indices]
    assert {c: labels.count(c) for c in set(labels)} == {c: 20 for c in range(5)}
    assert len(task.train) == 50                     # the few training images are untouched
    again = cm.vision_task(0, quick=True, model_fn=lambda: torch.nn.Linear(64, 5))
    assert again.validation.indices == val.indices and len(again.test) < len(test)


def test_the_vision_rates_are_the_committed_sweeps_choice_on_validation():
    """Each vision row's spec.py rate, the library's TRANSFER_LR (notebook 07 and the datasheet
    data/vision/README.md) and what `peftlab compare --task vision` reads are the committed
    sweep's choice (notebooks/results/sweep_vision, chosen on validation); and that sweep's
    identity is today's, so rerunning its command resumes it instead of being refused."""
    from peftlab.models import vision
    doc = json.loads(sweep_report.committed("vision").read_text(encoding="utf-8"))
    assert doc["task"] == "vision" and doc["rule"].startswith("chosen on validation only")
    assert doc["warnings"] == [] and doc["budget"] == cm.budget_of("vision")
    chosen = {row: c["lr"] for row, c in doc["rows"].items()}
    assert set(chosen) == set(cm.VISION_METHODS)
    assert {m: s.budget.lr for m, s in cm.VISION_METHODS.items()} == chosen
    assert {m: vision.TRANSFER_LR[m] for m in chosen} == chosen
    assert vision.TRANSFER_LR["scratch"] == chosen["full"]          # not swept: full's rate
    assert sweep_report.chosen_lrs(None, "vision", list(chosen))[0] == chosen
    ident = doc["identity"]
    assert ident["grid"] == json.loads(json.dumps(sweep.plan(task="vision").grid))
    assert ident["defaults"] == {m: sg.row_settings("vision", m) for m in ident["grid"]}
    assert (ident["seed"], ident["confirm_seeds"], ident["top_k"], ident["quick"]) == (0, 3, 3,
                                                                                        False)


# --- the grid --------------------------------------------------------------------------------

def test_grid_spec_parses_checks_and_names_the_culprit():
    grid = sg.check(sg.parse_cli(["lora:r=1,2;alpha=r,2r,16;rslora=0,1;targets=qv,all;lr=1e-3",
                                  "prefix:virtual_tokens=5,10"]))
    assert grid["lora"] == {"lr": [1e-3], "r": [1, 2], "alpha": ["r", "2r", 16],
                            "rslora": [False, True], "targets": ["qv", "all"]}
    pts = sg.points(grid)
    assert len(pts) == 24 + 2
    method, knobs = pts[-1]
    assert method == "prefix" and knobs == {"lr": cm.TEXT_METHODS["prefix"].budget.lr,
                                            "virtual_tokens": 10}     # every knob recorded
    assert sg.point_id("lora", pts[0][1]) == "lora:alpha=r;lr=0.001;r=1;rslora=0;targets=qv"
    for bad, msg in [({}, "the grid is empty"), ({"lorax": {"lr": [1]}}, "unknown method 'lorax'"),
                     ({"lora": {"rank": [1]}}, "lora: unknown knob 'rank'.*it knows lr, r"),
                     ({"lora": {"r": []}}, "knob r has no values"),
                     ({"lora": {"r": ["1.5"]}}, "knob r: bad value '1.5'"),
                     ({"selection": {"fraction": [2]}}, "fraction: bad value"),
                     ({"head": {}}, "head: no knobs given")]:
        with pytest.raises(sg.GridError, match=msg):
            sg.check(bad)
    with pytest.raises(sg.GridError, match="targets=qv.*vision"):
        sg.check({"lora": {"targets": ["qv"]}}, "vision")


def test_the_knobs_build_what_they_say():
    import peftlab as pl
    model, tok = tiny_text_model()
    spec = sg.spec_for("text", "lora", {"lr": 1e-3, "r": 4, "alpha": "2r", "rslora": True,
                                        "targets": "qv"})
    spec.build(model, {**cm.CTX["text"], "tokenizer": tok})
    cfg = pl.core.get_config(model)
    assert (cfg.r, cfg.alpha, cfg.rslora, cfg.targets) == (4, 8.0, True, ["query", "value"])
    assert cfg.scale == pytest.approx(8 / math.sqrt(4)) and spec.budget.lr == 1e-3
    assert sg.row_point("text", "lora_qv") == ("lora", {"lr": 3e-3, "r": 8, "alpha": "2r",
                                                        "rslora": False, "targets": "qv"})


def test_default_grid_plan_fits_about_90_minutes_and_dry_run_prints_it(capsys):
    p = sweep.plan()
    assert p.screen == len(sg.points(p.grid)) and 60 * 60 <= p.seconds <= 100 * 60
    lora = p.grid["lora"]
    assert lora["r"] == [1, 2, 4, 8, 16, 32] and lora["alpha"] == ["r", "2r", 16]
    assert lora["rslora"] == [False, True] and lora["targets"] == ["qv", "all"]
    assert all("lr" in knobs for knobs in p.grid.values())
    assert cli.main(["sweep", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{p.screen + p.confirm} trials" in out and "min on 2 CPU cores" in out


@pytest.mark.parametrize("argv, option, words", [
    (["--grid", "nope:lr=1e-3"], "--grid", "unknown method 'nope'"),
    (["--grid", "lora:depth=2"], "--grid", "unknown knob 'depth'"),
    (["--grid", "lora"], "--grid", "METHOD:KNOB="),
    (["--grid", "lora:r="], "--grid", "no values"),
    (["--methods", "bitfit"], "--methods", "not in the grid"),
    (["--top-k", "0"], "--top-k", "must be"),
])
def test_bad_input_exits_2_before_anything_runs(argv, option, words, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", *argv, "--out", str(tmp_path / "s")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and words in err
    assert not (tmp_path / "s").exists()


# --- running, storing, resuming ------------------------------------------------------------------

GRID = {"head": {"lr": [1e-2, 3e-2, 1e-1]}, "lora": {"r": [4, 8], "targets": ["qv", "all"]}}
KW = {"quick": True, "model_fn": tiny_text_model, "device": "cpu", "isolate": False,
      "confirm_seeds": 2, "top_k": 1}


class Stop(Exception):
    pass


def test_a_killed_sweep_resumes_without_rerunning_a_finished_trial(tmp_path, monkeypatch):
    ran = []
    train = sweep._train
    monkeypatch.setattr(sweep, "_train", lambda *a: ran.append((a[2], a[3], a[4])) or train(*a))

    def stop_after_3(rec):
        if len(ran) == 3:
            raise Stop("killed")

    out = tmp_path / "sw"
    with pytest.raises(Stop):
        sweep.run(GRID, out=out, on_trial=stop_after_3, **KW)
    first = [t["trial"] for t in sweep_store.read_trials(out)]
    assert len(first) == 3 and len(ran) == 3            # each stored the moment it finished
    ran.clear()
    res = sweep.run(GRID, out=out, **KW)
    rerun = {sg.trial_id(m, k, s) for m, k, s in ran}
    assert not rerun & set(first) and len(ran) == res.ran == 7 + 2 - 3
    trials = res.trials
    assert [t["stage"] for t in trials].count("confirm") == 2 and len(trials) == 9
    assert len({t["trial"] for t in trials}) == 9        # nothing twice
    assert sweep.run(GRID, out=out, **KW).ran == 0        # all done: nothing reruns
    for name in ("trials.jsonl", "summary.csv", "summary.json", "chosen.json",
                 "sweep_head.png", "sweep_lora.png"):
        assert (out / name).stat().st_size > 100, name
    head = res.chosen["head"]
    assert head["seeds"] == [0, 1] and head["test_accuracy"] is not None
    finalists = res.summary["finalists"]
    assert head["point"] == finalists["head"][0]
    assert "test_accuracy" not in (out / "summary.csv").read_text().splitlines()[0]
    assert "ties to the lower mean validation loss" in res.table()
    assert set(res.summary["rows"]) == {"head", "lora", "lora_qv"}
    assert res.summary["rows"]["lora_qv"]["point"].endswith("targets=qv")

    # a changed grid is refused, naming what changed and the ways out
    with pytest.raises(sweep_store.SweepStateError, match="grid.head.lr.*new --out.*--overwrite"):
        sweep.run({**GRID, "head": {"lr": [1e-2]}}, out=out, **KW)
    with pytest.raises(sweep_store.SweepStateError, match="top_k"):
        sweep.run(GRID, out=out, **{**KW, "top_k": 2})

    # compare reads the chosen rates and says which sweep chose them
    rep = compare.run(["head", "lora_qv"], quick=True, model_fn=tiny_text_model, isolate=False,
                      interleave=False, lrs_from=out)
    rows = {r["method"]: r for r in rep.rows}
    assert rows["head"]["lr"] == res.summary["rows"]["head"]["lr"]
    assert rep.settings["lr_source"]["sweep"] == out.as_posix()
    assert rep.settings["lr_source"]["rows"] == ["head", "lora_qv"]
    # ... and which rows it chose among several rates, and which had only one (not a choice)
    assert rep.settings["lr_source"]["candidates"] == {"head": 3, "lora_qv": 1}
    assert ("chosen on validation for head (best of 3); lora_qv: the grid's only rate "
            "(taken, not chosen)") in rep.table()
    # a --quick run states the budget it used (64 examples), not the task's (issue 31)
    assert rep.settings["budget"] == {"train_size": 64, "epochs": 1, "batch_size": 32}
    assert "data budget: every method 64 training examples" in rep.table()


def test_overwrite_starts_over_and_a_torn_line_is_dropped(tmp_path):
    out = tmp_path / "sw"
    grid = {"head": {"lr": [1e-2]}}
    sweep.run(grid, out=out, **{**KW, "confirm_seeds": 1})
    with open(out / "trials.jsonl", "ab") as f:
        f.write(b'{"trial": "half a li')                   # killed while writing
    assert len(sweep_store.read_trials(out)) == 1
    assert (out / "trials.jsonl").read_bytes().endswith(b"\n")
    res = sweep.run({"head": {"lr": [2e-2]}}, out=out, overwrite=True,
                    **{**KW, "confirm_seeds": 1})
    assert [t["knobs"]["lr"] for t in res.trials] == [2e-2]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(sweep_store.SweepStateError, match="holds no sweep.json"):
        sweep.run(grid, out=tmp_path / "other", **KW)


def test_a_trial_in_a_fresh_process_matches_one_in_this_process(tmp_path):
    grid = {"head": {"lr": [2e-2]}}
    kw = {**KW, "confirm_seeds": 1, "plot": False}
    here = sweep.run(grid, out=tmp_path / "a", **kw).trials[0]
    iso = sweep.run(grid, out=tmp_path / "b", **{**kw, "isolate": True}).trials[0]
    assert iso["status"] == "ok", iso["note"]
    assert (iso["val_accuracy"], iso["val_loss"], iso["test_accuracy"]) == \
        (here["val_accuracy"], here["val_loss"], here["test_accuracy"])


# --- the choice ------------------------------------------------------------------------------

def fake(point_lr, seed, acc, loss, test, stage="screen"):
    knobs = {"lr": point_lr}
    return {"trial": sg.trial_id("head", knobs, seed), "point": sg.point_id("head", knobs),
            "method": "head", "knobs": knobs, "seed": seed, "stage": stage, "status": "ok",
            "val_accuracy": acc, "val_loss": loss, "test_accuracy": test}


def test_the_choice_reads_validation_only_ties_by_loss_and_warns_at_the_edge():
    grid = {"head": {"lr": [1e-3, 1e-2, 1e-1]}}
    trials = [fake(1e-3, 0, 1.0, 0.12, 0.9), fake(1e-2, 0, 1.0, 0.10, 0.6),
              fake(1e-1, 0, 0.9, 0.05, 0.99)]
    assert sweep_report.choose(trials, grid, 0, 3)["head"]["knobs"]["lr"] == 1e-2  # tie: loss
    swapped = [dict(t, test_accuracy=1 - t["test_accuracy"]) for t in trials]
    assert sweep_report.choose(swapped, grid, 0, 3)["head"]["point"] == \
        sweep_report.choose(trials, grid, 0, 3)["head"]["point"]       # test is never read
    trials += [fake(1e-3, 1, 1.0, 0.02, 0.5, "confirm")]   # confirmed over 2 seeds: lower mean
    chosen = sweep_report.choose(trials, grid, 0, 2)
    assert chosen["head"]["knobs"]["lr"] == 1e-3 and chosen["head"]["seeds"] == [0, 1]
    warn = sweep_report.edge_warnings(grid, chosen)
    assert len(warn) == 1 and "lr=0.001 is the smallest" in warn[0] and "extend the grid" in warn[0]
    effects = sweep_report.knob_effects(trials, grid, 0)["head"][0]
    assert effects["knob"] == "lr" and effects["spread"] == pytest.approx(0.07)


def test_lrs_from_a_missing_or_foreign_file_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="not a sweep's chosen.json"):
        sweep_report.chosen_lrs(tmp_path / "nope.json", "text", ["head"])
    (tmp_path / "chosen.json").write_text(json.dumps({"task": "vision", "rows": {}}))
    with pytest.raises(ValueError, match="'vision' task, not 'text'"):
        sweep_report.chosen_lrs(tmp_path, "text", ["head"])
    assert sweep_report.chosen_lrs("spec", "text", ["head"])[0] == {}
    with pytest.raises(SystemExit):
        cli.main(["compare", "--lrs-from", str(tmp_path / "nope.json")])
    assert "argument --lrs-from" in capsys.readouterr().err


def test_cli_sweep_runs_resumes_and_refuses_a_changed_grid(tmp_path, capsys):
    """The command end to end on the embedded model (--quick, in this process): the plan and
    estimate before the first trial, the table, the files; the same command again resumes
    with nothing to do; another grid in the same --out stops with exit 2 naming the keys."""
    argv = ["sweep", "--quick", "--grid", "head:lr=1e-2,2e-2", "--confirm-seeds", "1",
            "--in-process", "--no-plot", "--no-progress", "--out", str(tmp_path / "s")]
    assert cli.main(argv) == 0
    cap = capsys.readouterr()
    assert "2 screening trials" in cap.err and "estimated" in cap.err
    assert "chosen settings" in cap.out and "head" in cap.out
    assert cli.main(argv) == 0 and "2 trial(s) already finished" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main([*argv[:2], "--grid", "head:lr=1e-2", *argv[4:]])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --out" in err and "grid.head.lr" in err
    assert "--overwrite" in err


def test_the_lr_line_says_chosen_only_where_the_sweep_had_a_choice():
    from peftlab.compare.report import Report
    from peftlab.compare.sweep_report import lr_line
    src = {"sweep": "sw", "rows": ["full", "lora"], "candidates": {"full": 5, "lora": 1}}
    assert lr_line(src, ["full", "lora", "head"]) == (
        "lr: from the sweep sw: chosen on validation for full (best of 5); lora: the grid's "
        "only rate (taken, not chosen); head: from spec.py")
    # no row from the sweep: said in words, not an empty "()"
    assert lr_line({**src, "rows": []}, ["prefix_2ep"]) == \
        "lr: the sweep sw has no rate for these rows; each from its spec.py"
    # the committed default report: LoRA's one rate is not called a choice, paths are relative
    rep = Report.load(Path(__file__).resolve().parents[1] / "notebooks/results/compare_default")
    line = rep.budget_lines()[1]
    assert "lora, lora_qv: the grid's only rate (taken, not chosen)" in line
    assert "full (best of 5)" in line and not rep.settings["lr_source"]["file"].startswith("/")


def test_the_chat_report_states_each_methods_rate_not_a_zero():
    """The chat report's budget line once printed the shared budget's placeholder 'lr': 0.0."""
    from peftlab.compare.report import Report
    rep = Report.load(Path(__file__).resolve().parents[1] / "notebooks/results/compare_chat")
    line = next(x for x in rep.table().splitlines() if x.startswith("data budget"))
    assert "'lr': 0.0" not in line and "lr: full 5e-05, lora 0.002" in line
    assert "train_size 480, epochs 1, batch_size 8" in line
