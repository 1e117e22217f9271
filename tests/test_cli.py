"""The command line: train / evaluate / predict / compare --data / --version; bad options and
bad data give one line and exit code 2 before any training; run folders are never
half-written; --resume ends with the same adapter as an uninterrupted run. The README's
"Your own data" commands run as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import timing
import torch

import peftlab as pl
from peftlab import cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "data" / "examples"


# --- a tiny base model folder (fast), and data ---------------------------------------------------

@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A 2-layer BERT without a head, and a word-level tokenizer, saved as a model folder:
    what --base-model takes. Its vocabulary covers the example data."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = set()
    for f in ("topics.csv", "topics_test.csv"):
        for line in (EXAMPLES / f).read_text().splitlines()[1:]:
            words.update(line.rsplit(",", 1)[0].split())
    folder = tmp_path_factory.mktemp("tiny_base")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def train_args(tiny_base, out, *extra):
    return ["train", "--data", str(EXAMPLES / "topics.csv"), "--text-column", "sentence",
            "--label-column", "topic", "--base-model", str(tiny_base), "--epochs", "2",
            "--lr", "1e-2", "--dropout", "0.1", "--out", str(out), *extra]


def exit_line(argv, capsys):
    """(exit code, stderr) of a command that must stop in argparse's way."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    return e.value.code, capsys.readouterr().err


# --- the happy path -------------------------------------------------------------------------

def test_train_evaluate_predict(tiny_base, tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs" / "topics"
    assert cli.main(train_args(tiny_base, out, "--checkpoint-every", "5")) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and str(out) in printed
    assert not (tmp_path / "runs" / "topics.partial").exists()
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "checkpoints", "history.jsonl",
                                                     "run.json"]
    info = pl.io.read_json(out / "run.json")
    assert info["status"] == "done" and info["data"]["label_names"] == ["food", "sport", "tech"]
    total = info["total_steps"]
    assert total == 2 * -(-len(pl.data.load_dataset(EXAMPLES / "topics.csv",
                                                    text_column="sentence",
                                                    label_column="topic").train) // 16)
    rows = pl.train.read_history(out / "history.jsonl")
    assert [r["step"] for r in rows if r["type"] == "step"] == list(range(1, total + 1))
    epochs = [r for r in rows if r["type"] == "epoch"]
    assert len(epochs) == 2 and all("eval_accuracy" in r for r in epochs)
    meta = pl.io.read_json(out / "adapter" / pl.io.CONFIG_FILE)
    assert meta["label_names"] == ["food", "sport", "tech"]
    for f in (out / "adapter").iterdir():                  # not mkstemp's 0600
        assert f.stat().st_mode & 0o777 == 0o644, f
    # evaluate: the run's own columns and label names; per-label lines
    assert cli.main(["evaluate", "--model", str(out), "--data",
                     str(EXAMPLES / "topics_test.csv")]) == 0
    text = capsys.readouterr().out
    assert re.match(r"accuracy \d\.\d{4} on 18 examples", text)
    assert all(f"  {n}" in text for n in ("food", "sport", "tech"))
    # predict: stdin and --input give one JSON line per non-empty line
    src = tmp_path / "in.txt"
    src.write_text("the stew was lovely\n\nthe marathon was slow\n")
    assert cli.main(["predict", "--model", str(out), "--input", str(src)]) == 0
    lines = [pl.io.files.json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["text"] for x in lines] == ["the stew was lovely", "the marathon was slow"]
    for x in lines:
        assert x["label"] in ("food", "sport", "tech")
        assert set(x["probabilities"]) == {"food", "sport", "tech"}
        assert abs(sum(x["probabilities"].values()) - 1) < 1e-4
    # the same answers as pl.predict on the model loaded by hand
    model, tok = pl.models.text_classifier(3, name=tiny_base)
    pl.load_adapter(model, out / "adapter")
    assert model.config.id2label == {0: "food", 1: "sport", 2: "tech"}
    assert pl.predict(model, tok, [x["text"] for x in lines]).labels == \
        [x["label"] for x in lines]


def test_resume_gives_the_same_adapter_as_an_uninterrupted_run(tiny_base, tmp_path, capsys):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli.main(train_args(tiny_base, whole)) == 0
    assert cli.main(train_args(tiny_base, parts, "--stop-after", "7")) == 0
    err = capsys.readouterr().err
    assert "stopped at step 7" in err and f"--resume {parts}" in err
    assert not parts.exists() and (tmp_path / "parts.partial" / "checkpoints").is_dir()
    code, err = exit_line(["evaluate", "--model", str(parts), "--data",
                           str(EXAMPLES / "topics_test.csv")], capsys)
    assert code == 2 and "has not finished (interrupted at step 7" in err
    assert cli.main(["train", "--resume", str(parts)]) == 0
    a = pl.io.read_tensors(whole / "adapter" / pl.io.WEIGHTS_FILE)
    b = pl.io.read_tensors(parts / "adapter" / pl.io.WEIGHTS_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [r["loss"] for r in pl.train.read_history(whole / "history.jsonl") if r["type"] == "step"]
    lb = [r["loss"] for r in pl.train.read_history(parts / "history.jsonl") if r["type"] == "step"]
    assert la == lb
    code, err = exit_line(["train", "--resume", str(parts)], capsys)
    assert code == 2 and "has finished" in err


def test_ctrl_c_stops_at_a_step_with_a_checkpoint(tiny_base, tmp_path, monkeypatch, capsys):
    log_step = pl.train.HistoryLog.on_step_end

    def press_ctrl_c(self, state):
        log_step(self, state)
        if state.step == 3:
            signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(pl.train.HistoryLog, "on_step_end", press_ctrl_c)
    assert cli.main(train_args(tiny_base, tmp_path / "r")) == 130
    info = pl.io.read_json(tmp_path / "r.partial" / "run.json")
    assert (info["status"], info["step"]) == ("interrupted", 3)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_failures_never_leave_a_half_written_run(tiny_base, tmp_path, monkeypatch, capsys):
    old = tmp_path / "r"
    assert cli.main(train_args(tiny_base, old, "--epochs", "0.5")) == 0
    before = (old / "adapter" / pl.io.WEIGHTS_FILE).read_bytes()

    def boom_at(step):
        def on_step_end(self, state):
            if state.step == step:
                raise RuntimeError("disk on fire")
        return on_step_end
    # fails before its first checkpoint: nothing is kept, the old run is untouched
    monkeypatch.setattr(pl.train.HistoryLog, "on_step_end", boom_at(2))
    assert cli.main(train_args(tiny_base, old, "--overwrite", "--checkpoint-every", "4")) == 1
    assert "disk on fire" in capsys.readouterr().err
    assert not (tmp_path / "r.partial").exists()
    assert (old / "adapter" / pl.io.WEIGHTS_FILE).read_bytes() == before
    # fails after a checkpoint: the partial run is kept, marked failed, resumable
    monkeypatch.setattr(pl.train.HistoryLog, "on_step_end", boom_at(6))
    assert cli.main(train_args(tiny_base, tmp_path / "s", "--checkpoint-every", "4")) == 1
    info = pl.io.read_json(tmp_path / "s.partial" / "run.json")
    assert info["status"] == "failed" and "disk on fire" in info["error"]
    assert not (tmp_path / "s").exists()


# --- bad options and bad data: one line, exit 2, nothing written --------------------------------

def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("make_argv, words", [
    (lambda t, b: ["train", "--data", "x.csv"], "required: --out"),
    (lambda t, b: train_args(b, t / "o", "--epochs", "-1"), "argument --epochs: must be > 0"),
    (lambda t, b: train_args(b, t / "o", "--method", "lorax"), "argument --method: invalid"),
    (lambda t, b: train_args(b, write(t / "file", "x")), "exists and is a file"),
    (lambda t, b: train_args(b, write(t / "file", "x") / "sub"), "is a file, so"),
    (lambda t, b: train_args(b, Path("/proc/peftlab-out")), "cannot write to /proc"),
    (lambda t, b: train_args(b, t / "o", "--text-column", "text"),
     "no text column 'text'"),
    (lambda t, b: ["train", "--data", str(write(t / "e.csv", "")), "--out", str(t / "o")],
     "the file is empty"),
    (lambda t, b: ["train", "--data", str(write(t / "one.csv", "text,label\n" + "hi,a\n" * 12)),
                   "--out", str(t / "o")], "at least two classes"),
    (lambda t, b: train_args(b, t / "o", "--labels", "food,sport"), "unknown label 'tech'"),
    (lambda t, b: train_args(b, t / "o", "--targets", "nothing_here"), "argument --method lora"),
    (lambda t, b: train_args(b, t / "o", "--base-model", str(t / "nope")),
     "argument --base-model"),
    (lambda t, b: ["evaluate", "--model", str(t / "nope"), "--data", "x.csv"],
     "argument --model: "),
    (lambda t, b: ["predict", "--model", str(t), "--input", str(t / "missing.txt")],
     "argument --input"),
    (lambda t, b: ["compare", "--methods", "lora,nope"], "unknown method 'nope'"),
    (lambda t, b: ["compare", "--out", str(write(t / "f", "x"))], "exists and is a file"),
    (lambda t, b: ["compare", "--data", str(EXAMPLES / "topics.csv")], "no text column"),
    (lambda t, b: ["compare", "--task", "vision", "--data", "x.csv"], "goes with --task text"),
])
def test_bad_input_is_one_line_and_exit_2(make_argv, words, tiny_base, tmp_path, capsys):
    argv = make_argv(tmp_path, tiny_base)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = exit_line(argv, capsys)
    assert code == 2 and words in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before      # nothing written


def test_existing_run_folder_is_refused_unless_overwrite(tiny_base, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    code, err = exit_line(train_args(tiny_base, tmp_path / "o"), capsys)
    assert code == 2 and "pass --overwrite" in err
    (tmp_path / "p.partial").mkdir()
    code, err = exit_line(train_args(tiny_base, tmp_path / "p"), capsys)
    assert code == 2 and "unfinished run" in err and "--resume" in err
    code, err = exit_line(["train", "--resume", str(tmp_path / "q"), "--lr", "0.1"], capsys)
    assert code == 2 and "drop --lr" in err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "report.csv").write_text("old")
    code, err = exit_line(["compare", "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "--overwrite" in err


def test_unknown_label_in_evaluation(tiny_base, tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(train_args(tiny_base, out, "--epochs", "0.5")) == 0
    bad = write(tmp_path / "bad.csv", "sentence,topic\nthe stew was odd,drinks\n")
    code, err = exit_line(["evaluate", "--model", str(out), "--data", str(bad)], capsys)
    assert code == 2 and "line 2: unknown label 'drinks'" in err and "food, sport, tech" in err


def test_device_cuda_without_cuda_is_a_cli_message(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for cmd in (["compare"], ["train"]):
        code, err = exit_line([*cmd, "--device", "cuda"], capsys)
        assert code == 2 and "CUDA is not available on this machine" in err
        assert "device='cpu'" not in err                        # not Python-API words


def test_methods_are_deduplicated_version_and_help(capsys):
    parser, subs = cli.build_parser()
    assert parser.parse_args(["compare", "--methods", "lora,lora,head"]).methods == ["lora",
                                                                                     "head"]
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"peftlab {pl.__version__}"
    for command in ("train", "evaluate", "predict", "compare"):
        assert "examples:" in subs[command].format_help()
    assert "examples:" in parser.format_help()


def test_compare_on_your_data(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(pl.data.DATASET_ENV, raising=False)
    out = tmp_path / "cmp"
    code = cli.main(["compare", "--quick", "--methods", "head", "--data",
                     str(EXAMPLES / "topics.csv"), "--text-column", "sentence",
                     "--label-column", "topic", "--out", str(out), "--no-plot"])
    assert code == 0
    report = pl.io.read_json(out / "report.json")
    assert report["rows"][0]["status"] == "ok"
    assert report["rows"][0]["train_size"] == 64              # --quick on the user's 115 rows
    assert pl.data.DATASET_ENV not in os.environ               # handed over, then removed


# --- the README's section, command by command ---------------------------------------------------

def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- own-data -->", 1)[1].split("<!-- /own-data -->", 1)[0]
    body = block.split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [" ".join(line.split()) for line in body.splitlines() if line.strip()]


def test_readme_own_data_section_runs_as_written(tmp_path):
    commands = readme_commands()
    assert [c.split()[1] if c.startswith("peftlab") else "pipe" for c in commands] == \
        ["train", "evaluate", "pipe", "train", "train"]
    shutil.copytree(EXAMPLES, tmp_path / "data" / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    outputs = []
    for command in commands:
        proc = timing.run(["bash", "-c", command], f"the README command `{command}`", 600,
                          cwd=tmp_path, env=env, text=True, capture_output=True)
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
        outputs.append(proc.stdout)
    assert re.match(r"accuracy \d\.\d{4} on 18 examples", outputs[1])
    row = pl.io.files.json.loads(outputs[2])
    assert row["text"] == "the chef burnt the toast" and row["label"] == "food"
    a = pl.io.read_tensors(tmp_path / "runs/topics/adapter" / pl.io.WEIGHTS_FILE)
    b = pl.io.read_tensors(tmp_path / "runs/topics2/adapter" / pl.io.WEIGHTS_FILE)
    assert all(torch.equal(a[k], b[k]) for k in a)          # resumed == uninterrupted


def test_example_data_generator_is_deterministic():
    before = {f: (EXAMPLES / f).read_bytes() for f in ("topics.csv", "topics_test.csv")}
    subprocess.run([sys.executable, str(EXAMPLES / "make_topics.py")], check=True,
                   capture_output=True)
    assert before == {f: (EXAMPLES / f).read_bytes() for f in before}


def test_train_precision_bf16_without_cpu_support_runs_fp32_and_records_it(
        tiny_base, tmp_path, capsys, monkeypatch):
    """Issue 20: --precision is a run setting; on a CPU without bf16 instructions the run says
    so in one line, trains in fp32, and run.json records what ran and the CPU's capability."""
    monkeypatch.setenv("PEFTLAB_CPU_BF16", "0")
    out = tmp_path / "bf16"
    with pytest.warns(UserWarning, match="no bf16 instructions"):
        assert cli.main(train_args(tiny_base, out, "--epochs", "0.5",
                                   "--precision", "bf16")) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["settings"]["precision"] == "bf16" and info["precision"] == "fp32"
    assert info["cpu"]["supported"] is False and "isa" in info["cpu"]
