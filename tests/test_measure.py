"""peftlab.measure checked against hand-computed byte and parameter counts on tiny models."""

from __future__ import annotations

import sys

import timing
import torch
from torch import nn

import peftlab as pl
from peftlab import measure


def test_count_parameters_by_hand(tiny_mlp):
    # Linear(8,16): 8*16 + 16 = 144; Linear(16,3): 16*3 + 3 = 51
    assert measure.count_parameters(tiny_mlp) == (195, 195)
    for p in tiny_mlp[0].parameters():
        p.requires_grad_(False)
    assert measure.count_parameters(tiny_mlp) == (51, 195)


def test_shared_weight_counted_once():
    emb = nn.Embedding(10, 4)
    out = nn.Linear(4, 10, bias=False)
    out.weight = emb.weight                    # tied, as in GPT-2's lm_head
    model = nn.Sequential(emb, out)
    assert measure.count_parameters(model) == (40, 40)
    assert measure.parameter_bytes(model) == 40 * 4


def test_training_state_bytes_after_an_adam_step(tiny_mlp):
    for p in tiny_mlp[0].parameters():
        p.requires_grad_(False)
    params = [p for p in tiny_mlp.parameters() if p.requires_grad]
    estimate = measure.adam_state_bytes_estimate(tiny_mlp)
    opt = torch.optim.AdamW(params, lr=1e-3)
    tiny_mlp(torch.randn(4, 8)).sum().backward()
    opt.step()
    got = measure.training_state_bytes(tiny_mlp, opt)
    # weights: 195 fp32; gradients: the 51 trainable; Adam: 2 moments x 51 + a 4-byte step
    # counter for each of the 2 trainable tensors
    assert got == {"weights": 780, "gradients": 204, "optimizer": 2 * 204 + 2 * 4,
                   "total": 780 + 204 + 416}
    assert estimate == got
    assert measure.optimizer_state_bytes(None) == 0


def test_saved_activation_bytes_by_hand(tiny_mlp):
    x = torch.randn(5, 8)
    with measure.SavedTensorMeter(tiny_mlp) as meter:
        tiny_mlp(x)
    # Linear 1 saves its input x (5*8 floats) for the weight gradient; ReLU saves its output
    # (5*16), which Linear 2 saves too (one storage, counted once); weights are excluded
    assert meter.bytes == (5 * 8 + 5 * 16) * 4

    frozen = nn.Linear(8, 3)
    frozen.requires_grad_(False)
    xg = torch.randn(5, 8, requires_grad=True)
    with measure.SavedTensorMeter(frozen) as meter:
        frozen(xg)
    assert meter.bytes == 0              # a frozen layer keeps no input: it needs no dW
    assert meter.count == 1              # only its weight (excluded) was saved

    with measure.SavedTensorMeter(tiny_mlp) as meter, torch.no_grad():
        tiny_mlp(x)
    assert meter.bytes == 0              # no graph, nothing saved


def test_fit_memory_is_the_documented_sum(tiny_mlp):
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    pl.full.apply(tiny_mlp, pl.full.FullConfig())
    r = pl.train.fit(tiny_mlp, [(x, y)], progress=False, device="cpu")
    m = r.memory
    assert m["total"] == m["weights"] + m["gradients"] + m["optimizer"]
    assert m["peak"] == m["total"] + m["activations"]
    assert m["activations"] >= (16 * 8 + 16 * 16) * 4  # at least the two layers' inputs
    assert m["rss_peak"] > 0 and "exact count" in m["peak_kind"]


def test_median_step_time_skips_warmup():
    assert measure.median_step_time([10.0, 9.0, 1.0, 3.0, 2.0]) == 2.0
    assert measure.median_step_time([4.0, 2.0]) == 3.0   # too few steps: keep them all
    assert measure.median_step_time([]) != measure.median_step_time([])  # nan


def test_folder_and_adapter_size(tmp_path, tiny_mlp):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"0" * 100)
    (tmp_path / "a" / "y.bin").write_bytes(b"0" * 23)
    assert measure.folder_size(tmp_path / "a") == 123
    assert measure.folder_size(tmp_path / "a" / "y.bin") == 23

    pl.full.apply(tiny_mlp, pl.full.FullConfig(mode="head", modules_to_save=["2"]))
    size = measure.adapter_size(tiny_mlp)
    saved = pl.save_adapter(tiny_mlp, tmp_path / "adapter")
    assert size == measure.folder_size(saved)
    # 51 fp32 numbers plus small headers (safetensors header, JSON config)
    assert 51 * 4 < size < 51 * 4 + 4096


def test_inference_time_restores_mode(tiny_mlp):
    tiny_mlp.train()
    t = measure.inference_time(tiny_mlp, torch.randn(4, 8), repeats=2)
    assert t > 0 and tiny_mlp.training
    pl.full.apply(tiny_mlp, pl.full.FullConfig())
    out = measure.inference_times(tiny_mlp, torch.randn(4, 8), repeats=1)
    assert out["unmerged"] > 0 and out["merged"] is None    # full fine-tuning cannot merge


def test_inference_times_merge_and_unmerge(tiny_bert):
    pl.lora.apply(tiny_bert, pl.lora.LoraConfig(r=4, targets=["query", "value"]))
    with torch.no_grad():
        for n, p in tiny_bert.named_parameters():
            if "lora_B" in n:
                p.normal_()              # a non-zero update, so merging changes the weights
    before = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    batch = {"input_ids": torch.randint(0, 100, (2, 7)),
             "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    out = measure.inference_times(tiny_bert, batch, repeats=1)
    assert out["merged"] is not None and out["max_abs_diff"] < 1e-4
    after = tiny_bert.state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)  # unmerged again


def test_human_bytes():
    assert measure.human_bytes(None) == "-"
    assert measure.human_bytes(512) == "512 B"
    assert measure.human_bytes(1536) == "1.5 KB"
    assert measure.human_bytes(3 * 1024 ** 2) == "3.0 MB"


def test_peak_rss_reset():
    """After a reset the peak is the current footprint; touching 256 MB more raises it. In a
    fresh process: in the suite's own process (GBs after hundreds of tests) the 256 MB can
    come from pages freed earlier and still resident, so the footprint need not grow."""
    code = ("import torch\n"
            "from peftlab import measure\n"
            "high = measure.peak_rss_bytes()\n"
            "assert high > 0\n"
            "if measure.reset_peak_rss():\n"
            "    after = measure.peak_rss_bytes()\n"
            "    assert after <= high, (after, high)\n"
            "    big = torch.ones(256 * 1024 * 1024 // 4)   # written: the pages are resident\n"
            "    grown = measure.peak_rss_bytes() - after\n"
            "    assert grown >= 200 * 1024 * 1024, grown\n"
            "print('ok')\n")
    proc = timing.run([sys.executable, "-c", code], "the peak-RSS subprocess", 120,
                      capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
