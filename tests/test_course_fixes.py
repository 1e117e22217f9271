"""Guards for the corrections of issue 35 ("nothing false"): each test reads the committed
notebooks (their source and stored outputs) or the course's markdown and fails if a false
statement comes back or the check that backs a corrected claim goes missing."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
SOL = NB_DIR / "solutions"
REPORT = NB_DIR / "results" / "compare_default" / "report.json"
FIXED = ["02_lora", "03_prefix_and_prompt_tuning", "04_gradient_based_selection", "06_comparison",
         "09_deploy_and_monitor"]


def cells(name: str) -> list[dict]:
    return json.loads((NB_DIR / f"{name}.ipynb").read_text(encoding="utf-8"))["cells"]


def source(cell: dict) -> str:
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def outputs(cell: dict) -> str:
    parts = []
    for out in cell.get("outputs", []):
        text = out.get("text", "") or out.get("data", {}).get("text/plain", "")
        parts.append("".join(text) if isinstance(text, list) else text)
    return "".join(parts)


def text(name: str) -> str:
    """Every cell's source of a notebook, joined."""
    return "\n".join(source(c) for c in cells(name))


def markdown(name: str) -> str:
    return "\n".join(source(c) for c in cells(name) if c["cell_type"] == "markdown")


def code_cell(name: str, *needles: str) -> dict:
    """The one code cell whose source holds every needle (fails if there is none)."""
    hits = [c for c in cells(name) if c["cell_type"] == "code" and all(n in source(c) for n in needles)]
    assert hits, f"{name}: no code cell holds {needles}"
    return hits[0]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def report_rows() -> dict:
    return {r["method"]: r for r in json.loads(read(REPORT))["rows"]}


# -- no printed False under a claim of equality ------------------------------------------------

@pytest.mark.parametrize("name", FIXED)
def test_no_stored_output_prints_false_under_a_claim(name):
    for c in cells(name):
        for line in outputs(c).splitlines():
            assert not re.search(r"(==|equal|same|restores)[^\n]*:\s*False\b", line), f"{name}: {line!r}"


# -- 1. notebook 02: merged vs unmerged logits ------------------------------------------------

def test_02_merge_is_asserted_with_a_relative_tolerance_and_checked_in_float64():
    merge = code_cell("02_lora", "pl.lora.merge(model)", "merged = model(**inputs).logits")
    assert "assert close" in source(merge) and "1e-4 * logit_scale" in source(merge)
    assert "merged logits == unmerged logits: False" not in outputs(merge)
    f64 = code_cell("02_lora", ".double()", "gap64")
    assert "assert gap64" in source(f64)
    out = outputs(f64)
    assert "fp32:    max |merged - unmerged|" in out and "float64: max |merged - unmerged|" in out
    gaps = [float(g) for g in re.findall(r"max \|merged - unmerged\| = ([0-9.e+-]+)", out)]
    assert len(gaps) == 2 and gaps[1] < gaps[0] / 1000, gaps


# -- 3. rsLoRA: the rank-stable scale is proportional to 1/sqrt(r) -----------------------------

def test_02_opening_states_rslora_correctly():
    opening = next(source(c) for c in cells("02_lora") if "## 1. The idea" in source(c))
    assert "proportional to\n$1/\\sqrt{r}$" in opening or "proportional to $1/\\sqrt{r}$" in opening
    assert "$\\alpha = 2r$ is no cure" in opening
    assert "roughly independent of $r$" not in opening


def test_02_measures_the_scale_against_the_rank_and_asserts_it():
    probe = code_cell("02_lora", "rslora=rslora", "probe[")
    src = source(probe)
    assert "ALPHA = (2, 8, 32), 16" in src.replace("RANKS, ", "")
    for check in ('assert probe[False, hi]["grad0"] < 0.5 * probe[False, lo]["grad0"]',
                  'assert probe[False, hi]["update"] < 0.6 * probe[False, lo]["update"]',
                  "assert max(vals) < 2 * min(vals)", "assert constant == sorted(constant)"):
        assert check in src, check
    out = outputs(probe)
    assert "alpha/sqrt(r)" in out and "alpha = 2r (scale 2 at every rank)" in out


def test_02_exercise_3_fixes_alpha_and_the_answer_says_why_2r_is_not_rank_stable():
    exercises = markdown("02_lora").split("## Exercises", 1)[1]
    assert "with `alpha = 2 * r`, then with `rslora=True`" not in exercises
    assert "*fixed* `alpha=16`" in exercises and "Why is `alpha = 2 * r` not rank-stable?" in exercises
    answer = read(SOL / "02_lora.md")
    assert "learn at similar speed" not in answer
    assert "rsLoRA removes that dependence" not in answer
    assert "not\nrank-stable" in answer or "not rank-stable" in answer
    assert "$\\propto 1/\\sqrt{r}$" in answer


def test_the_library_has_the_rslora_option_the_notebook_uses():
    import peftlab as pl
    from peftlab.lora.variants import lora_scale

    assert pl.lora.LoraConfig(rslora=True).rslora is True
    assert lora_scale(16, 4, rslora=True) == 8.0 and lora_scale(16, 4) == 4.0


def test_self_check_02_and_glossary_on_rslora():
    assert "why is $\\alpha = 2r$ no fix?" in read(NB_DIR / "SELF_CHECK.md")
    answers = read(SOL / "self_check_answers.md")
    assert "proportional to 1 / sqrt(r)" in answers and "alpha = 2r makes the scale the constant 2" in answers
    assert "$\\alpha = 2r$ (a constant scale) is not rank-stable" in read(NB_DIR / "GLOSSARY.md")


# -- intrinsic rank is a hypothesis; intrinsic dimension is not matrix rank ---------------------

def test_intrinsic_rank_is_a_hypothesis_and_not_aghajanyans_dimension():
    opening = next(source(c) for c in cells("02_lora") if "## 1. The idea" in source(c))
    assert "*hypothesise*" in opening
    assert not re.search(r"observed that the\s+updates", opening)
    assert "not the rank of any\nweight matrix" in opening
    glossary = read(NB_DIR / "GLOSSARY.md")
    assert "the observation (Aghajanyan et al., 2021; Hu et al., 2021)" not in glossary
    assert "not the rank of a matrix" in glossary and "their hypothesis" in glossary


# -- issue 31 in notebooks 01, 02, 04, 05: the redrawn validation split, the matched budget -----

MINE_31 = ["01_full_finetuning", "02_lora", "04_gradient_based_selection", "05_adaptive_budget_adalora"]
STALE_VALIDATION = ("in-distribution", "shares the training", "reuses the training", "uses the training words",
                    "saturates", "fits the training distribution", "from the training distribution",
                    "budgets (steps, learning rates) differ")


@pytest.mark.parametrize("name", MINE_31)
def test_no_prose_says_validation_shares_the_training_words(name):
    """Validation has held-out words and templates of its own (data/README.md, issue 31)."""
    for where in (markdown(name), read(SOL / f"{name}.md")):
        low = " ".join(where.lower().split())
        for stale in STALE_VALIDATION:
            assert stale not in low, (name, stale)


def test_self_check_04_on_validation_is_current():
    question = read(NB_DIR / "SELF_CHECK.md").split("## 04", 1)[1].split("## 05", 1)[0]
    answer = read(SOL / "self_check_answers.md").split("## 04", 1)[1].split("## 05", 1)[0]
    assert "validation accuracy is well above its test accuracy" not in question
    assert "Validation shares the templates" not in answer


def test_01_trains_full_and_head_on_the_reports_budget():
    rows = report_rows()
    budget = code_cell("01_full_finetuning", 'report.settings["budgets"]')
    assert "assert all(" in source(budget) and "75 steps" in outputs(budget)
    full = code_cell("01_full_finetuning", "full_result = pl.train.fit(")
    assert 'lr=budgets["full"]["lr"]' in source(full)
    assert f"FitResult(steps={rows['full']['steps']}," in outputs(full)
    heads = code_cell("01_full_finetuning", "probe_model = ")
    assert 'lr=budgets["head"]["lr"]' in source(heads)
    table = code_cell("01_full_finetuning", "majority = ")
    assert "train (seen)" in outputs(table) and "assert" in source(table)
    reads = code_cell("01_full_finetuning", 'report.row("full")', "test_accuracy_runs")
    full_runs = rows["full"]["test_accuracy_runs"]
    assert f"{rows['full']['test_accuracy']:.3f} ± {rows['full']['test_accuracy_std']:.3f}" in outputs(reads)
    assert (full_runs if isinstance(full_runs, str) else ";".join(map(str, full_runs)))[:6] in outputs(reads)


def test_02_trains_at_the_reports_budget_and_checks_it():
    rows = report_rows()
    runs = code_cell("02_lora", "LORA_LR, FULL_LR = ")
    lr = re.search(r"LORA_LR, FULL_LR = ([0-9.e-]+), ([0-9.e-]+)", source(runs))
    assert lr and (float(lr.group(1)), float(lr.group(2))) == (rows["lora_qv"]["lr"], rows["full"]["lr"])
    reads = code_cell("02_lora", "pl.compare.Report.load(REPORT)")
    assert "assert (rows[method]" in source(reads)
    for m in ("full", "lora", "lora_qv"):
        assert f"test accuracy {rows[m]['test_accuracy']:.3f} ± {rows[m]['test_accuracy_std']:.3f}" in outputs(reads)
    answer = read(SOL / "02_lora.md")
    for m in ("full", "lora", "lora_qv"):
        assert f"{rows[m]['test_accuracy']:.3f} ± {rows[m]['test_accuracy_std']:.3f}" in answer, m
    assert "the report has no\nrank sweep" not in answer and "the report has no rank sweep" not in answer


def test_04_gap_is_fit_minus_held_out_and_quotes_the_report():
    table = code_cell("04_gradient_based_selection", "train_acc, test_acc = {}, {}")
    assert "fit_acc - acc" in source(table) and "train acc" in outputs(table)
    reads = code_cell("04_gradient_based_selection", 'pl.compare.Report.load("results/compare_default")')
    rows = report_rows()
    for m in ("selection", "full"):
        assert f"{rows[m]['test_accuracy']:.3f} ± {rows[m]['test_accuracy_std']:.3f}" in outputs(reads), m
    assert "assert" in source(reads)


# -- 2. notebook 04: a fixed gradient mask under AdamW ----------------------------------------

def test_04_teaches_what_really_moves_masked_entries():
    t = text("04_gradient_based_selection")
    assert "its momentum keeps moving entries" not in t
    assert "AdamW's decay and momentum move" not in t
    assert "a masked gradient still lets unselected weights drift" not in t
    assert "momentum has nothing to carry" in t and "`weight_decay=0.0`" in t


def test_04_measures_the_drift_with_the_weight_decay_it_uses():
    cell = code_cell("04_gradient_based_selection", "register_hook", "for wd in (0.0, 0.01)")
    src = source(cell)
    for check in ("assert moments == 0.0", "assert moved == 0",
                  "assert torch.allclose(shrink, torch.full_like(shrink, (1 - LR * wd) **"):
        assert check in src, check
    out = outputs(cell)
    assert re.search(r"weight_decay=0\.0: .*unselected entries moved: 0;", out)
    moved = re.search(r"weight_decay=0\.01: .*unselected entries moved: ([\d,]+);", out)
    assert moved and int(moved.group(1).replace(",", "")) > 0
    runs = code_cell("04_gradient_based_selection", "pl.train.fit(", "weight_decay=0.01")
    assert "weight_decay=0.01" in source(runs)      # the value the prose and the drift cell use


def test_fit_default_weight_decay_is_zero_as_the_course_says():
    import peftlab as pl

    assert inspect.signature(pl.train.fit).parameters["weight_decay"].default == 0.0


def test_self_check_04_3_no_longer_blames_momentum():
    assert "Why is a gradient mask not enough" not in read(NB_DIR / "SELF_CHECK.md")
    answers = read(SOL / "self_check_answers.md")
    assert "its momentum keeps moving entries after their gradient is zero" not in answers
    assert "Only AdamW's decoupled weight decay" in answers


# -- 8. diff pruning learns its mask ---------------------------------------------------------

def test_diff_pruning_learns_its_mask_during_training():
    t = text("04_gradient_based_selection")
    row = next(line for line in t.splitlines() if line.startswith("| Diff pruning"))
    assert "chosen up front" not in row and "learned during training" in row and "hard-concrete" in row
    assert "FISH, GPS, SPT and diff pruning are the" not in t
    assert "(FISH masks, GPS, SPT, diff pruning)" not in t
    ref = next(line for line in read(NB_DIR / "REFERENCES.md").splitlines() if "Diff pruning" in line)
    assert "learned during training" in ref


# -- GPS: the row formula and its loss; Molchanov's criterion; author lists ---------------------

def test_04_gps_row_matches_the_library_and_names_the_papers_loss():
    t = text("04_gradient_based_selection")
    row = next(line for line in t.splitlines() if line.startswith("| GPS"))
    assert "accumulated $\\lvert g\\rvert$" not in row
    assert "\\lvert\\sum_b \\bar g_b\\rvert" in row and "contrastive" in row


def test_grad_score_is_the_magnitude_of_the_accumulated_gradient():
    import torch
    from torch import nn

    import peftlab as pl

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(3)]

    def loss(m, b):
        return nn.functional.cross_entropy(m(b[0]), b[1])

    got = pl.selection.compute_scores(model, batches, loss_fn=loss, kind="grad")["weight"]
    grads = [torch.autograd.grad(loss(model, b), [model.weight])[0] for b in batches]
    assert torch.allclose(got, (sum(grads) / len(grads)).abs(), atol=1e-6)
    assert not torch.allclose(got, sum(g.abs() for g in grads) / len(grads), atol=1e-6)


def test_molchanov_is_the_squared_first_order_term():
    t = text("04_gradient_based_selection")
    assert "(the pruning criterion of Molchanov et al., 2019)" not in t
    assert "$(g \\cdot w)^2$" in t
    ref = next(line for line in read(NB_DIR / "REFERENCES.md").splitlines() if "Molchanov" in line)
    assert "(g \\cdot w)^2" in ref and "The first-order $|w \\cdot g|$ criterion" not in ref


def test_references_author_lists_of_gps_and_spt():
    refs = read(NB_DIR / "REFERENCES.md").splitlines()
    gps = next(line for line in refs if line.startswith("- **GPS**"))
    spt = next(line for line in refs if line.startswith("- **SPT**"))
    assert "Zhang, Wang, Zhang, Xu, Li" not in gps
    for name in ("Zhi Zhang", "Qizhe Zhang", "Zijun Gao", "Renrui Zhang", "Ekaterina Shutova", "Shiji Zhou",
                 "Shanghang Zhang"):
        assert name in gps, name
    assert "He, Zhang, Zhuang, Hao, Cai" not in spt
    for name in ("Haoyu He", "Jianfei Cai", "Jing Zhang", "Dacheng Tao", "Bohan Zhuang"):
        assert name in spt, name


# -- 4. notebook 06: no rank claim without a number -----------------------------------------

def test_06_makes_no_rank_claim_the_report_cannot_back():
    rows = report_rows()
    assert all(rows[m]["description"].startswith("r=8 ") for m in ("lora", "lora_qv"))   # one rank only
    for where in (text("06_comparison"), read(SOL / "06_comparison.md"), read(SOL / "02_lora.md")):
        assert "matters more than its rank" not in where
        assert "matters more than their rank" not in where
        assert "*where* LoRA sits matters more" not in where
    src = source(code_cell("06_comparison", "def pts(m):"))
    for check in ('assert len(budgets) == 1',
                  'assert abs(pts("lora") - pts("full")) < 2 and abs(pts("adalora") - pts("full")) < 2',
                  'assert pts("lora_qv") - pts("lora") < -sd("lora_qv")',
                  'assert pts("prefix") < pts("lora_qv")'):
        assert check in src, check


# -- 5, 6, 9. notebook 03: the conclusion agrees with the report ------------------------------

def test_03_conclusion_agrees_with_the_report():
    t = markdown("03_prefix_and_prompt_tuning")
    assert "prefix and prompt tuning trail LoRA and full fine-tuning" not in t
    assert "both prefix and prompt tuning trail LoRA" not in t
    rows = report_rows()
    for m in ("prefix", "lora_qv"):
        quoted = f"{rows[m]['test_accuracy']:.3f} ± {rows[m]['test_accuracy_std']:.3f}"
        assert quoted in t, quoted                       # the prose quotes the report as it is
    assert "75 steps" in t and "mean-pooling head" in t and "`[CLS]`" in t
    assert rows["prefix"]["steps"] == rows["lora_qv"]["steps"] == 75     # one matched budget (issue 31)
    assert rows["prefix"]["test_accuracy"] < rows["lora_qv"]["test_accuracy"]
    assert "prefix tuning trails query/value LoRA" in t and "agrees" in t
    reads = code_cell("03_prefix_and_prompt_tuning", 'pl.compare.Report.load("results/compare_default")')
    assert "prefix" in outputs(reads) and "lora_qv" in outputs(reads)
    assert "prefix_2ep  150 steps" in outputs(reads)           # the labelled second row, its own report


def test_03_prompt_tuning_below_the_majority_class_is_said_to_have_not_learned():
    cell = code_cell("03_prefix_and_prompt_tuning", "majority = ")
    assert 'assert next(r for r in rows if r["method"] == "prompt P=10")["test"] <= majority' in source(cell)
    out = outputs(cell)
    majority = float(re.search(r"majority class scores ([0-9.]+)", out).group(1))
    prompt = float(re.search(r"prompt P=10 ([0-9.]+)", out).group(1))
    assert prompt <= majority and "prompt P=10" in out and "did not learn in this run" in out
    assert "did not learn" in markdown("03_prefix_and_prompt_tuning")


def test_03_says_lora_shares_the_base_too_and_gives_the_adapter_size():
    t = markdown("03_prefix_and_prompt_tuning")
    assert "a few tens of kilobytes" not in t and "a few kilobytes" not in t
    assert "the base model is shared untouched across tasks" not in t
    assert "LoRA, too, leaves the base frozen and shared" in t
    kib = round(report_rows()["prefix"]["adapter_bytes"] / 1024, 1)
    assert f"{kib} KiB" in t


# -- 7 and the per-layer count: notebook 03 -------------------------------------------------

def test_03_counts_per_layer_total_and_2l():
    t = markdown("03_prefix_and_prompt_tuning")
    assert not re.search(r"Per layer that is[^.]*46,080", t)
    assert "$L$ times fewer than a prefix" not in t
    assert "$2L = 12$ times fewer" in t
    cell = code_cell("03_prefix_and_prompt_tuning", "n_prefix == 2 * 6 * n_prompt")
    assert "12x = 2 x 6 layers" in outputs(cell)
    per_layer = code_cell("03_prefix_and_prompt_tuning", "per layer: 2 x 10 x 384 =")
    assert "per layer: 2 x 10 x 384 = 7680" in outputs(per_layer)


# -- memory units -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["02_lora", "04_gradient_based_selection", "06_comparison",
                                  "09_deploy_and_monitor"])
def test_binary_byte_labels_are_explained(name):
    t = markdown(name)
    assert "binary units" in t and "KiB" in t, name


# -- notebook 09: the recovery's uncertainty -------------------------------------------------

def test_09_recovery_comes_with_its_uncertainty():
    cell = code_cell("09_deploy_and_monitor", "recovery: v2 answers", "bootstrap")
    out = outputs(cell)
    assert re.search(r"\([+-]\d+\.\d points\); before the drift", out)
    assert re.search(r"95% paired bootstrap interval \[[+-]\d+\.\d, [+-]\d+\.\d\] points", out)
    assert "standard error" in out and ("the interval excludes 0" in out or "the interval includes 0" in out)
    assert "training noise" in markdown("09_deploy_and_monitor")


# -- stale text in the answer key ------------------------------------------------------------

def test_no_stale_issue_text_in_the_answer_key():
    for path in sorted(SOL.glob("*.md")):
        assert "issue 14" not in read(path), path.name
        assert "when issue" not in read(path), path.name


def test_no_tracker_numbers_in_what_learners_read():
    """'Until issue 31 ...' means nothing to a learner: no notebook, answer or course page names
    an issue number."""
    pages = [p for p in NB_DIR.glob("*.md")] + sorted(SOL.glob("*.md"))
    found = [p.name for p in pages if re.search(r"\bissue \d+", read(p), re.I)]
    found += [p.stem for p in sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
              if re.search(r"\bissue \d+", text(p.stem), re.I)]
    assert not found, found


# -- notebooks 13 and 14, the reviewer's read -------------------------------------------------

def test_13_names_the_collapse_class_and_cawley_talbot_right():
    t = text("13_choosing_settings")
    assert "majority-class accuracy" not in t          # 0.49 is the minority class
    assert "the minority class of validation" in t
    assert "selection bias in performance evaluation" in t
    answer = read(SOL / "13_choosing_settings.md")
    assert "collapses to the majority class" not in answer and "0.810 against 0.945" in answer


def test_14_asserts_orcas_rule_only_with_join_wait_off_and_describes_the_engine_it_runs():
    """The engine may hold a lone newcomer join_wait steps (default 2); notebook 14 asserts
    'a waiting request gets a free slot at the next step', so it must turn that off."""
    nb = cells("14_serve_chat")
    code = "\n".join(source(c) for c in nb if c["cell_type"] == "code")
    assert "server.engine.join_wait = 0" in code and "waiting[:free]" in code
    t = text("14_serve_chat")
    assert "computes it per group of rows" not in t    # the stacked adapters are the default
    assert "chat_lora.py" in t and "chat_kernels.py" in t and "chat_prefix.py" in t
    assert "must be the reference's, token for token" not in t
    assert "2.25 times one of 1 row" not in t


CHECK_PRINT = re.compile(r"(==|match|same|equal|identical|unchanged|base output)[^\n]*\b(True|False)\b",
                         re.I)


def test_a_cell_that_prints_a_check_asserts_it():
    """A cell that prints the outcome of a check ("...: True") asserts it, or nbval compares its
    output (# NBVAL_CHECK_OUTPUT): a false claim then fails the notebook instead of printing False."""
    loose = []
    for path in sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb")):
        for i, c in enumerate(cells(path.stem)):
            if c["cell_type"] != "code":
                continue
            printed = "".join("".join(o.get("text", "")) for o in c.get("outputs", [])
                              if o.get("output_type") == "stream")
            if CHECK_PRINT.search(printed) and "assert" not in source(c) \
                    and not source(c).startswith("# NBVAL_CHECK_OUTPUT"):
                loose.append(f"{path.stem} cell {i}")
    assert not loose, loose


def test_00_05_review_fixes_stay_fixed():
    t3, t4 = text("03_prefix_and_prompt_tuning"), text("04_gradient_based_selection")
    assert "validation (in-distribution)" not in t3 and "closes part of the gap" not in t3
    assert 'top[0].module == "bert.pooler.dense"' in t4          # where the budget goes, checked
    assert "the head is the hottest of all" not in t4 and "Exercise 2 halves it" not in t4
    assert "chose on the validation split." not in text("01_full_finetuning")
    assert "kept.min() >= dropped.max()" in text("05_adaptive_budget_adalora")
    assert "168,960 LoRA parameters" in read(SOL / "02_lora.md")
    s4 = read(SOL / "04_gradient_based_selection.md")
    assert "61,044 entries" in s4 and "usually the last blocks' output projections" not in s4
