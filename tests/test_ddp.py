"""Two CPU processes over gloo (torchrun) train the same adapter one process trains.

fit() under torchrun keeps the global batch: each process computes its half of every batch
and DistributedDataParallel averages the (weighted) gradients, so the steps are the same as
in one process. The saved adapter holds only the trainable tensors either way.
"""

from __future__ import annotations

import os
import sys
import textwrap

import timing
import torch
from safetensors.torch import load_file

import peftlab as pl

SCRIPT = textwrap.dedent('''
    import sys, torch
    from torch import nn
    import peftlab as pl

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(6, 12)
            self.mid = nn.Linear(12, 12)
            self.classifier = nn.Linear(12, 3)

        def forward(self, x):
            return self.classifier(torch.relu(self.mid(torch.relu(self.body(x)))))

    def data():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(20, 6, generator=g)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
        return torch.utils.data.TensorDataset(x, y)

    def model():
        torch.manual_seed(0)
        m = Net()
        pl.lora.apply(m, pl.lora.LoraConfig(r=2, targets=["body", "mid"]))
        with torch.no_grad():   # a non-zero start for B, so A gets gradients from step 1
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
        return m

    def train(out):
        m = model()
        # 20 examples, batch 8: batches of 8, 8 and 4 rows; half of each per process
        r = pl.train.fit(m, data(), data(), epochs=3, batch_size=8, lr=1e-2, progress=False,
                         device="cpu")
        if pl.train.is_main_process():
            pl.save_adapter(m, out)
            print("world", r.world_size, "steps", len(r.history), "acc", r.final["accuracy"])

    if __name__ == "__main__":
        train(sys.argv[1])
''')


def test_two_gloo_processes_save_the_single_process_adapter(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}
    env.pop("WORLD_SIZE", None)
    proc = timing.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_port=0", "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0",
         str(script), str(tmp_path / "ddp")], "the 2-process torchrun (gloo) training", 180,
        capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world 2 steps 9" in proc.stdout

    sys.path.insert(0, str(tmp_path))
    try:
        import ddp_train
        ddp_train.train(str(tmp_path / "single"))          # one process, the same data
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("ddp_train", None)

    ddp = load_file(str(tmp_path / "ddp" / "adapter_model.safetensors"))
    single = load_file(str(tmp_path / "single" / "adapter_model.safetensors"))
    assert ddp.keys() == single.keys()
    assert all("lora_" in k or k.startswith("classifier.") for k in ddp)   # trainable only
    start = pl.io.adapter_state_dict(ddp_train_model(tmp_path))
    for k in ddp:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-5, atol=1e-6, msg=k)
        assert not torch.allclose(ddp[k], start[k]), f"{k} did not train"


def ddp_train_model(tmp_path):
    sys.path.insert(0, str(tmp_path))
    try:
        import ddp_train
        return ddp_train.model()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("ddp_train", None)
