"""AdaLoRA: schedule, allocator, SVD layers, penalty, save/load, conversion, HF PEFT parity."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftlab as pl
from peftlab.adalora import AdaLoraConfig, budget_schedule

ADA = pl.adalora


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and the CI machine is shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(**kw):
    base = dict(init_r=6, target_r=2, targets=["query", "value", "dense"], total_steps=24,
                tinit=4, tfinal=6, delta_t=2)
    base.update(kw)
    return AdaLoraConfig(**base)


def _bert_batch(n=8, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 100, (n, t), generator=g), torch.randint(0, 2, (n,), generator=g)


def _train(model, steps, batch_fn, lr=1e-2, start=0):
    """The plain loop the design asks for: loss + penalty, backward, step, after_step, zero_grad."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for s in range(start, start + steps):
        loss = batch_fn(model, s) + pl.regularization(model)
        loss.backward()
        opt.step()
        pl.after_step(model, s)
        opt.zero_grad()
    return opt


def _bert_loss(model, s):
    x, y = _bert_batch(seed=s % 3)
    return F.cross_entropy(model(input_ids=x).logits, y)


# --- the schedule --------------------------------------------------------------------------------

def test_budget_schedule_matches_cubic_formula():
    cfg = AdaLoraConfig(init_r=12, target_r=4, targets=["q"], total_steps=100, tinit=10,
                        tfinal=20, delta_t=5)
    n, b0, bT = 6, 72, 24
    for step in (0, 5, 10):
        assert budget_schedule(cfg, step, n) == (b0, False)
    for step in (11, 15, 33, 50, 79, 80):
        expect = int((b0 - bT) * (1 - (step - 10) / (100 - 20 - 10)) ** 3 + bT)
        assert budget_schedule(cfg, step, n) == (expect, step % 5 == 0)
    assert budget_schedule(cfg, 15, n).budget == 62          # 48 * (65/70)^3 + 24 = 62.4
    assert budget_schedule(cfg, 80, n) == (bT, True)
    for step in (81, 99, 150):
        assert budget_schedule(cfg, step, n) == (bT, True)
    curve = [budget_schedule(cfg, s, n).budget for s in range(100)]
    assert all(a >= b for a, b in zip(curve, curve[1:]))     # never grows


def test_budget_schedule_matches_hf_peft():
    from types import SimpleNamespace

    from peft.tuners.adalora.layer import RankAllocator
    cfg = AdaLoraConfig(init_r=9, target_r=3, targets=["q"], total_steps=120, tinit=7,
                        tfinal=13, delta_t=4)
    hf = RankAllocator.__new__(RankAllocator)                 # only the schedule, no model
    hf.peft_config = SimpleNamespace(tinit=7, tfinal=13, total_step=120, deltaT=4)
    hf.init_bgt, hf.target_bgt = 9 * 5, 3 * 5
    for step in range(130):
        assert budget_schedule(cfg, step, 5) == hf.budget_schedule(step), step


# --- the allocator -------------------------------------------------------------------------------

@pytest.mark.parametrize("delta_t", [1, 3])
def test_final_budget_is_exact_and_history_is_recorded(tiny_bert, delta_t):
    cfg = _cfg(delta_t=delta_t)
    ADA.apply(tiny_bert, cfg)
    n = len(ADA.layers(tiny_bert))
    _train(tiny_bert, cfg.total_steps, _bert_loss)
    ranks = ADA.rank_pattern(tiny_bert)
    assert sum(ranks.values()) == cfg.target_r * n
    lam_nonzero = sum(int((m.lora_lambda != 0).sum()) for m in ADA.layers(tiny_bert).values())
    assert lam_nonzero <= cfg.target_r * n                    # dropped lambdas are exactly 0
    h = ADA.history(tiny_bert)
    assert h["steps"] == list(range(cfg.total_steps))
    assert h["budget"] == [budget_schedule(cfg, s, n).budget for s in h["steps"]]
    assert h["kept"][0] == cfg.init_r * n and h["kept"][-1] == cfg.target_r * n
    for s, b, k in zip(h["steps"], h["budget"], h["kept"]):
        if budget_schedule(cfg, s, n).mask:
            assert k == b                                     # right after a re-mask: exact
    assert all(len(v) == cfg.total_steps for v in h["ranks"].values())


def _teacher_student():
    """A 3-layer MLP whose teacher differs from the base in layer 0 only (rank 4)."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, 32))
    teacher = copy.deepcopy(base)
    with torch.no_grad():
        teacher[0].weight += torch.randn(32, 4) @ torch.randn(4, 16) * 0.3
    x = torch.randn(256, 16)
    return base, x, teacher(x).detach()


def test_allocation_moves_rank_to_the_layer_that_matters():
    model, x, y = _teacher_student()
    cfg = AdaLoraConfig(init_r=6, target_r=2, targets=["0", "2", "4"], total_steps=150,
                        tinit=20, tfinal=30, delta_t=5, alpha=6, modules_to_save=[])
    ADA.apply(model, cfg)
    _train(model, cfg.total_steps, lambda m, s: F.mse_loss(m(x), y), lr=2e-2)
    ranks = ADA.rank_pattern(model)
    assert sum(ranks.values()) == 6
    assert ranks["0"] > max(ranks["2"], ranks["4"]), ranks    # non-uniform, and to the right layer


def test_importance_matches_direct_computation(tiny_mlp):
    cfg = AdaLoraConfig(init_r=3, target_r=2, targets=["0", "2"], total_steps=10, tinit=5,
                        tfinal=2, beta1=0.7, beta2=0.6, modules_to_save=[])
    ADA.apply(tiny_mlp, cfg)
    layers = ADA.layers(tiny_mlp)
    with torch.no_grad():
        for m in layers.values():
            m.lora_lambda.normal_()
    x, y = torch.randn(5, 8), torch.randint(0, 3, (5,))
    opt = torch.optim.SGD([p for p in tiny_mlp.parameters() if p.requires_grad], lr=0.1)
    ema = {}
    for step in range(2):
        F.cross_entropy(tiny_mlp(x), y).backward()
        opt.step()
        for n, m in layers.items():                            # by hand, from the stored grads
            for key, p in (("P", m.lora_P), ("lambda", m.lora_lambda), ("Q", m.lora_Q)):
                sens = (p.detach() * p.grad).abs()
                i_bar, u_bar = ema.get((n, key), (torch.zeros_like(sens), torch.zeros_like(sens)))
                i_bar = 0.7 * i_bar + 0.3 * sens
                u_bar = 0.6 * u_bar + 0.4 * (sens - i_bar).abs()
                ema[(n, key)] = (i_bar, u_bar)
        pl.after_step(tiny_mlp, step)
        opt.zero_grad()
    for n, m in layers.items():
        for key in ("P", "lambda", "Q"):
            torch.testing.assert_close(getattr(m, f"ipt_{key}"), ema[(n, key)][0])
            torch.testing.assert_close(getattr(m, f"unc_{key}"), ema[(n, key)][1])
        s = {k: ema[(n, k)][0] * ema[(n, k)][1] for k in ("P", "lambda", "Q")}
        by_hand = torch.stack([s["lambda"][i] + s["P"][:, i].mean() + s["Q"][i].mean()
                               for i in range(3)])
        torch.testing.assert_close(ADA.triplet_scores(m), by_hand)


def test_after_step_needs_gradients_and_an_adalora_model(tiny_bert, tiny_mlp):
    pl.after_step(tiny_mlp, 0)                                 # plain model: documented no-op
    assert pl.regularization(tiny_mlp).item() == 0.0
    with pytest.raises(ValueError, match="carries no AdaLoRA"):
        ADA.after_step(tiny_mlp, 0)
    ADA.apply(tiny_bert, _cfg())
    with pytest.raises(RuntimeError, match="before optimizer.zero_grad"):
        pl.after_step(tiny_bert, 0)                            # no backward yet
    with pytest.raises(ValueError, match="0-based index"):
        pl.after_step(tiny_bert, -1)


def test_fit_drives_the_allocator(tiny_bert):
    cfg = _cfg(total_steps=12, tinit=2, tfinal=3)
    ADA.apply(tiny_bert, cfg)
    batches = [dict(input_ids=x, labels=y) for x, y in (_bert_batch(seed=s) for s in range(4))]
    pl.train.fit(tiny_bert, batches, epochs=3, lr=1e-2, progress=False)
    h = ADA.history(tiny_bert)
    assert h["steps"] == list(range(12)) and h["kept"][-1] == cfg.target_r * len(h["ranks"])


# --- the layer and the penalty -------------------------------------------------------------------

def test_output_is_base_plus_scaled_svd_update(tiny_bert, tiny_gpt2):
    for model, inputs in ((tiny_bert, dict(input_ids=_bert_batch()[0])),
                          (tiny_gpt2, dict(input_ids=_bert_batch()[0]))):
        targets = ["query"] if model is tiny_bert else ["c_attn"]
        ADA.apply(model, _cfg(targets=targets, alpha=3.0))
        for name, m in ADA.layers(model).items():
            with torch.no_grad():
                m.lora_lambda.normal_()
            x = torch.randn(3, 5, m.in_features)
            P, lam, Q = m.lora_P, m.lora_lambda, m.lora_Q
            expect = m.base_layer(x) + x @ (P @ torch.diag(lam) @ Q).T * (3.0 / 6)
            torch.testing.assert_close(m(x), expect, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(m.delta_weight(), P @ torch.diag(lam) @ Q * 0.5)
        model(**inputs)                                        # whole model still runs


def test_starts_at_the_base_model_and_base_stays_frozen(tiny_bert):
    x = _bert_batch()[0]
    before = tiny_bert(input_ids=x).logits
    w = tiny_bert.bert.encoder.layer[0].attention.self.query.weight.clone()
    ADA.apply(tiny_bert, _cfg(modules_to_save=[]))
    torch.testing.assert_close(tiny_bert(input_ids=x).logits, before)   # lambda = 0
    _train(tiny_bert, 3, _bert_loss)
    torch.testing.assert_close(ADA.layers(tiny_bert)["bert.encoder.layer.0.attention.self.query"]
                               .base_layer.weight, w)


def test_orthogonality_penalty(tiny_mlp):
    cfg = AdaLoraConfig(init_r=3, target_r=1, targets=["0", "2"], total_steps=10, tinit=1,
                        tfinal=1, orth_reg_weight=0.5, modules_to_save=[])
    ADA.apply(tiny_mlp, cfg)
    layers = ADA.layers(tiny_mlp)
    with torch.no_grad():
        for m in layers.values():                              # orthonormal columns / rows
            m.lora_P.copy_(torch.linalg.qr(torch.randn(m.out_features, 3))[0])
            m.lora_Q.copy_(torch.linalg.qr(torch.randn(m.in_features, 3))[0].T)
    assert pl.regularization(tiny_mlp).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        layers["0"].lora_P.mul_(2.0)                           # P^T P = 4 I: ||3 I||^2 = 27
    assert pl.regularization(tiny_mlp).item() == pytest.approx(0.5 * 27 / 2, rel=1e-5)
    reg = pl.regularization(tiny_mlp)
    reg.backward()
    assert layers["0"].lora_P.grad.abs().sum() > 0 and layers["0"].lora_lambda.grad is None


# --- state, saving, loading, conversion ----------------------------------------------------------

def test_state_lives_in_buffers(tiny_bert):
    cfg = _cfg()
    ADA.apply(tiny_bert, cfg)
    _train(tiny_bert, 10, _bert_loss)
    state = tiny_bert.state_dict()
    name = "bert.encoder.layer.0.attention.self.query"
    for key in ("lora_mask", "ipt_P", "unc_Q", "rank_history"):
        assert f"{name}.{key}" in state
    fresh = BertLike(tiny_bert)
    fresh.load_state_dict(state)
    assert ADA.rank_pattern(fresh) == ADA.rank_pattern(tiny_bert)
    assert ADA.history(fresh) == ADA.history(tiny_bert)


def BertLike(model):
    from transformers import BertForSequenceClassification
    torch.manual_seed(1)
    other = BertForSequenceClassification(model.config)
    return ADA.apply(other, copy.deepcopy(pl.core.get_config(model)))


@pytest.mark.parametrize("steps", [11, 24])     # mid-schedule (drifting lambdas) and finished
def test_save_keeps_surviving_triplets_and_load_is_exact(tiny_bert, tmp_path, steps):
    base = copy.deepcopy(tiny_bert)
    cfg = _cfg(delta_t=3)
    ADA.apply(tiny_bert, cfg)
    _train(tiny_bert, steps, _bert_loss)
    tiny_bert.eval()
    x = _bert_batch(seed=7)[0]
    ref = tiny_bert(input_ids=x).logits
    pl.save_adapter(tiny_bert, tmp_path / "ada")
    tensors = pl.io.read_tensors(tmp_path / "ada" / "adapter_model.safetensors")
    stored = sum(v.numel() for k, v in tensors.items() if k.endswith("lora_lambda"))
    kept = sum(ADA.rank_pattern(tiny_bert).values())
    assert stored >= kept and (steps < cfg.total_steps or stored == kept == 2 * 11)
    pl.load_adapter(base, tmp_path / "ada")
    torch.testing.assert_close(base(input_ids=x).logits, ref, atol=1e-6, rtol=0)
    assert ADA.rank_pattern(base) == ADA.rank_pattern(tiny_bert)
    assert ADA.history(base)["ranks"] == ADA.history(tiny_bert)["ranks"]


def test_load_rejects_a_mismatched_adapter(tiny_bert, tmp_path):
    other = copy.deepcopy(tiny_bert)
    ADA.apply(tiny_bert, _cfg())
    pl.save_adapter(tiny_bert, tmp_path / "ada")
    tensors = pl.io.read_tensors(tmp_path / "ada" / "adapter_model.safetensors")
    key = "bert.encoder.layer.0.attention.self.query.lora_P"
    tensors[key] = tensors[key][:, :2]
    pl.io.write_tensors(tmp_path / "ada" / "adapter_model.safetensors", tensors)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(pl.core.AdapterError, match="lora_P"):
        pl.load_adapter(other, tmp_path / "ada")
    assert pl.core.get_method(other) is None
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


def test_to_lora_preserves_outputs(tiny_bert):
    cfg = _cfg()
    ADA.apply(tiny_bert, cfg)
    _train(tiny_bert, cfg.total_steps, _bert_loss)
    tiny_bert.eval()
    x = _bert_batch(seed=9)[0]
    ref = tiny_bert(input_ids=x).logits
    ranks = ADA.rank_pattern(tiny_bert)
    dims = {n: m.in_features + m.out_features for n, m in ADA.layers(tiny_bert).items()}
    ADA.to_lora(tiny_bert)
    assert pl.core.get_method(tiny_bert) == "lora"
    lora = pl.lora.lora_layers(tiny_bert)
    assert {n: m.r for n, m in lora.items()} == {n: r for n, r in ranks.items() if r > 0}
    torch.testing.assert_close(tiny_bert(input_ids=x).logits, ref, atol=1e-5, rtol=0)
    n_lora = sum(p.numel() for m in lora.values() for n, p in m.named_parameters()
                 if "lora_" in n)
    assert n_lora == sum(r * dims[n] for n, r in ranks.items())
    pl.lora.merge(tiny_bert)                                   # a plain LoRA model now
    torch.testing.assert_close(tiny_bert(input_ids=x).logits, ref, atol=1e-5, rtol=0)


# --- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, field", [
    (dict(target_r=8), "target_r"), (dict(init_r=0), "init_r"),
    (dict(tinit=10, tfinal=14), "tinit"), (dict(tfinal=0), "tfinal"),
    (dict(delta_t=0), "delta_t"), (dict(beta1=1.0), "beta1"), (dict(beta2=0), "beta2"),
    (dict(orth_reg_weight=-1), "orth_reg_weight"), (dict(total_steps=0), "total_steps"),
    (dict(dropout=1.0), "dropout"), (dict(alpha=0), "alpha"), (dict(targets="query"), "targets"),
    (dict(init_r=2.5), "init_r")])
def test_bad_configs_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        _cfg(**kw)


@pytest.mark.parametrize("kw, match", [(dict(targets=["nope"]), "nope"),
                                       (dict(targets=["embeddings"]), "can wrap"),
                                       (dict(modules_to_save=["no_head"]), "no_head"),
                                       (dict(modules_to_save=["query"]), "both an AdaLoRA")])
def test_bad_targets_leave_the_model_unchanged(tiny_bert, kw, match):
    before = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    grads = [p.requires_grad for p in tiny_bert.parameters()]
    with pytest.raises(Exception, match=match):
        ADA.apply(tiny_bert, _cfg(**kw))
    assert pl.core.get_method(tiny_bert) is None
    assert tiny_bert.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in tiny_bert.state_dict().items())
    assert [p.requires_grad for p in tiny_bert.parameters()] == grads
    ADA.apply(tiny_bert, _cfg())                                # still usable afterwards
    with pytest.raises(pl.core.AlreadyAdaptedError):
        ADA.apply(tiny_bert, _cfg())


# --- Hugging Face PEFT parity on the embedded model ----------------------------------------------

def test_trainable_count_matches_hf_peft(embedded):
    from peft import AdaLoraConfig as HFConfig
    from peft import get_peft_model
    model, _ = embedded
    hf = get_peft_model(copy.deepcopy(model), HFConfig(
        init_r=12, target_r=4, target_modules=["query", "value"], total_step=100,
        task_type="SEQ_CLS"))
    hf_trainable = sum(p.numel() for p in hf.parameters() if p.requires_grad)
    ADA.apply(model, AdaLoraConfig(init_r=12, target_r=4, targets=["query", "value"],
                                   total_steps=100))
    assert pl.trainable_report(model).trainable == hf_trainable == 111_506


def test_hf_peft_format_round_trips_both_ways(tiny_bert, tmp_path):
    from peft import AdaLoraConfig as HFConfig
    from peft import PeftModel, get_peft_model
    base = copy.deepcopy(tiny_bert)
    x = _bert_batch(seed=4)[0]
    # ours -> peft: the saved kept triplets load in peft with the same outputs
    ADA.apply(tiny_bert, _cfg())
    _train(tiny_bert, 15, _bert_loss)
    tiny_bert.eval()
    ref = tiny_bert(input_ids=x).logits
    pl.save_adapter(tiny_bert, tmp_path / "hf", format="hf-peft")
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "hf").eval()
    torch.testing.assert_close(theirs(input_ids=x).logits, ref, atol=1e-5, rtol=0)
    # peft -> ours: a peft AdaLoRA model with a rank pattern loads with the same outputs
    torch.manual_seed(3)
    hf = get_peft_model(copy.deepcopy(base), HFConfig(
        init_r=4, target_r=2, target_modules=["query", "value"], total_step=10, tinit=2,
        tfinal=2, lora_alpha=8, task_type="SEQ_CLS"))
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "lora_E" in n:
                p.normal_()
                p[1:3] = 0.0
    hf.base_model.peft_config["default"].rank_pattern = {
        n.replace(".default", "").removeprefix("base_model.model."): [True, False, False, True]
        for n, _ in hf.named_parameters() if "lora_E" in n}
    hf.eval()
    ref = hf(input_ids=x).logits
    hf.save_pretrained(tmp_path / "theirs")
    mine = pl.load_adapter(copy.deepcopy(base), tmp_path / "theirs").eval()
    torch.testing.assert_close(mine(input_ids=x).logits, ref, atol=1e-5, rtol=0)
    assert set(ADA.rank_pattern(mine).values()) == {2}


# --- models users bring: non-finite steps, the run length, merge, unload, half precision -------

def _inf_grads(model):
    for layer in ADA.layers(model).values():
        for p in (layer.lora_P, layer.lora_lambda, layer.lora_Q):
            p.grad = torch.full_like(p, float("inf"))


def test_a_non_finite_step_does_not_poison_the_importance_scores(tiny_bert):
    """A step with inf gradients (an fp16 overflow the loss scaler skips) followed by
    after_step filled the EMAs with inf/NaN for good; now that step is not scored."""
    cfg = _cfg(total_steps=12, tinit=1, tfinal=2)
    ADA.apply(tiny_bert, cfg)
    twin = copy.deepcopy(tiny_bert)
    _train(tiny_bert, 3, _bert_loss)
    _train(twin, 3, _bert_loss)
    _inf_grads(tiny_bert)
    pl.after_step(tiny_bert, 3)                  # the bad step: nothing scored, nothing masked
    tiny_bert.zero_grad()
    _train(tiny_bert, 3, _bert_loss, start=4)
    _train(twin, 3, _bert_loss, start=4)
    for (n, a), b in zip(ADA.layers(tiny_bert).items(), ADA.layers(twin).values()):
        for key in ("ipt_P", "unc_P", "ipt_lambda", "unc_lambda", "ipt_Q", "unc_Q"):
            assert torch.isfinite(getattr(a, key)).all(), (n, key)
            torch.testing.assert_close(getattr(a, key), getattr(b, key), msg=f"{n}.{key}")
        assert torch.equal(a.lora_mask, b.lora_mask)


def test_fit_does_not_call_after_step_on_a_step_the_grad_scaler_skipped(tiny_bert, monkeypatch):
    """fit(amp) with a GradScaler called after_step on skipped steps; a CPU GradScaler stands
    in for the CUDA one here, and one step's loss is made infinite."""
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler",
                        lambda *a, **k: real("cpu", init_scale=2.0 ** 4, enabled=True))
    cfg = _cfg(total_steps=6, tinit=1, tfinal=1)
    ADA.apply(tiny_bert, cfg)
    batches = [dict(input_ids=x, labels=y) for x, y in (_bert_batch(seed=s) for s in range(6))]
    calls = []

    def loss(model, batch):
        calls.append(1)
        out = pl.train.loss_fn(model, batch)
        return out * float("inf") if len(calls) == 3 else out      # step 2 overflows
    pl.train.fit(tiny_bert, batches, loss=loss, lr=1e-2, progress=False, max_grad_norm=None)
    hist = torch.stack([m.rank_history for m in ADA.layers(tiny_bert).values()])
    assert (hist[:, 2] == -1).all() and (hist[:, [0, 1, 3, 4, 5]] >= 0).all()
    for m in ADA.layers(tiny_bert).values():
        assert torch.isfinite(m.ipt_lambda).all() and torch.isfinite(m.unc_P).all()
    assert sum(ADA.rank_pattern(tiny_bert).values()) == cfg.target_r * len(ADA.layers(tiny_bert))


def test_final_mask_is_set_even_if_its_step_was_skipped(tiny_bert):
    cfg = _cfg(total_steps=8, tinit=1, tfinal=2)                  # final mask at step 6
    ADA.apply(tiny_bert, cfg)
    _train(tiny_bert, 6, _bert_loss)                              # steps 0..5
    _train(tiny_bert, 1, _bert_loss, start=7)                     # step 6 never reported
    assert sum(ADA.rank_pattern(tiny_bert).values()) == cfg.target_r * len(ADA.layers(tiny_bert))


def test_fit_refuses_a_run_too_short_for_the_schedule(tiny_bert):
    """fit's step count was never checked against total_steps: the target budget was silently
    never reached."""
    ADA.apply(tiny_bert, _cfg(total_steps=100, tinit=5, tfinal=10))
    before = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    batches = [dict(input_ids=x, labels=y) for x, y in (_bert_batch(seed=s) for s in range(4))]
    with pytest.raises(ValueError, match=r"total_steps=100 .* takes 8 steps"):
        pl.train.fit(tiny_bert, batches, epochs=2, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in tiny_bert.state_dict().items())
    ADA.check_total_steps(tiny_bert, 91)                          # reaches step 90: fine
    ADA.check_total_steps(tiny_bert, 500)                         # longer: the mask stays fixed


def test_merge_unmerge_and_unload(tiny_bert, tiny_gpt2):
    """measure said AdaLoRA could merge and it could not; now it can (Linear and Conv1D)."""
    from peftlab import measure

    for model, targets in ((tiny_bert, ["query", "value"]), (tiny_gpt2, ["c_attn", "c_fc"])):
        base = {k: v.clone() for k, v in model.state_dict().items()}
        ADA.apply(model, _cfg(targets=targets))
        with torch.no_grad():
            for layer in ADA.layers(model).values():
                layer.lora_lambda.normal_()
        x = _bert_batch(seed=1)[0]
        want = model(input_ids=x).logits
        never_merged = copy.deepcopy(model)
        merge, unmerge = measure.merge_functions(model)
        merge(model)
        merge(model)                                             # twice: a no-op
        assert all(m.merged for m in ADA.layers(model).values())
        torch.testing.assert_close(model(input_ids=x).logits, want, atol=1e-5, rtol=0)
        with pytest.raises(RuntimeError, match="unmerge"):
            ADA.after_step(model, 0)
        unmerge(model)
        torch.testing.assert_close(model(input_ids=x).logits, want, atol=1e-5, rtol=0)
        twin = copy.deepcopy(model)
        ADA.unload(twin, merge=True)
        assert pl.core.get_method(twin) is None and not any(
            isinstance(m, ADA.SVDLinear) for m in twin.modules())
        torch.testing.assert_close(twin(input_ids=x).logits, want, atol=1e-5, rtol=0)
        ADA.unload(never_merged, merge=False)                   # the base, bit for bit
        assert never_merged.state_dict().keys() == base.keys()
        assert all(torch.equal(v, base[k]) for k, v in never_merged.state_dict().items())
        ADA.unload(model, merge=False)                          # merged once: float rounding
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, base[k], atol=1e-6, rtol=0)


def test_unload_without_merge_restores_the_trained_head(tiny_bert):
    base = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    ADA.apply(tiny_bert, _cfg())
    _train(tiny_bert, 3, _bert_loss, lr=0.1)
    assert not torch.equal(tiny_bert.classifier.weight, base["classifier.weight"])
    ADA.unload(tiny_bert, merge=False)
    assert all(torch.equal(v, base[k]) for k, v in tiny_bert.state_dict().items())


def test_svd_adapter_is_fp32_on_a_bf16_base(tiny_bert):
    tiny_bert.to(torch.bfloat16)
    ADA.apply(tiny_bert, _cfg(targets=["query"]))
    layer = next(iter(ADA.layers(tiny_bert).values()))
    assert layer.lora_P.dtype == layer.lora_lambda.dtype == torch.float32
    out = tiny_bert(input_ids=_bert_batch()[0]).logits
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert layer.lora_Q.grad.dtype == torch.float32
