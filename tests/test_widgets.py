"""Widgets without a browser: set controls programmatically, check numbers and pictures move."""

from __future__ import annotations

import copy
import itertools
import math
import re

import pytest
import torch
from torch import nn

import peftlab as pl
from peftlab import widgets

WORDS = ["the", "a", "film", "was", "good", "bad", "plot", "great", "movie", "terrible", "acted", "fine", "dull"]


def _batches(n=4, vocab=100, B=8, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(5, vocab, (B, T), generator=g),
             "attention_mask": torch.ones(B, T, dtype=torch.long),
             "labels": torch.randint(0, 2, (B,), generator=g)} for _ in range(n)]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def tiny_tokenizer():
    from transformers import BertTokenizer
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})


def test_package_exports_the_widgets():
    assert set(widgets.__all__) == {"ModelInspector", "TrainingMonitor", "LoraExplorer",
                                    "SelectionExplorer", "RankAllocationViewer", "PrefixViewer",
                                    "TradeoffExplorer", "ServeMonitor", "FitExplorer",
                                    "TokenProbs", "SweepExplorer"}
    for name in widgets.__all__:
        assert getattr(widgets, name).__name__ == name
    with pytest.raises(AttributeError, match="ModelInspector"):
        widgets.Nope  # noqa: B018


# --- ModelInspector -----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["lora", "bitfit", "plain"])
def test_inspector_totals_equal_trainable_report(tiny_bert, method):
    if method == "lora":
        pl.lora.apply(tiny_bert, pl.lora.LoraConfig(r=4, targets=["query", "value"]))
    elif method == "bitfit":
        pl.full.apply(tiny_bert, pl.full.FullConfig(mode="bitfit"))
    insp = widgets.ModelInspector(tiny_bert)
    rep = pl.trainable_report(tiny_bert)
    assert (insp.trainable, insp.total) == (rep.trainable, rep.total)
    assert f"{rep.trainable:,}" in insp.totals_html.value
    assert insp.summary().startswith("BertForSequenceClassification")
    # invariant: the children of the root add up to the root (no parameters on the root itself)
    rows = insp.rows(depth=1)
    assert rows[0].params == sum(r.params for r in rows[1:]) == rep.total
    assert rows[0].bytes == sum(p.numel() * 4 for p in tiny_bert.parameters()) + \
        sum(b.numel() * b.element_size() for b in tiny_bert.buffers())


def test_inspector_counts_tied_weights_once(tiny_gpt2):
    insp = widgets.ModelInspector(tiny_gpt2)
    rep = pl.trainable_report(tiny_gpt2)
    assert insp.total == rep.total < sum(p.numel() for n, p in tiny_gpt2.named_parameters(
        remove_duplicate=False))


def test_inspector_controls_filter_depth_and_adapters(tiny_bert):
    pl.lora.apply(tiny_bert, pl.lora.LoraConfig(r=4, targets=["query"]))
    insp = widgets.ModelInspector(tiny_bert)
    insp.depth.value = 1
    shallow, html1 = len(insp.rows()), insp.table_html.value
    insp.depth.value = insp.depth.max
    assert len(insp.rows()) == len(list(tiny_bert.named_modules())) > shallow
    assert insp.table_html.value != html1
    insp.filter.value = "QUERY"                      # case-insensitive, any depth
    names = [r.name for r in insp.rows()]
    assert names and all("query" in n for n in names)
    wrapper = [r for r in insp.rows() if r.name.endswith("attention.self.query")]
    assert len(wrapper) == 2 and all(r.adapter == "lora" and r.status == "partial"
                                     for r in wrapper)
    assert all(r.adapter == "lora" for r in insp.rows() if ".lora_" in r.name)
    insp.filter.value = ""
    insp.trainable_only.value = True
    assert all(r.trainable for r in insp.rows())
    assert "lora" in insp.totals_html.value


def test_inspector_refresh_sees_changes_and_devices(tiny_mlp):
    insp = widgets.ModelInspector(tiny_mlp)
    assert insp.trainable == insp.total == 8 * 16 + 16 + 16 * 3 + 3
    tiny_mlp[0].weight.requires_grad_(False)
    insp.refresh()
    assert insp.trainable == insp.total - 8 * 16
    assert "cpu" in insp.device.options and insp.device.value == "cpu"
    insp.to("cpu")
    if torch.cuda.is_available():       # the device selector moves the model and shows memory
        insp.to("cuda")
        assert next(tiny_mlp.parameters()).is_cuda and insp.rows()[0].device == "cuda:0"
        assert insp.cuda_memory()["allocated"] > 0 and "CUDA memory" in insp.memory_html.value
        insp.to("cpu")
    else:
        assert insp.cuda_memory() is None and insp.memory_html.value == ""
        assert insp.live.disabled and insp.device.disabled   # nothing to switch to
    assert insp.rows()[0].device == "cpu"
    insp.live.value = True           # the live-memory thread starts, and stops when unticked
    assert not insp._live_stop.is_set()
    insp.live.value = False
    assert insp._live_stop.is_set()


def test_inspector_rejects_non_module_and_displays():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        widgets.ModelInspector("bert")
    insp = widgets.ModelInspector(nn.Linear(2, 2))
    bundle = insp._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


# --- TrainingMonitor ----------------------------------------------------------------------

def test_monitor_receives_every_step_of_fit(tiny_bert):
    pl.lora.apply(tiny_bert, pl.lora.LoraConfig(r=4, targets=["query", "value"]))
    mon = widgets.TrainingMonitor()
    empty = mon.image.value
    data = _batches(4)
    res = pl.train.fit(tiny_bert, data, data[:2], epochs=2, progress=False, callbacks=[mon])
    mon.wait()                                   # the final picture is drawn in a thread
    assert mon.steps == [h["step"] for h in res.history] == list(range(1, 9))
    assert mon.losses == [h["loss"] for h in res.history]
    assert mon.step_times == [h["time"] for h in res.history]
    assert [e["step"] for e in mon.evals] == [4, 8]
    assert mon.evals[-1]["accuracy"] == res.final["accuracy"]
    # lora_A and lora_B of one wrapped module form one layer; the head is its own layer
    lora_names = list(pl.lora.lora_layers(tiny_bert))
    assert mon.layers == lora_names + ["classifier"]
    assert len(mon.grad_norms) == len(mon.update_norms) == 8         # auto: every step
    assert all(len(g) == len(mon.layers) for g in mon.grad_norms)
    assert mon.draws >= 1 and mon.image.value != empty
    assert "step 8/8" in mon.status.value and mon.overhead > 0


def test_monitor_norms_match_autograd_and_sgd_updates(tiny_mlp):
    """Plain SGD: the update of a layer is exactly lr * its gradient, so u_l = lr * g_l."""
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    data = [(x, y)] * 3
    grads = []
    probe = type("Probe", (), {"on_step_end": lambda self, s: grads.append(
        [torch.cat([p.grad.flatten() for p in m.parameters()]).norm().item()
         for m in (s.model[0], s.model[2])])})()
    mon = widgets.TrainingMonitor(min_interval=1e9)
    pl.train.fit(tiny_mlp, data, progress=False, max_grad_norm=None, lr=0.1, schedule="constant",
                 warmup=0, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1),
                 callbacks=[probe, mon])
    mon.wait()
    assert mon.layers == ["0", "2"] and mon.norm_steps == [1, 2, 3]
    flat = [g for row in grads for g in row]
    assert [g for row in mon.grad_norms for g in row] == pytest.approx(flat, rel=1e-5)
    assert [u for row in mon.update_norms for u in row] == pytest.approx(
        [0.1 * g for g in flat], rel=1e-4)
    assert mon.draws == 1          # min_interval=1e9: only the final redraw


def test_monitor_does_not_change_training(tiny_mlp):
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 8, generator=g), torch.randint(0, 3, (8,), generator=g))] * 4
    twin = copy.deepcopy(tiny_mlp)
    mon = widgets.TrainingMonitor(min_interval=1e9)
    with_mon = pl.train.fit(tiny_mlp, data, progress=False, callbacks=[mon])
    without = pl.train.fit(twin, data, progress=False)
    assert [h["loss"] for h in with_mon.history] == [h["loss"] for h in without.history]
    assert _same(_state(tiny_mlp), _state(twin))


def test_monitor_norm_every_and_throttle(tiny_mlp):
    import time
    x, y = torch.randn(8, 8), torch.randint(0, 3, (8,))
    slow = type("Slow", (), {"on_step_end": lambda self, s: time.sleep(0.1)})()
    mon = widgets.TrainingMonitor(min_interval=0, budget=0.5, norm_every=3)
    t0 = time.perf_counter()
    pl.train.fit(tiny_mlp, [(x, y)] * 7, progress=False, callbacks=[slow, mon])
    elapsed = time.perf_counter() - t0
    mon.wait()
    assert mon.norm_steps == [3, 6]
    assert all(math.isfinite(v) and v > 0 for row in mon.update_norms for v in row)
    # drawing during training stays within its budget (one draw of slack for the estimate)
    per_draw = mon.draw_time / mon.draws
    assert mon.draws >= 1 and mon.draw_time - per_draw <= 0.5 * elapsed + per_draw
    # the throttle rule itself: draw when max(min_interval, cost / budget) has passed
    mon.draws, mon.draw_time = 1, 0.01                       # cost 0.01 s -> interval 0.02 s
    mon._last_draw = time.perf_counter() - 1.0
    mon._maybe_draw()
    assert mon.draws == 2
    mon.draws, mon.draw_time = 1, 10.0                       # cost 10 s -> interval 20 s
    mon._last_draw = time.perf_counter() - 1.0
    mon._maybe_draw()
    assert mon.draws == 1
    fig = mon.figure()
    assert len(fig.axes) >= 4
    for bad in ({"budget": 0}, {"min_interval": -1}, {"norm_every": 0}):
        with pytest.raises(ValueError):
            widgets.TrainingMonitor(**bad)


# --- LoraExplorer -------------------------------------------------------------------------

def test_lora_explorer_counts_match_apply_without_changing_model(tiny_bert):
    before = _state(tiny_bert)
    ex = widgets.LoraExplorer(tiny_bert)
    assert ex.mode == "plan" and ex.targets.value == ("query", "value")
    img = ex.image.value
    ex.r.value, ex.alpha.value = 6, 12
    ex.targets.value = ("query", "key", "dense")
    assert ex.image.value != img and ex.scale == 2.0
    assert _same(before, _state(tiny_bert)) and pl.core.get_method(tiny_bert) is None
    applied = pl.lora.apply(copy.deepcopy(tiny_bert), ex.config())
    rep = pl.trainable_report(applied)
    assert (ex.trainable, ex.base_total + ex.added) == (rep.trainable, rep.total)
    assert ex.fraction == pytest.approx(rep.fraction)
    assert sum(ex.per_target.values()) == ex.added
    ex.rslora.value = True
    assert ex.scale == pytest.approx(12 / math.sqrt(6))
    ex.targets.value = ()
    assert ex.error and "needs at least one target" in ex.summary()


def test_lora_explorer_spectrum_equals_svd(tiny_bert):
    pl.lora.apply(tiny_bert, pl.lora.LoraConfig(r=4, alpha=8, targets=["query", "value"]))
    untrained = widgets.LoraExplorer(tiny_bert)
    assert "train the adapter first" in untrained.summary()
    assert all(math.isnan(v) for v in untrained.energy_kept().values())
    torch.manual_seed(1)
    for layer in pl.lora.lora_layers(tiny_bert).values():
        nn.init.normal_(layer.lora_B.weight)
    ex = widgets.LoraExplorer(tiny_bert)
    img = ex.image.value
    assert ex.keep.value == 2         # default: half the rank
    ex.keep.value = 1
    assert ex.image.value != img
    ex.keep.value = 2
    for name, layer in pl.lora.lora_layers(tiny_bert).items():
        with torch.no_grad():
            s = torch.linalg.svdvals(layer.lora_B.weight @ layer.lora_A.weight * layer.scale)
        assert ex.energy_kept()[name] == pytest.approx(float((s[:2] ** 2).sum() / (s ** 2).sum()),
                                                       rel=1e-4)
    assert all(v == pytest.approx(1.0) for v in ex.energy_kept(4).values())
    assert all(1 <= k <= 4 for k in ex.effective_rank().values())
    with pytest.raises(ValueError, match="carries 'full'"):
        widgets.LoraExplorer(pl.full.apply(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))))


# --- SelectionExplorer --------------------------------------------------------------------

def test_selection_explorer_budget_and_granularity(tiny_bert):
    before = _state(tiny_bert)
    flags = [p.requires_grad for p in tiny_bert.parameters()]
    ex = widgets.SelectionExplorer(tiny_bert, batches=_batches(2), kind="grad", fraction=0.01)
    assert _same(before, _state(tiny_bert))
    assert flags == [p.requires_grad for p in tiny_bert.parameters()]
    assert ex.selected == round(0.01 * ex.total)
    img, per_layer = ex.image.value, dict(ex.per_layer)
    ex.budget.value = 0.1
    assert ex.selected == round(0.1 * ex.total) and ex.image.value != img
    assert sum(ex.per_layer.values()) == ex.selected
    direct = pl.selection.make_masks(ex.scores, fraction=0.1, granularity="global")
    assert all(torch.equal(direct[n], ex.masks[n]) for n in direct)
    ex.granularity.value = "row"
    assert ex.selected == round(0.1 * ex.total) and ex.per_layer != per_layer
    ex.granularity.value = "tensor"
    assert ex.selected <= round(0.1 * ex.total)
    mods, blocks, arr = ex.grid()
    assert blocks == [0, 1] and arr.shape == (len(mods), 2) and "attention.self.query" in mods


def test_selection_explorer_from_scores_and_errors(tiny_bert):
    scores = pl.selection.compute_scores(tiny_bert, _batches(1), kind="grad")
    ex = widgets.SelectionExplorer(tiny_bert, scores, granularity="row", fraction=0.02)
    assert ex.kind.disabled and "row selection" in ex.summary()
    with pytest.raises(ValueError, match="scores .* or batches"):
        widgets.SelectionExplorer(tiny_bert)
    with pytest.raises(ValueError, match="granularity"):
        widgets.SelectionExplorer(tiny_bert, scores, granularity="block")


# --- RankAllocationViewer -----------------------------------------------------------------

def test_rank_viewer_from_history_dict():
    hist = {"steps": [0, 1, 2, 3], "budget": [8, 6, 5, 4],
            "ranks": {"enc.layer.0.q": [4, 3, 3, 2], "enc.layer.1.q": [4, 3, 2, 2]}}
    v = widgets.RankAllocationViewer(hist)
    assert v.step.value == 3 and v.ranks_at(3) == {"enc.layer.0.q": 2, "enc.layer.1.q": 2}
    assert v.kept == [8, 6, 5, 4]
    img = v.image.value
    v.step.value = 1
    assert "budget 6" in v.summary() and v.image.value != img
    _, blocks, arr = v.grid(1)
    assert blocks == [0, 1] and arr.tolist() == [[3, 3]]
    with pytest.raises(ValueError, match="steps"):
        widgets.RankAllocationViewer({"ranks": {}})
    with pytest.raises(ValueError, match="differ in length"):
        widgets.RankAllocationViewer({**hist, "budget": [1]})
    with pytest.raises(ValueError, match="AdaLoRA"):
        widgets.RankAllocationViewer(nn.Linear(2, 2))


def test_rank_viewer_follows_adalora_training(tiny_bert):
    pl.adalora.apply(tiny_bert, pl.adalora.AdaLoraConfig(
        init_r=6, target_r=2, targets=["query", "value"], total_steps=12, tinit=2, tfinal=3))
    v = widgets.RankAllocationViewer(tiny_bert)
    assert v.steps == [] and "no steps" in v.summary()
    pl.train.fit(tiny_bert, _batches(4), epochs=3, progress=False, callbacks=[v])
    hist = pl.adalora.history(tiny_bert)
    assert v.steps == hist["steps"] and len(v.steps) == 12
    assert v.ranks_at(v.steps[-1]) == pl.adalora.rank_pattern(tiny_bert)
    assert v.kept[-1] == v.budget[-1] == 2 * 4
    v.step.value = v.steps[0]
    assert set(v.ranks_at(v.steps[0]).values()) == {6}


# --- PrefixViewer -------------------------------------------------------------------------

@pytest.mark.parametrize("config", [pl.prefix.PrefixConfig(num_virtual_tokens=5),
                                    pl.prompt.PromptConfig(num_virtual_tokens=5, init="normal")])
def test_prefix_viewer_matches_attention_to_prefix(tiny_bert, tiny_tokenizer, config):
    getattr(pl, config.method).apply(tiny_bert, config)     # pl.prefix or pl.prompt
    v = widgets.PrefixViewer(tiny_bert, tiny_tokenizer, text="the film was great")
    ref = pl.prefix.attention_to_prefix(tiny_bert, tiny_tokenizer, "the film was great")
    assert v.tokens == ["[CLS]", "the", "film", "was", "great", "[SEP]"]
    assert v.attention.shape == (2, 4, 6, 5) and torch.allclose(
        torch.from_numpy(v.attention), ref["attention"])
    assert ((v.mass > 0) & (v.mass <= 1 + 1e-6)).all()
    assert list(v.layer.options) == ["mean", 0, 1] and list(v.head.options) == ["mean", 0, 1, 2, 3]
    img = v.image.value
    v.layer.value, v.head.value = 1, 2
    assert torch.allclose(torch.from_numpy(v.selected()), ref["attention"][1, 2])
    assert v.image.value != img
    v.text.value = "bad plot"
    assert v.tokens == ["[CLS]", "bad", "plot", "[SEP]"] and v.selected().shape == (4, 5)


def test_prefix_viewer_needs_prefix_model(tiny_bert, tiny_tokenizer):
    with pytest.raises(ValueError, match="PrefixViewer needs"):
        widgets.PrefixViewer(tiny_bert, tiny_tokenizer)


# --- what the browser showed (issue 19): paths, legends, readable labels, natural size -----

def _tick_labels_readable(ax, axis):
    """The visible tick labels of one axis: at least 8 pt, and no two of them overlap."""
    ax.figure.canvas.draw()
    r = ax.figure.canvas.get_renderer()
    labels = [t for t in (ax.get_yticklabels() if axis == "y" else ax.get_xticklabels())
              if t.get_text() and t.get_visible()]
    assert labels, f"no {axis} labels"
    assert all(t.get_fontsize() >= 8 for t in labels)
    boxes = [t.get_window_extent(r) for t in labels]
    for a, b in itertools.pairwise(boxes):
        assert not a.overlaps(b), f"tick labels touch: {a} {b}"
    return [t.get_text() for t in labels]


def _wide_bert(layers=6, heads=12):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=4 * heads, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=64, max_position_embeddings=64, num_labels=2)).eval()


def test_inspector_filter_shows_full_paths(tiny_bert):
    insp = widgets.ModelInspector(tiny_bert)
    insp.filter.value = "query"
    html = insp.table_html.value
    for i in (0, 1):                  # two rows that once both read "query Linear ..."
        assert f"bert.encoder.layer.{i}.attention.self.query</td>" in html
    insp.filter.value = ""            # the tree view indents last names again
    assert "&nbsp;" in insp.table_html.value
    assert "bert.encoder.layer.0.attention.self.query</td>" not in insp.table_html.value


def test_monitor_legend_has_eval_accuracy_and_readable_rows():
    model = _wide_bert()
    pl.lora.apply(model, pl.lora.LoraConfig(r=2, targets=["query", "value"]))
    mon = widgets.TrainingMonitor(min_interval=1e9)
    data = _batches(2)
    pl.train.fit(model, data, data[:1], epochs=2, progress=False, callbacks=[mon])
    mon.wait()
    fig = mon.figure()
    ax_loss, ax_grad = fig.axes[0], fig.axes[2]
    legend = [t.get_text() for t in ax_loss.get_legend().get_texts()]
    assert "eval loss" in legend and any(t.startswith("eval accuracy") for t in legend)
    rows = _tick_labels_readable(ax_grad, "y")
    assert len(rows) == len(mon.layers) == 13 and rows[0] == "L0.attention.self.query"


def test_rank_and_prefix_and_selection_labels_do_not_touch(tiny_tokenizer):
    model = _wide_bert()
    pl.adalora.apply(model, pl.adalora.AdaLoraConfig(
        init_r=4, target_r=2, targets=["query", "value"], total_steps=4, tinit=1, tfinal=1))
    v = widgets.RankAllocationViewer(model)
    pl.train.fit(model, _batches(4), progress=False, callbacks=[v])
    assert len(_tick_labels_readable(v.figure().axes[0], "y")) == 12
    sel = widgets.SelectionExplorer(_wide_bert(), batches=_batches(1), kind="grad")
    fig = sel.figure()
    assert len(_tick_labels_readable(fig.axes[0], "y")) == len(sel.grid()[0])
    prefixed = pl.prefix.apply(_wide_bert(), pl.prefix.PrefixConfig(num_virtual_tokens=10))
    pv = widgets.PrefixViewer(prefixed, tiny_tokenizer, text="the film was great")
    fig = pv.figure()
    heads = _tick_labels_readable(fig.axes[1], "x")       # mass panel: one label per head
    assert heads == [str(h) for h in range(12)]
    assert len(_tick_labels_readable(fig.axes[0], "x")) == 10


def test_figures_keep_their_natural_size():
    """A VBox stretches its children to its width: images opt out and only ever shrink."""
    for image in (widgets.TrainingMonitor().image,
                  widgets.RankAllocationViewer({"steps": [0], "budget": [1],
                                                "ranks": {"a.0.q": [1]}}).image):
        lay = image.layout
        assert (lay.align_self, lay.max_width, lay.height) == ("flex-start", "100%", "auto")


# --- snapshots from stored widget state, and the saveState setting -----------------------

def test_snapshot_html_draws_the_stored_state(tiny_bert):
    import base64

    from ipywidgets.embed import dependency_state

    from peftlab.widgets.snapshot import add_snapshots, snapshot_html
    ex = widgets.LoraExplorer(tiny_bert)
    ex.r.value = 6
    state = dependency_state(ex.widget)       # {id: model}, as nbconvert stores in a notebook
    html = snapshot_html(ex.widget.model_id, state)
    assert "rank r: <b>6</b>" in html and "targets: <b>query, value</b>" in html
    assert "&#9744; rsLoRA" in html and "r=6, alpha=16" in html
    png = re.search(r"src='data:image/png;base64,([^']+)'", html).group(1)
    assert base64.b64decode(png) == ex.image.value                 # the figure, byte for byte
    nb = {"metadata": {"widgets": {"application/vnd.jupyter.widget-state+json":
                                   {"state": state}}},
          "cells": [{"cell_type": "code", "outputs": [{"output_type": "display_data", "data": {
              "application/vnd.jupyter.widget-view+json": {"model_id": ex.widget.model_id},
              "text/plain": "VBox(children=..."}}]}]}
    assert add_snapshots(nb) == 1
    assert nb["cells"][0]["outputs"][0]["data"]["text/html"] == html
    with pytest.raises(KeyError, match="saved without it"):
        snapshot_html("0" * 32, state)


def test_lab_setting_turns_on_save_state(tmp_path):
    import json
    import sys
    from pathlib import Path

    from peftlab.widgets.lab_settings import PLUGIN, install
    path = install(tmp_path)
    assert path == tmp_path / "overrides.d" / "peftlab.json"
    assert json.loads(path.read_text()) == {PLUGIN: {"saveState": True}}
    # the setting exists in the installed JupyterLab widget manager, under that name
    schema = Path(sys.prefix) / "share/jupyter/labextensions/@jupyter-widgets/jupyterlab-manager" \
        / "schemas/@jupyter-widgets/jupyterlab-manager/plugin.json"
    assert PLUGIN.endswith(":plugin") and "saveState" in json.loads(schema.read_text())[
        "properties"]
