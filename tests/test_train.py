"""fit() is the plain loop: it must train exactly what a hand-written loop trains, for every
method, and its chores (seeding, schedule, clipping, callbacks, evaluation) must hold."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

import peftlab as pl
from peftlab import train as tr


def no_dropout_bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).eval()


def text_batches(n=3, b=4, t=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 100, (b, t), generator=g)
        mask = torch.ones(b, t, dtype=torch.long)
        out.append({"input_ids": ids, "attention_mask": mask,
                    "labels": (ids[:, 0] > 50).long()})   # learnable: first token decides
    return out


def apply_method(name, model, batches):
    if name in ("full", "head", "bitfit"):
        pl.full.apply(model, pl.full.FullConfig(mode={"full": "all"}.get(name, name)))
    elif name == "lora":
        pl.lora.apply(model, pl.lora.LoraConfig(r=2, targets=["query", "value"]))
    elif name == "prefix":
        pl.prefix.apply(model, pl.prefix.PrefixConfig(num_virtual_tokens=3))
    elif name == "prompt":
        pl.prompt.apply(model, pl.prompt.PromptConfig(num_virtual_tokens=3))
    elif name == "selection":
        pl.selection.apply(model, pl.selection.SelectionConfig(fraction=0.02),
                           batches=batches, loss_fn=tr.loss_fn)
    elif name == "qlora":
        pl.qlora.apply(model, pl.qlora.QLoraConfig(r=2, targets=["query", "value"]))
    elif name == "adalora":
        pl.adalora.apply(model, pl.adalora.AdaLoraConfig(init_r=4, target_r=2,
                                                         total_steps=6, tinit=1, tfinal=2))
    elif name == "ia3":
        pl.ia3.apply(model, pl.ia3.IA3Config())
    elif name in ("bottleneck", "bottleneck_parallel"):
        pl.bottleneck.apply(model, pl.bottleneck.BottleneckConfig(
            bottleneck_size=4, style="serial" if name == "bottleneck" else "parallel"))
    else:
        raise AssertionError(f"no small config for the registered method {name!r} here")
    return model


def hand_loop(model, batches, steps, lr):
    """The loop every notebook shows: forward, loss + regularization, backward, step,
    after_step, zero_grad. Constant lr, no clipping: fit(schedule='constant', warmup=0,
    max_grad_norm=None) must take the very same steps."""
    pl.runtime.seed_everything(0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    step = 0
    while step < steps:
        for batch in batches:
            loss = tr.loss_fn(model, batch) + pl.regularization(model)
            loss.backward()
            opt.step()
            pl.after_step(model, step)
            opt.zero_grad()
            step += 1
            if step == steps:
                break
    return model


METHODS = list(pl.core.registry.train_entries())   # every `peftlab train --method` choice


@pytest.mark.parametrize("method", METHODS)
def test_fit_equals_the_plain_loop(method):
    batches = text_batches()
    a = apply_method(method, no_dropout_bert(), batches)
    b = apply_method(method, no_dropout_bert(), batches)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    hand_loop(a, batches, steps=6, lr=1e-2)
    r = pl.train.fit(b, batches, batches, epochs=2, lr=1e-2, schedule="constant", warmup=0,
                     max_grad_norm=None, progress=False, device="cpu")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6, msg=k)
    changed = [k for k in sa if not torch.equal(sa[k], before[k])]
    assert changed, f"{method}: training changed nothing"
    assert r.trainable == pl.trainable_report(b).trainable and len(r.history) == 6
    assert [e["epoch"] for e in r.evals] == [1, 2]
    assert r.history[-1]["loss"] < r.history[0]["loss"]


def test_fit_learns_and_reports(tiny_mlp):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()     # classes 0-2, nearly linear
    data = torch.utils.data.TensorDataset(x, y)
    pl.full.apply(tiny_mlp, pl.full.FullConfig())
    r = pl.train.fit(tiny_mlp, data, data, epochs=20, lr=2e-2, batch_size=16, progress=False)
    assert r.final["accuracy"] > 0.85 and r.final is r.evals[-1]
    assert len(r.history) == 80 and len(r.evals) == 20
    assert r.trainable == r.total == 195 and r.step_time > 0 and r.device == "cpu"
    assert "eval_accuracy" in repr(r)


def test_same_seed_same_numbers():
    batches = text_batches()
    runs = []
    for _ in range(2):
        m = apply_method("lora", no_dropout_bert(), batches)
        m.config.hidden_dropout_prob = 0.1
        runs.append(pl.train.fit(m, batches, epochs=2, progress=False, seed=3))
    assert [h["loss"] for h in runs[0].history] == [h["loss"] for h in runs[1].history]


def test_schedule_warmup_then_linear_decay(tiny_mlp):
    batches = [(torch.randn(4, 8), torch.randint(0, 3, (4,))) for _ in range(10)]
    pl.full.apply(tiny_mlp, pl.full.FullConfig())
    r = pl.train.fit(tiny_mlp, batches, lr=1.0, warmup=2, progress=False, optimizer="sgd")
    lrs = [h["lr"] for h in r.history]     # lr in effect *after* each step's scheduler.step
    # multiplier(s) = (s+1)/2 for s < 2, then (10 - s) / 8
    assert lrs == pytest.approx([1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0.0])
    r = pl.train.fit(tiny_mlp, batches, lr=1.0, warmup=0, schedule="cosine", progress=False)
    assert r.history[4]["lr"] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 5 / 10)).item()))


class Recorder:
    def __init__(self):
        self.events, self.grad_norms = [], []

    def on_train_begin(self, s):
        self.events.append("begin")

    def on_step_end(self, s):
        self.events.append(f"step{s.step}")
        grads = [p.grad for p in s.model.parameters() if p.requires_grad]
        assert all(g is not None for g in grads), "gradients must still be there"
        self.grad_norms.append(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads])).item())

    def on_epoch_end(self, s):
        self.events.append(f"epoch{s.epoch}:{s.eval_metrics['accuracy']:.0f}")

    def on_train_end(self, s):
        self.events.append("end")


def test_callbacks_contract_and_clipping(tiny_mlp):
    batches = [(10 * torch.randn(4, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    pl.full.apply(tiny_mlp, pl.full.FullConfig())
    rec, calls = Recorder(), []
    pl.train.fit(tiny_mlp, batches, batches[:1], epochs=2, max_grad_norm=0.01,
                 callbacks=[rec, lambda s: calls.append(s.step)], progress=False)
    assert [e.split(":")[0] for e in rec.events] == ["begin", "step1", "step2", "epoch1",
                                                     "step3", "step4", "epoch2", "end"]
    assert calls == [1, 2, 3, 4]
    assert max(rec.grad_norms) <= 0.01 + 1e-6          # clipped before the monitor sees them
    assert all(p.grad is None for p in tiny_mlp.parameters())   # zeroed after the callback


def test_max_steps_and_fractional_epochs(tiny_mlp):
    batches = [(torch.randn(4, 8), torch.randint(0, 3, (4,))) for _ in range(4)]
    pl.full.apply(tiny_mlp, pl.full.FullConfig())
    assert len(pl.train.fit(tiny_mlp, batches, epochs=3, max_steps=5, progress=False).history) == 5
    assert len(pl.train.fit(tiny_mlp, batches, epochs=0.5, progress=False).history) == 2
    assert len(pl.train.fit(tiny_mlp, iter(batches), epochs=2, progress=False).history) == 8


def test_text_split_needs_tokenizer_and_works_with_one(embedded_state):
    _, tok = embedded_state
    ds = pl.data.load_dataset()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    model = BertForSequenceClassification(cfg)
    pl.full.apply(model, pl.full.FullConfig(mode="head"))
    with pytest.raises(ValueError, match="tokenizer"):
        pl.train.fit(model, ds.train, progress=False)
    r = pl.train.fit(model, ds.train.subset(16), ds.validation.subset(8), tokenizer=tok,
                     batch_size=8, progress=False)
    assert len(r.history) == 2 and r.final["n"] == 8


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": -1}, "epochs"), ({"epochs": 0}, "epochs"), ({"lr": 0}, "lr"),
    ({"max_steps": 0}, "max_steps"), ({"batch_size": 0}, "batch_size"),
    ({"schedule": "step"}, "schedule"), ({"optimizer": "adam9"}, "optimizer"),
    ({"device": "tpu"}, "device"),
])
def test_bad_options_raise_before_anything_changes(tiny_mlp, kwargs, match):
    pl.full.apply(tiny_mlp, pl.full.FullConfig())
    before = {k: v.clone() for k, v in tiny_mlp.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        pl.train.fit(tiny_mlp, [(torch.randn(2, 8), torch.tensor([0, 1]))], progress=False,
                     **kwargs)
    after = tiny_mlp.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_no_trainable_parameters_is_a_clear_error(tiny_mlp):
    tiny_mlp.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        pl.train.fit(tiny_mlp, [(torch.randn(2, 8), torch.tensor([0, 1]))], progress=False)
    with pytest.raises(ValueError, match="empty"):
        pl.train.fit(tiny_mlp, [], progress=False)


def test_loss_and_evaluate_by_hand(tiny_mlp):
    x, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    logits = tiny_mlp(x)
    assert torch.allclose(tr.loss_fn(tiny_mlp, (x, y)), F.cross_entropy(logits, y))
    m = tr.evaluate(tiny_mlp, [(x[:4], y[:4]), (x[4:], y[4:])])
    assert m["n"] == 6 and m["accuracy"] == (logits.argmax(-1) == y).sum().item() / 6
    assert m["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_shard_weights_reproduce_the_full_batch_gradient(tiny_mlp):
    """What DDP relies on: the weighted shard losses average to the whole batch's loss."""
    x, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    full = tr.loss_fn(tiny_mlp, (x, y))
    parts = []
    for rank in range(3):
        (xs, ys), w = tr.shard((x, y), rank, 3)
        parts.append(w * tr.loss_fn(tiny_mlp, (xs, ys)))
    assert torch.allclose(sum(parts) / 3, full)
    (xs, _), w = tr.shard((x[:1], y[:1]), 2, 3)       # no rows left for rank 2
    assert w == 0.0 and xs.shape[0] == 1


def test_fit_switches_no_global_setting(tiny_mlp):
    """fit seeds (its seed= argument) but leaves deterministic-algorithm mode as it found it."""
    was = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(False)
        pl.full.apply(tiny_mlp, pl.full.FullConfig())
        data = [(torch.randn(4, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
        tr.fit(tiny_mlp, data, epochs=1, progress=False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(was)


# --- checkpoints, resume, history, labels ------------------------------------------------------

def dropout_bert(num_labels=3):
    """Dropout on (0.1): the resumed run must replay the very same dropout masks."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)
    return BertForSequenceClassification(cfg)


def shuffled_loader(n=44, b=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, 10), generator=g)
    rows = [{"input_ids": ids[i], "attention_mask": torch.ones(10, dtype=torch.long),
             "labels": ids[i, 0] % 3} for i in range(n)]
    gen = torch.Generator()
    gen.manual_seed(0)
    return torch.utils.data.DataLoader(rows, batch_size=b, shuffle=True, generator=gen)


def resume_setup(method):
    model = dropout_bert()
    if method == "lora":
        pl.lora.apply(model, pl.lora.LoraConfig(r=4, targets=["query", "value"], dropout=0.1))
    elif method == "adalora":
        pl.adalora.apply(model, pl.adalora.AdaLoraConfig(init_r=4, target_r=2, total_steps=18,
                                                         tinit=2, tfinal=4))
    else:
        pl.full.apply(model, pl.full.FullConfig(mode="all"))
    return model


@pytest.mark.parametrize("method", ["lora", "adalora", "full"])
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(method, tmp_path):
    kw = dict(epochs=3, lr=1e-2, progress=False, device="cpu", seed=3)   # 6 steps per epoch
    whole = resume_setup(method)
    r_whole = pl.train.fit(whole, shuffled_loader(), shuffled_loader(), **kw)
    ck = tmp_path / "ck"
    first = resume_setup(method)
    r1 = pl.train.fit(first, shuffled_loader(), shuffled_loader(), checkpoint_every=4,
                      checkpoint_dir=ck, callbacks=[pl.train.StopAfter(9)], **kw)  # mid-epoch 2
    assert r1.stopped and len(r1.history) == 9
    assert [p.name for p in pl.train.checkpoint.checkpoints(ck)] == ["step-000009"]
    second = resume_setup(method)                   # a fresh process would build it again
    r2 = pl.train.fit(second, shuffled_loader(), shuffled_loader(), checkpoint_every=4,
                      checkpoint_dir=ck, resume_from=ck, **kw)
    assert not r2.stopped and [h["step"] for h in r2.history] == list(range(10, 19))
    assert [h["loss"] for h in r1.history + r2.history] == [h["loss"] for h in r_whole.history]
    a, b = whole.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_files_are_safetensors_and_json(tmp_path):
    model = resume_setup("lora")
    pl.train.fit(model, shuffled_loader(), epochs=2, progress=False, checkpoint_every=3,
                 checkpoint_dir=tmp_path)
    # checkpoints every 3 steps of 12; the newest is kept (step 12 is the end: none there)
    (ck,) = pl.train.checkpoint.checkpoints(tmp_path)
    assert ck.name == "step-000009"
    assert sorted(p.name for p in ck.iterdir()) == ["trainer.json", "trainer.safetensors"]
    assert (ck / "trainer.json").stat().st_mode & 0o777 == 0o644
    meta = pl.io.read_json(ck / "trainer.json")
    assert (meta["step"], meta["epoch"], meta["in_epoch"], meta["total_steps"]) == (9, 1, 3, 12)
    tensors = pl.io.read_tensors(ck / "trainer.safetensors")
    assert any(k.startswith("optim.") and k.endswith("exp_avg") for k in tensors)
    assert {"rng.torch", "rng.loader", "epoch_rng.torch", "epoch_rng.loader"} <= set(tensors)
    assert not any(".pt" in p.name or ".bin" in p.name for p in tmp_path.rglob("*"))


def test_resume_refuses_another_run(tmp_path):
    model = resume_setup("lora")
    pl.train.fit(model, shuffled_loader(), epochs=2, progress=False, checkpoint_every=3,
                 checkpoint_dir=tmp_path, callbacks=[pl.train.StopAfter(4)])
    with pytest.raises(pl.train.CheckpointError, match="run of 12 steps but this fit"):
        pl.train.fit(resume_setup("lora"), shuffled_loader(), epochs=3, progress=False,
                     resume_from=tmp_path)
    other = dropout_bert()
    pl.lora.apply(other, pl.lora.LoraConfig(r=4, targets=["query"]))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(pl.train.CheckpointError, match="trainable parameters differ"):
        pl.train.fit(other, shuffled_loader(), epochs=2, progress=False, resume_from=tmp_path)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    with pytest.raises(pl.train.CheckpointError, match="no checkpoint"):
        pl.train.fit(resume_setup("lora"), shuffled_loader(), epochs=2, progress=False,
                     resume_from=tmp_path / "nothing")
    with pytest.raises(ValueError, match="checkpoint_every"):
        pl.train.fit(resume_setup("lora"), shuffled_loader(), checkpoint_every=3,
                     progress=False)


def test_history_log_and_truncation(tmp_path):
    path = tmp_path / "history.jsonl"
    model = resume_setup("lora")
    r = pl.train.fit(model, shuffled_loader(), shuffled_loader(), epochs=2, progress=False,
                     callbacks=[pl.train.HistoryLog(path)])
    rows = pl.train.read_history(path)
    steps = [x for x in rows if x["type"] == "step"]
    epochs = [x for x in rows if x["type"] == "epoch"]
    assert [x["loss"] for x in steps] == [h["loss"] for h in r.history]
    assert [(e["epoch"], e["step"]) for e in epochs] == [(1, 6), (2, 12)]
    assert epochs[-1]["eval_accuracy"] == r.final["accuracy"]
    assert epochs[0]["train_loss"] == pytest.approx(sum(x["loss"] for x in steps[:6]) / 6)
    with open(path, "a") as f:
        f.write('{"type": "step", "st')           # a line cut short by a crash
    pl.train.history.truncate_history(path, 6)    # a checkpoint at step 6, before its eval
    kept = pl.train.read_history(path)
    assert [x["step"] for x in kept] == [1, 2, 3, 4, 5, 6]


def test_named_labels_go_into_the_model_and_mismatches_are_caught(embedded_state):
    _, tok = embedded_state
    texts = [f"sentence {i}" for i in range(12)]
    three = pl.data.TextSplit(texts, [i % 3 for i in range(12)], "train",
                              ["food", "sport", "tech"])
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                     num_labels=2)
    model = BertForSequenceClassification(cfg)
    pl.full.apply(model, pl.full.FullConfig(mode="head"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pl.data.LabelError, match=r"3 labels \(food, sport, tech\) but the "
                                                 r"model's head has 2 outputs"):
        pl.train.fit(model, three, tokenizer=tok, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    cfg.num_labels = 3
    model = BertForSequenceClassification(cfg)
    pl.full.apply(model, pl.full.FullConfig(mode="head"))
    pl.train.fit(model, three, tokenizer=tok, progress=False, batch_size=6)
    assert model.config.id2label == {0: "food", 1: "sport", 2: "tech"}
    assert pl.data.label_names_of(model) == ["food", "sport", "tech"]
    other = pl.data.TextSplit(texts, [i % 3 for i in range(12)], "train", ["a", "b", "c"])
    with pytest.raises(pl.data.LabelError, match="model's labels are"):
        pl.train.fit(model, other, tokenizer=tok, progress=False)
