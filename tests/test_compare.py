"""`peftlab compare`: every landed method runs, the report is honest and reproducible, and
bad options stop with argparse's exit code 2 naming the option. Runs use --quick and a tiny
BERT (the embedded model only where the CLI itself is exercised)."""

from __future__ import annotations

import csv
import json
import statistics
import sys

import pytest
import timing
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

import peftlab as pl
from peftlab import cli, compare


def tiny_text_model():
    tok = AutoTokenizer.from_pretrained(str(pl.models.default_text_model_path()))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                     num_labels=2)
    return BertForSequenceClassification(cfg).eval(), tok


@pytest.fixture(scope="module")
def quick_report():
    return compare.run(None, quick=True, seed=0, model_fn=tiny_text_model, device="cpu",
                       isolate=False)


def test_every_text_method_runs_and_is_measured(quick_report):
    rows = {r["method"]: r for r in quick_report.rows}
    assert list(rows) == ["full", "head", "lora", "lora_qv", "prefix", "prompt", "selection",
                          "adalora"]
    for name, r in rows.items():
        assert r["status"] == "ok", (name, r.get("traceback"))
        assert 0 < r["trainable"] <= r["total"] and 0 <= r["test_accuracy"] <= 1
        assert r["step_time_s"] > 0 and r["adapter_bytes"] > 0
        assert r["training_state_bytes"] == (r["weights_bytes"] + r["gradients_bytes"]
                                             + r["optimizer_bytes"] + r["activations_bytes"])
        assert r["measured_peak_bytes"] is not None and r["measured_peak_bytes"] >= 0
        assert "lower bound" in r["measured_kind"]      # in one process, said so
        assert r["test_accuracy_std"] is None and r["seeds"] == "0"   # one seed: no std
    full = rows["full"]
    assert full["step_time_ratio"] == 1.0 and full["state_ratio"] == 1.0
    assert full["trainable"] == full["total"] and full["trainable_pct"] == 100.0
    for name in ("head", "lora", "lora_qv", "prefix", "prompt", "selection", "adalora"):
        assert rows[name]["trainable"] < full["trainable"] / 20
        assert rows[name]["state_ratio"] < 1           # no gradients / Adam state for the base
        assert rows[name]["adapter_bytes"] < full["adapter_bytes"] / 5
    assert rows["head"]["trainable"] == 32 * 2 + 2      # the classifier of the tiny model
    # placement, r=8, r * (in + out) per matrix: all-linear (q, k, v, attention output,
    # intermediate, output in each of 2 layers, and the tiny BERT's pooler) vs query, value
    per_layer = 4 * 8 * (32 + 32) + 2 * 8 * (32 + 64)
    assert rows["lora"]["trainable"] == 2 * per_layer + 8 * (32 + 32) + 66
    assert rows["lora_qv"]["trainable"] == 2 * 2 * 8 * (32 + 32) + 66
    # AdaLoRA at LoRA's final budget: rank 12 -> 8 on the same matrices
    assert rows["adalora"]["description"].startswith("SVD adapters on all linear layers")
    assert rows["lora"]["infer_merged_s"] is not None   # LoRA can merge
    assert rows["full"]["infer_merged_s"] is None
    assert rows["selection"]["setup_s"] > rows["head"]["setup_s"]     # Fisher scoring


EXTRA = ("dora", "vera", "qlora", "bottleneck", "bottleneck_parallel", "ia3")


def test_the_rows_on_request_run_and_are_measured(quick_report):
    """DoRA, VeRA, QLoRA, the bottleneck adapters and IA3 are text rows run only on request
    (--methods NAME or all): the default run is unchanged, "all" adds them, and each trains
    and is measured like the rest."""
    assert compare.runner.selected(None, "text") == compare.methods.defaults("text")
    assert compare.runner.selected(["all"], "text") == compare.available("text")
    assert set(compare.available("text")) - set(compare.methods.defaults("text")) == \
        {*EXTRA, "prefix_2ep"}            # prefix_2ep: the labelled "prefix, 2 epochs" row
    rep = compare.run(["lora", *EXTRA], quick=True, seed=0, model_fn=tiny_text_model,
                      device="cpu", isolate=False, interleave=False)
    rows = {r["method"]: r for r in rep.rows}
    for name in EXTRA:
        r = rows[name]
        assert r["status"] == "ok", (name, r.get("traceback"))
        assert 0 < r["trainable"] < r["total"] / 5 and 0 <= r["test_accuracy"] <= 1
        assert r["lr"] == compare.TEXT_METHODS[name].budget.lr
        assert r["train_size"] == rows["lora"]["train_size"]     # one data budget
    assert rows["dora"]["trainable"] > rows["lora"]["trainable"]  # + a magnitude per output
    assert rows["qlora"]["trainable"] == rows["lora"]["trainable"]   # the same A, B and head
    # the same seed gives LoRA the same numbers whatever else runs beside it
    assert rows["lora"]["test_accuracy"] == {r["method"]: r for r in quick_report.rows}[
        "lora"]["test_accuracy"]


def test_same_seed_same_accuracies(quick_report):
    again = compare.run(None, quick=True, seed=0, model_fn=tiny_text_model, device="cpu")
    for a, b in zip(quick_report.rows, again.rows):
        assert (a["method"], a["test_accuracy"], a["final_train_loss"]) == \
               (b["method"], b["test_accuracy"], b["final_train_loss"])


def test_per_category_accuracy_adds_up_to_test_accuracy(quick_report):
    cats = ["plain", "negation", "contrast", "expectation reversal",
            "negation (held-out template)", "contrast (held-out template)",
            "expectation reversal (held-out template)"]
    assert compare.report.category_order(quick_report.rows) == cats
    for r in quick_report.rows:
        n, acc = r["category_n"], r["category_accuracy"]
        assert set(n) == set(cats) and sum(n.values()) == 128          # the quick test subset
        weighted = sum(acc[c] * n[c] for c in cats) / sum(n.values())
        assert weighted == pytest.approx(r["test_accuracy"], abs=1e-12)
    assert compare.runner.by_category([1, 0, 1, 1], [1, 1, 1, 0], ["a", "a", "b", "b"]) == \
        {"a": (0.5, 2), "b": (0.5, 2)}


def test_seeds_give_mean_and_sample_std():
    kw = {"quick": True, "model_fn": tiny_text_model, "device": "cpu", "isolate": False}
    rep = compare.run(["head"], seeds=3, seed=4, **kw)
    row = rep.rows[0]
    singles = [compare.run(["head"], seed=s, **kw).rows[0]["test_accuracy"] for s in (4, 5, 6)]
    assert row["seeds"] == "4;5;6" and rep.settings["seeds"] == [4, 5, 6]
    assert row["test_accuracy_runs"] == ";".join(f"{a:.4f}" for a in singles)
    assert row["test_accuracy"] == pytest.approx(statistics.fmean(singles))
    assert row["test_accuracy_std"] == pytest.approx(statistics.stdev(singles))
    with pytest.raises(ValueError, match="seeds"):
        compare.run(["head"], seeds=0, **kw)


def test_isolated_run_matches_in_process_and_measures_its_own_peak():
    """Each method in a fresh process: the same numbers as in this process (same seed), and a
    measured peak above the model-loaded baseline, not a lower bound."""
    kw = {"quick": True, "model_fn": tiny_text_model, "device": "cpu", "seed": 0}
    iso = compare.run(["full", "lora"], isolate=True, **kw)
    here = compare.run(["full", "lora"], isolate=False, **kw)
    for a, b in zip(iso.rows, here.rows):
        assert a["status"] == "ok", a.get("traceback")
        assert (a["test_accuracy"], a["final_train_loss"]) == (b["test_accuracy"],
                                                               b["final_train_loss"])
        assert a["training_state_bytes"] == b["training_state_bytes"]
        assert a["measured_peak_bytes"] > 0 and "lower bound" not in a["measured_kind"]
    full, lora = iso.rows
    # full fine-tuning makes gradients and Adam state for ~1M parameters resident (12 MB);
    # both peaks also hold what the first training step loads once (kernels, buffers)
    extra = full["measured_peak_bytes"] - lora["measured_peak_bytes"]
    assert extra > 0.5 * (full["gradients_bytes"] + full["optimizer_bytes"])
    assert iso.settings["isolate"] is True


def test_worker_uses_the_callers_dataset_not_the_fork_servers(tmp_path, monkeypatch):
    """The fork server is started once per process and keeps the environment of that moment
    (e.g. an earlier `peftlab compare --data my.csv` in the same session): each worker is
    told the caller's $PEFTLAB_DATASET explicitly. Regression: CI ran test_cli's 3-label
    compare first and then every isolated run here failed on 3 labels vs a 2-output head."""
    from peftlab.compare import runner
    from peftlab.data.load import DATASET_ENV
    csv_path = tmp_path / "topics.csv"
    csv_path.write_text("text,label\n" + "".join(f"item {i},{('food', 'sport', 'tech')[i % 3]}\n"
                                                  for i in range(60)))
    monkeypatch.setenv(DATASET_ENV, json.dumps({"name": str(csv_path)}))   # the stale env
    monkeypatch.setenv("PEFTLAB_CPU_BF16", "1")                            # stale as well
    row = runner._run_isolated("text", "head", 0, "cpu", None, True, False, tiny_text_model,
                               1, {"PEFTLAB_CPU_BF16": "0"})              # the caller's env
    assert row["status"] == "ok" and "categories" in row and row["test_accuracy"] >= 0
    assert DATASET_ENV not in __import__("os").environ
    assert __import__("os").environ["PEFTLAB_CPU_BF16"] == "0"


def test_interleaved_timing_survives_a_busy_burst(monkeypatch):
    """A busy-loop thread runs while head-only trains (as a notebook kernel or a browser
    would): head's steps measured during training get slower than full fine-tuning's, yet
    the reported step times, taken round robin after training, still rank head below full."""
    import threading

    from peftlab.compare import methods as cm
    from peftlab.compare import runner
    stop = threading.Event()

    def busy():
        x = 0
        while not stop.is_set():
            x += 1

    head = cm.TEXT_METHODS["head"]

    def build_with_burst(model, ctx):
        for _ in range(3):
            threading.Thread(target=busy, daemon=True).start()
        head.build(model, ctx)

    monkeypatch.setitem(cm.TEXT_METHODS, "head", cm.MethodSpec(
        "head", head.module, head.description, head.budget, build_with_burst))
    timed = runner.interleaved_step_times

    def timing_after_the_burst(*a, **kw):
        stop.set()
        return timed(*a, **{**kw, "rounds": 5, "steps_per_turn": 3})

    monkeypatch.setattr(runner, "interleaved_step_times", timing_after_the_burst)
    try:
        rep = compare.run(["full", "head"], quick=True, seed=0, model_fn=tiny_text_model,
                          device="cpu", isolate=False, epochs=4)
    finally:
        stop.set()
    full, head_row = rep.rows
    assert full["status"] == head_row["status"] == "ok"
    # the budget the report states is the one the run used (--epochs and --quick applied)
    assert rep.settings["budget"]["epochs"] == full["epochs"] == 4
    assert rep.settings["budget"]["train_size"] == 64 and "64 training examples, 4 epoch(s)" in rep.table()
    # the test of the test: timed during training, the burst inflated head's ratio to full
    during_training = head_row["train_step_time_s"] / full["train_step_time_s"]
    assert head_row["step_time_ratio"] < during_training
    assert head_row["step_time_ratio"] < 1 and head_row["step_time_s"] < full["step_time_s"]
    assert rep.settings["timing"].startswith("interleaved")
    assert all(r["step_time_spread"] >= 0 for r in rep.rows)


def test_busy_warning_in_the_table(quick_report):
    import copy
    rep = copy.deepcopy(quick_report)
    for r in rep.rows:
        r["step_time_spread"] = 0.1
    assert not any(line.startswith("WARNING") for line in rep.timing_lines())
    rep.rows[1]["step_time_spread"] = 0.9
    line = rep.timing_lines()[-1]
    assert line.startswith("WARNING") and rep.rows[1]["method"] in line and "90%" in line


def test_precision_is_recorded_and_falls_back_without_bf16(monkeypatch):
    monkeypatch.setenv("PEFTLAB_CPU_BF16", "0")
    with pytest.warns(UserWarning, match="no bf16 instructions"):
        rep = compare.run(["lora"], quick=True, seed=0, model_fn=tiny_text_model,
                          device="cpu", isolate=False, precision="bf16")
    assert rep.settings["precision"] == "fp32" and rep.settings["precision_requested"] == "bf16"
    assert rep.settings["cpu_bf16"]["supported"] is False and rep.rows[0]["precision"] == "fp32"
    assert "precision fp32" in rep.table() and "bf16 instructions no" in rep.table()
    monkeypatch.setenv("PEFTLAB_CPU_BF16", "1")         # as on a CPU with AMX / AVX512-BF16
    rep = compare.run(["lora"], quick=True, seed=0, model_fn=tiny_text_model, device="cpu",
                      isolate=False, precision="bf16", interleave=False)
    assert rep.rows[0]["precision"] == "bf16" and rep.settings["precision"] == "bf16"
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        compare.run(["lora"], quick=True, model_fn=tiny_text_model, device="cpu",
                    precision="fp16")


def test_report_files(quick_report, tmp_path):
    paths = quick_report.write(tmp_path)
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == [r["method"] for r in quick_report.rows]
    assert {"method", "test_accuracy", "test_accuracy_std", "trainable", "step_time_ratio",
            "training_state_bytes", "state_ratio", "measured_peak_bytes", "measured_ratio",
            "setup_s", "adapter_bytes", "acc[negation]",
            "acc[negation (held-out template)]"} <= set(rows[0])
    assert float(rows[0]["test_accuracy"]) == quick_report.rows[0]["test_accuracy"]
    assert float(rows[0]["acc[negation]"]) == \
        quick_report.rows[0]["category_accuracy"]["negation"]
    assert json.loads(paths["json"].read_text())["rows"][2]["method"] == "lora"
    assert paths["png"].stat().st_size > 10_000
    assert paths["categories_png"].stat().st_size > 5_000
    assert compare.Report.load(tmp_path).rows[1]["trainable"] == quick_report.rows[1]["trainable"]
    table = quick_report.table()
    assert "lora_qv" in table and "x full" in table and "test acc" in table
    assert "negation*" in table and "± std" in table and "setup s" in table


def test_missing_and_failing_methods_are_reported_not_faked(monkeypatch):
    def broken(model, ctx):
        raise RuntimeError("boom")
    specs = dict(compare.TEXT_METHODS)
    budget = compare.TrainBudget(**compare.methods.budget_of("text"), lr=1e-3)   # the task's
    specs["lora"] = compare.MethodSpec("lora", "peftlab.no_such_module", "-", budget, broken)
    specs["head"] = compare.MethodSpec("head", "peftlab.full", "-", budget, broken)
    monkeypatch.setitem(compare.METHODS, "text", specs)
    rep = compare.run(["head", "lora"], quick=True, model_fn=tiny_text_model, isolate=False)
    head, lora = rep.rows
    assert head["status"] == "failed" and "boom" in head["note"]
    assert lora["status"] == "missing" and "no_such_module" in lora["note"]
    assert "FAILED" in rep.table() and "MISSING" in rep.table()


def test_vision_task_quick():
    rep = compare.run(None, task="vision", quick=True, device="cpu", isolate=False)
    assert [r["method"] for r in rep.rows] == ["full", "head", "lora", "selection"]
    assert all(r["status"] == "ok" for r in rep.rows), [r.get("note") for r in rep.rows]
    rows = {r["method"]: r for r in rep.rows}
    assert rows["head"]["trainable"] < rows["lora"]["trainable"] < rows["full"]["trainable"]


def test_cli_quick_run_writes_the_report(tmp_path, capsys):
    code = cli.main(["compare", "--quick", "--methods", "head,lora", "--seed", "1",
                     "--seeds", "2", "--in-process", "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0 and "head" in out and "lora" in out and "negation*" in out
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"report.csv", "report.json",
                                                            "compare.png", "categories.png"}
    settings = json.loads((tmp_path / "r" / "report.json").read_text())["settings"]
    assert settings["seed"] == 1 and settings["seeds"] == [1, 2] and settings["quick"] is True
    assert settings["isolate"] is False


@pytest.mark.parametrize("argv, option", [
    (["--methods", "full,lorax"], "--methods"),
    (["--task", "vision", "--methods", "prefix"], "--methods"),
    (["--epochs", "-1"], "--epochs"),
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "two"], "--epochs"),
    (["--device", "tpu"], "--device"),
    (["--seed", "-3"], "--seed"),
    (["--seeds", "0"], "--seeds"),
    (["--seeds", "two"], "--seeds"),
    (["--task", "audio"], "--task"),
    (["--precision", "fp16", "--device", "cpu"], "--precision"),
    (["--precision", "fp8"], "--precision"),
])
def test_bad_options_exit_2_naming_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["compare", *argv])
    assert e.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    proc = timing.run([sys.executable, "-m", "peftlab", "compare", "--epochs", "-1"],
                      "`python -m peftlab compare` (start-up and a usage error)", 120,
                      capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "argument --epochs: must be > 0" in proc.stderr
    with pytest.raises(ValueError, match="Unknown method"):
        compare.run(["full", "nope"])


def test_predict_by_length_keeps_the_split_order():
    """Test predictions are computed in order of token length (less padding) and handed back
    in the split's own order, so per-category accuracy lines up with the test file."""
    from peftlab.compare import methods, runner
    task = methods.text_task(0, quick=True, model_fn=tiny_text_model)
    model = task.make_model()
    by_len, order = runner.by_length(task, task.test)
    lengths = task.test.token_lengths(task.tokenizer)
    assert sorted(order) == list(range(len(task.test)))
    assert [lengths[i] for i in order] == sorted(lengths) and lengths != sorted(lengths)
    preds, labels, loss = runner.predict_by_length(model, task, task.test, 0)
    want_p, want_y, want_loss = runner.predict(model, task.loader(task.test, 64, False, 0))
    assert labels == want_y == task.test.labels
    assert preds == want_p
    assert abs(loss - want_loss) < 1e-5


def test_the_fork_server_preload_starts_no_threads(tmp_path):
    """compare's fork server imports every method package once and forks each run from it. A
    module that runs a large torch op at import starts the OpenMP pool there, and every forked
    run then deadlocks in its first parallel op (it hung CI for 90 minutes: the NF4 lookup
    table was built at import). Importing the preload list must add no thread to torch's own."""
    from peftlab.compare import runner
    # third-party imports first (numpy's and scipy's OpenBLAS start their own servers, which
    # survive a fork), then the peftlab modules: those must add nothing
    ours = [m for m in runner.preload() if m.startswith("peftlab")]
    theirs = [m for m in runner.preload() if not m.startswith("peftlab")]
    code = ("import os, sys, importlib\n"
            "import torch\n"
            f"for m in {theirs!r}:\n"
            "    importlib.import_module(m)\n"
            "base = len(os.listdir('/proc/self/task'))\n"
            "for m in sys.argv[1:]:\n"
            "    importlib.import_module(m)\n"
            "print(base, len(os.listdir('/proc/self/task')))\n")
    proc = timing.run([sys.executable, "-c", code, *ours], "importing the preload",
                      300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    base, after = map(int, proc.stdout.split())
    assert after == base, (f"importing {ours} started {after - base} thread(s): a "
                           "module computes with torch at import; build it lazily")
