"""The chat command line: `peftlab train --task chat` on a user's JSONL, then `peftlab chat`
and `peftlab evaluate` on its run folder; --resume continues an interrupted chat run to the
same adapter; bad input is refused (one line, exit code 2) before training; `peftlab compare
--task chat` on a tiny model writes a report that reads back.

A tiny Llama (tests/chat_fixtures.py: GQA, RoPE, RMSNorm, tied head) with the real SmolLM2
tokenizer, saved as a model folder: what --base-model takes. The real model's numbers are in
the committed compare report (notebooks/results/compare_chat/)."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch
from chat_fixtures import tiny_chat_model

import peftlab as pl
from peftlab import cli

WORDS = ("apple", "river", "stone", "cloud", "tiger", "maple", "ocean", "piano", "lemon",
         "candle", "rocket", "violet")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    model, tok = tiny_chat_model(seed=0)
    folder = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    """A user's instruction data: prompt/response lines (the 80/10/10 split is seeded)."""
    path = tmp_path_factory.mktemp("data") / "my_chats.jsonl"
    rows = [{"prompt": f"Repeat the word {w}.", "response": w} for w in WORDS * 3]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def train_argv(folder, data, out, *extra):
    return ["train", "--task", "chat", "--data", str(data), "--base-model", str(folder),
            "--epochs", "2", "--batch-size", "4", "--lr", "1e-2", "--out", str(out), *extra]


def exit_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    return e.value.code, capsys.readouterr().err


def _adapter(folder):
    from safetensors.torch import load_file
    return load_file(str(folder / "adapter" / pl.io.WEIGHTS_FILE))


def test_train_chat_then_chat_and_evaluate_end_to_end(tiny_folder, chats, tmp_path, capsys,
                                                      monkeypatch):
    out = tmp_path / "runs" / "chat"
    assert cli.main(train_argv(tiny_folder, chats, out)) == 0
    printed = capsys.readouterr().out
    assert "test exact match" in printed and f"peftlab chat --model {out}" in printed
    info = pl.io.read_json(out / "run.json")
    assert info["task"] == "chat" and info["status"] == "done"
    assert info["settings"]["targets"] == ["all-linear"]          # the chat default placement
    assert info["data"]["sizes"] == {"train": 30, "validation": 3, "test": 3}
    assert 0.0 <= info["test"]["exact_match"] <= 1.0 and info["test"]["n"] == 3
    assert info["total_steps"] == 2 * -(-30 // 4)
    # peftlab chat: one plain answer line per non-empty input line, the run's own model
    monkeypatch.setattr(sys, "stdin", io.StringIO("Repeat the word apple.\n\nRepeat the "
                                                  "word river.\n"))
    assert cli.main(["chat", "--model", str(out), "--max-new-tokens", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    model, tok = pl.models.chat_model(tiny_folder)
    pl.load_adapter(model, out / "adapter")
    expect = pl.generate(model, tok, ["Repeat the word apple.", "Repeat the word river."],
                         max_new_tokens=5)
    assert lines == [e.replace("\n", " ") for e in expect]
    # --json: one object per message
    src = tmp_path / "msgs.txt"
    src.write_text("Repeat the word apple.\n", encoding="utf-8")
    assert cli.main(["chat", "--model", str(out), "--input", str(src), "--json",
                     "--max-new-tokens", "5"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rows == [{"message": "Repeat the word apple.", "answer": expect[0],
                     "finish": rows[0]["finish"]}] and rows[0]["finish"] in ("stop", "length")
    # evaluate: exact match and loss on a chat file
    assert cli.main(["evaluate", "--model", str(out), "--data", str(chats), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 36 and 0.0 <= result["exact_match"] <= 1.0 and result["loss"] > 0


def test_resume_continues_a_chat_run_to_the_same_adapter(tiny_folder, chats, tmp_path, capsys):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert cli.main(train_argv(tiny_folder, chats, whole)) == 0
    assert cli.main(train_argv(tiny_folder, chats, cut, "--stop-after", "5",
                               "--checkpoint-every", "3")) == 0
    assert not cut.exists() and (tmp_path / "cut.partial").is_dir()
    assert pl.io.read_json(tmp_path / "cut.partial" / "run.json")["status"] == "interrupted"
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(cut)]) == 0
    assert "resuming" in capsys.readouterr().err
    a, b = _adapter(whole), _adapter(cut)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_bad_chat_input_is_refused_before_training(tiny_folder, chats, tmp_path, capsys):
    text = tmp_path / "texts.csv"
    text.write_text("text,label\n" + "".join(f"a {w},{i % 2}\n" for i, w in
                                             enumerate(WORDS * 2)), encoding="utf-8")
    cases = [
        (["train", "--task", "chat", "--data", str(text), "--base-model", str(tiny_folder),
          "--out", str(tmp_path / "x")], "holds no conversations"),
        (["train", "--task", "text", "--data", str(chats), "--out", str(tmp_path / "x")],
         "holds conversations"),
        (train_argv(tiny_folder, chats, tmp_path / "x", "--max-length", "16"),
         "keeps every conversation whole"),
        (train_argv(tiny_folder, chats, tmp_path / "x", "--label-column", "topic"),
         "no text or label columns"),
        (train_argv(tiny_folder, chats, tmp_path / "x", "--method", "head"),
         "no classification head"),
        (train_argv(tiny_folder, chats, tmp_path / "x", "--targets", "query"),
         "argument --method lora"),
        (["compare", "--task", "chat", "--data", str(text), "--out", str(tmp_path / "c")],
         "is not chat data"),
        (["compare", "--task", "chat", "--methods", "lora,nope", "--out", str(tmp_path / "c")],
         "unknown method 'nope'"),
    ]
    for argv, needle in cases:
        code, err = exit_line(argv, capsys)
        assert code == 2 and needle in err, (argv, err)
        assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_chat_and_predict_refuse_the_other_kind_of_run(tiny_folder, chats, tmp_path, capsys):
    out = tmp_path / "chat"
    assert cli.main(train_argv(tiny_folder, chats, out, "--epochs", "1")) == 0
    code, err = exit_line(["predict", "--model", str(out)], capsys)
    assert code == 2 and "is a chat run" in err and "peftlab chat" in err
    text_run = tmp_path / "text"
    text_run.mkdir()
    (text_run / "run.json").write_text(json.dumps({**pl.io.read_json(out / "run.json"),
                                                   "task": "text"}))
    (text_run / "adapter").mkdir()
    code, err = exit_line(["chat", "--model", str(text_run)], capsys)
    assert code == 2 and "needs a chat run" in err


def test_compare_chat_quick_on_a_tiny_model_writes_a_report_that_reads_back(tmp_path):
    report = pl.compare.run(["base", "lora", "ia3"], task="chat", quick=True,
                            model_fn=tiny_chat_model)
    rows = {r["method"]: r for r in report.rows}
    assert list(rows) == ["base", "lora", "ia3"] and all(r["status"] == "ok" for r in rows.values())
    assert rows["base"]["trainable"] == 0 and rows["base"]["steps"] == 0
    assert rows["lora"]["trainable"] > rows["ia3"]["trainable"] > 0
    assert rows["lora"]["step_time_ratio"] == 1.0
    for r in rows.values():
        assert r["test_n"] == 16 and r["retention_n"] == 8
        assert 0.0 <= r["exact_match"] <= 1.0 and 0.0 <= r["retention"] <= 1.0
    assert rows["lora"]["held_out_loss"] < rows["base"]["held_out_loss"]
    table = report.table()
    assert "retain" in table and "lora" in table
    paths = report.write(tmp_path)
    back = pl.compare.Report.load(tmp_path)
    assert type(back).__name__ == "ChatReport" and back.table() == table
    header = paths["csv"].read_text().splitlines()[0].split(",")
    assert "exact_match" in header and "retention" in header
    with pytest.raises(ValueError, match="Unknown method"):
        pl.compare.run(["nope"], task="chat", model_fn=tiny_chat_model)


def test_compare_task_chat_from_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pl.models, "chat_model", lambda *a, **k: tiny_chat_model())
    out = tmp_path / "cmp"
    assert cli.main(["compare", "--task", "chat", "--quick", "--methods", "base,lora",
                     "--out", str(out), "--no-plot"]) == 0
    printed = capsys.readouterr().out
    assert "retain" in printed and f"{out}" in printed
    back = pl.compare.Report.load(out)
    assert [r["method"] for r in back.rows] == ["base", "lora"]
    assert back.settings["budget"] == {"train_size": 480, "epochs": 1, "lr": 0.0,
                                       "batch_size": 8}
