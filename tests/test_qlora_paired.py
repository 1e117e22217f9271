"""The committed paired-seed reports of QLoRA against LoRA (notebook 11 reads them): the same
seeds, data budget, rank, targets and rate for both methods, so each difference is the NF4
base's alone; and the measurement of the NF4 base before training."""

import json
from pathlib import Path

import pytest

from peftlab.compare import Report

RESULTS = Path(__file__).resolve().parents[1] / "notebooks" / "results"


@pytest.mark.parametrize("folder, metric, seeds", [("qlora_paired_text", "test_accuracy", 5),
                                                   ("qlora_paired_chat", "exact_match", 3)])
def test_the_pairs_differ_only_in_the_base(folder, metric, seeds):
    report = Report.load(RESULTS / folder)
    lora, qlora = report.row("lora"), report.row("qlora")
    for key in ("seeds", "train_size", "epochs", "batch_size", "steps", "lr", "trainable"):
        assert lora[key] == qlora[key], (folder, key, lora[key], qlora[key])
    assert lora["seeds"] == ";".join(str(s) for s in range(seeds))
    for row in (lora, qlora):
        runs = [float(x) for x in str(row[f"{metric}_runs"]).split(";")]
        assert len(runs) == seeds and abs(sum(runs) / seeds - row[metric]) < 1e-4


def test_the_nf4_base_is_measured_against_the_base_it_rounds():
    data = json.loads((RESULTS / "qlora_paired_chat" / "nf4_base_retention.json").read_text())
    rows = {r["setting"]: r for r in data["rows"]}
    assert rows["base (Q4_1, dequantized)"]["retention"] == 1.0      # what retention means
    assert all(r["n"] == 33 for r in rows.values())
    assert {(r["block_size"], r["double_quant"]) for r in rows.values()} == {
        (None, None), (64, True), (64, False), (32, True)}
