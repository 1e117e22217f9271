"""Room for new methods: one registration per method, one apply skeleton, one unload.

A toy method package installed from a temporary folder (a dist-info with an entry point in
the group "peftlab.methods") shows up as pl.toy, as a `peftlab train --method` choice, as a
`peftlab compare` row and in save/load, in this process and in a fresh one. Every registered
method's apply -> unload(merge=False) gives the base model back bit for bit, and
modules_to_save=[] means "no head" for all of them. `import peftlab` loads only its facade.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import timing
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

import peftlab as pl
from peftlab import compare  # noqa: F401  (its tables are built at import: before the toy)
from peftlab.core import registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "data" / "examples"

TOY_INIT = '''
"""toy: LayerNorm tuning, a method outside peftlab (for peftlab's registry test)."""
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from peftlab.core.adapt import Plan, adapt, heads_for
from peftlab.core.state import get_method, restore, unmark


@dataclass
class ToyConfig:
    """Train every LayerNorm's gain and bias.

    modules_to_save: heads trained next to them (peftlab's one heads rule).
    """

    method = "toy"
    modules_to_save: list | None = None


def apply(model, config=None):
    """Unfreeze the LayerNorms (and the head); returns the model."""
    config = config or ToyConfig()

    def plan():
        norms = [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)]
        if not norms:
            raise ValueError("toy needs a model with LayerNorm layers")
        keep = [f"{n}.{p}" for n in norms for p, _ in model.get_submodule(n).named_parameters()]
        return Plan(norms, heads_for(model, config.modules_to_save, norms, "a toy"), keep=keep,
                    parts=keep)

    def attach(p):
        params = dict(model.named_parameters())
        for n in p.parts:
            params[n].requires_grad_(True)

    return adapt(model, "toy", config, plan, attach)


def unload(model, merge=False):
    """The base back (merge=False) or the tuned model (merge=True), plain."""
    if get_method(model) != "toy":
        raise ValueError("not a toy model")
    if not merge:
        restore(model)
    for p in model.parameters():
        p.requires_grad_(False)
    unmark(model)
    return model


def tiny_text_model():
    """A tiny BERT with the embedded tokenizer, for `compare` in a test."""
    import peftlab as pl
    tok = AutoTokenizer.from_pretrained(str(pl.models.default_text_model_path()))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                     num_labels=2)
    return BertForSequenceClassification(cfg).eval(), tok
'''

TOY_SPEC = '''
"""The toy method's one registration."""
from peftlab.core.methodspec import CompareEntry, MethodSpec, TrainEntry


def describe(s):
    return "toy LayerNorm tuning"


def build(model, tokenizer, s, train_split, total_steps):
    import toy_peft
    toy_peft.apply(model, toy_peft.ToyConfig())


def build_compare(model, ctx):
    import toy_peft
    toy_peft.apply(model, toy_peft.ToyConfig())


SPEC = MethodSpec(name="toy", module="toy_peft", config="ToyConfig", order=90,
                  train=(TrainEntry("toy", 1e-2, describe, build),),
                  compare=(CompareEntry("toy", "text", "LayerNorm gains + head", 1e-2,
                                        build_compare),))
'''


def make_toy(folder: Path) -> Path:
    """A toy method package and its dist-info (what pip would install) under `folder`."""
    pkg = folder / "toy_peft"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(TOY_INIT))
    (pkg / "spec.py").write_text(textwrap.dedent(TOY_SPEC))
    info = folder / "toy_peft-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-peft\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[peftlab.methods]\ntoy = toy_peft.spec:SPEC\n")
    (info / "RECORD").write_text("")
    return folder


@pytest.fixture
def toy(tmp_path, monkeypatch):
    folder = make_toy(tmp_path / "site")
    monkeypatch.syspath_prepend(str(folder))
    importlib.invalidate_caches()
    registry.refresh()
    yield folder
    monkeypatch.undo()
    for m in [m for m in sys.modules if m == "toy_peft" or m.startswith("toy_peft.")]:
        del sys.modules[m]
    vars(pl).pop("toy", None)
    registry.refresh()
    assert "toy" not in registry.names()


def tiny_bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).eval()


# --- a method from outside, by one entry point ------------------------------------------------

def test_an_installed_toy_method_is_everywhere(toy, tmp_path, capsys):
    from peftlab import cli
    from peftlab.compare import methods as cm

    assert "toy" in registry.names() and registry.spec("toy").module == "toy_peft"
    assert pl.toy is importlib.import_module("toy_peft")
    model = tiny_bert()
    x = torch.randint(0, 100, (2, 6))
    want = model(x).logits
    pl.toy.apply(model, pl.toy.ToyConfig())
    assert pl.core.get_method(model) == "toy"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("LayerNorm" in n or n.startswith("classifier") for n in trainable)
    with torch.no_grad():
        model.bert.embeddings.LayerNorm.weight.add_(0.5)
    pl.save_adapter(model, tmp_path / "toy_adapter")
    meta = json.loads((tmp_path / "toy_adapter" / "peftlab_adapter.json").read_text())
    assert meta["method"] == "toy"
    loaded = pl.load_adapter(tiny_bert(), tmp_path / "toy_adapter")
    assert torch.equal(loaded(x).logits, model(x).logits)
    assert not torch.equal(loaded(x).logits, want)

    assert "toy" in cm.rows("text")                    # a compare row, with the task's budget
    assert cm.rows("text")["toy"].budget.train_size == cm.DATA["text"].train_size
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "toy" in capsys.readouterr().out            # a --method choice


def test_the_toy_method_in_a_fresh_process(toy, tmp_path):
    """`peftlab train --method toy` and `compare` (worker processes included) in a new
    interpreter that finds the toy only through its entry point."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(toy), str(ROOT)])}
    script = textwrap.dedent(f"""
        import sys
        import peftlab as pl
        from peftlab import cli
        assert "toy" in pl.core.registry.names()
        base = sys.argv[1]
        code = cli.main(["train", "--data", {str(EXAMPLES / 'topics.csv')!r},
                         "--text-column", "sentence", "--label-column", "topic",
                         "--base-model", base, "--method", "toy", "--epochs", "1",
                         "--out", {str(tmp_path / 'run')!r}])
        assert code == 0, code
        import toy_peft
        rep = pl.compare.run(["toy"], quick=True, model_fn=toy_peft.tiny_text_model,
                             device="cpu", interleave=False)
        row = rep.rows[0]
        assert row["method"] == "toy" and row["status"] == "ok", row
        print("toy ok", row["trainable"])
    """)
    base = _tiny_base(tmp_path / "base")
    done = timing.run([sys.executable, "-c", script, str(base)],
                      "the toy plugin's train + compare subprocess", 900, env=env, cwd=tmp_path,
                      capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "toy ok" in done.stdout
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["settings"]["method"] == "toy" and info["status"] == "done"


def _tiny_base(folder: Path) -> Path:
    """A 2-layer BERT folder with a word-level tokenizer covering the example data."""
    from transformers import BertModel, BertTokenizerFast

    words = set()
    for f in ("topics.csv", "topics_test.csv"):
        for line in (EXAMPLES / f).read_text().splitlines()[1:]:
            words.update(line.rsplit(",", 1)[0].split())
    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_broken_plugin_is_skipped_with_a_warning(tmp_path, monkeypatch):
    folder = make_toy(tmp_path / "site")
    (folder / "toy_peft" / "spec.py").write_text("raise ImportError('toy is broken')\n")
    monkeypatch.syspath_prepend(str(folder))
    importlib.invalidate_caches()
    try:
        with pytest.warns(UserWarning, match="toy.*failed to load.*toy is broken"):
            registry.refresh()
        assert "toy" not in registry.names() and "lora" in registry.names()
    finally:
        monkeypatch.undo()
        sys.modules.pop("toy_peft", None)
        sys.modules.pop("toy_peft.spec", None)
        registry.refresh()


# --- the same apply / unload contract for every registered method ----------------------------

def small_split():
    ds = pl.data.load_dataset()
    return ds.train.subset(32, 0)


def tiny_text_model():
    tok = AutoTokenizer.from_pretrained(str(pl.models.default_text_model_path()))
    return tiny_bert_with_vocab(tok.vocab_size), tok


def tiny_bert_with_vocab(vocab: int):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                     num_labels=2)
    return BertForSequenceClassification(cfg).eval()


SETTINGS = {"r": 2, "alpha": None, "dropout": 0.0, "targets": None, "target_r": None,
            "virtual_tokens": 3, "fraction": 0.01, "seed": 0, "batch_size": 8,
            "max_length": 16,
            "keep_base": True}   # qlora: keep the float originals, so unload is bit for bit


@pytest.mark.parametrize("choice", list(registry.train_entries()))
def test_apply_then_unload_gives_the_base_back_bit_for_bit(choice):
    """Each `peftlab train --method` choice, built the way the CLI builds it, then
    unload(model) (merge=False, the one default) without training: the base state dict,
    bit for bit, and a plain model."""
    spec, entry = registry.train_entries()[choice]
    model, tok = tiny_text_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    entry.build(model, tok, {**SETTINGS, "method": choice}, small_split(), 10)
    assert pl.core.get_method(model) == spec.name
    registry.method_module(spec.name).unload(model)
    assert pl.core.get_method(model) is None
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert [k for k in before if not torch.equal(after[k], before[k])] == []


def test_unload_default_is_merge_false_everywhere():
    import inspect
    for name in registry.names():
        param = inspect.signature(registry.method_module(name).unload).parameters["merge"]
        assert param.default is False, name


def empty_heads_config(name: str):
    """Each registered method's config with modules_to_save=[] (+ apply's extra arguments)."""
    module = registry.method_module(name)
    cls = getattr(module, registry.spec(name).config)
    kw = {"full": {"mode": "bitfit"}, "adalora": {"total_steps": 10, "tinit": 1, "tfinal": 2},
          "selection": {"targets": ["query"], "fraction": 0.001}}   # the head: never a candidate
    cfg = cls(**kw.get(name, {}), modules_to_save=[])
    extra = {}
    if name == "selection":
        model, tok = tiny_text_model()
        batches = [b for b, _ in zip(small_split().loader(tok, batch_size=8, max_length=16),
                                     range(2))]
        extra = {"batches": batches, "loss_fn": pl.train.loss_fn}
    return module, cfg, extra


@pytest.mark.parametrize("name", registry.names())
def test_empty_modules_to_save_means_no_head_for_every_method(name):
    module, cfg, extra = empty_heads_config(name)
    model, tok = tiny_text_model()
    module.apply(model, cfg, **extra)
    assert pl.core.get_config(model).modules_to_save == []
    assert not model.classifier.weight.requires_grad, name    # (BitFit still trains biases)
    default = dataclasses.replace(cfg, modules_to_save=None)
    fresh, _ = tiny_text_model()
    module.apply(fresh, default, **extra)
    assert pl.core.get_config(fresh).modules_to_save == ["classifier"]
    assert all(p.requires_grad for p in fresh.classifier.parameters()), name


def test_full_unload_after_training_says_the_weights_are_gone():
    model, _ = tiny_text_model()
    base = copy.deepcopy(model)
    pl.full.apply(model, pl.full.FullConfig())
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight.add_(0.1)   # "training"
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="original weights are gone.*keep_base=True"):
        pl.full.unload(model)
    assert pl.core.get_method(model) == "full"                       # nothing changed
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    pl.full.unload(model, merge=True)                                 # the tuned model, plain
    assert pl.core.get_method(model) is None

    kept = copy.deepcopy(base)
    pl.full.apply(kept, pl.full.FullConfig(keep_base=True))
    with torch.no_grad():
        for p in kept.parameters():
            p.add_(0.01)
    pl.full.unload(kept)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in kept.state_dict().items())


def test_methods_that_cannot_merge_say_why_in_one_place():
    for name, spec in registry.specs().items():
        if spec.mergeable:
            continue
        model, tok = tiny_text_model()
        registry.train_entries()[name][1].build(model, tok, {**SETTINGS, "method": name},
                                                small_split(), 10)
        with pytest.raises(ValueError, match=spec.cannot_merge[:30]):
            registry.method_module(name).unload(model, merge=True)
        assert pl.core.get_method(model) == name                     # refused before a change
        with pytest.raises(ValueError, match="cannot be merged"):
            pl.export_merged(model, "unused")


def test_the_derived_tables_match_the_registry():
    from peftlab.commands import methods as cm
    from peftlab.io import hf_peft

    assert hf_peft.peft_types() == {"LORA": "lora", "ADALORA": "adalora",
                                    "PREFIX_TUNING": "prefix", "PROMPT_TUNING": "prompt",
                                    "IA3": "ia3"}
    assert cm.names() == ("full", "head", "bitfit", "lora", "qlora", "prefix", "prompt",
                          "bottleneck", "bottleneck_parallel", "selection", "adalora", "ia3")
    assert cm.learning_rate("lora") == 3e-3
    assert pl.compare.methods.defaults("text") == ["full", "head", "lora", "lora_qv", "prefix",
                                                   "prompt", "selection", "adalora"]
    assert list(pl.compare.TEXT_METHODS) == ["full", "head", "lora", "lora_qv", "dora", "vera",
                                             "qlora", "prefix", "prefix_2ep", "prompt",
                                             "bottleneck",
                                             "bottleneck_parallel", "selection", "adalora", "ia3"]
    with pytest.raises(ValueError, match="Unknown peftlab method 'nope'.*known: full"):
        registry.spec("nope")


# --- lazy imports ------------------------------------------------------------------------------

def test_import_peftlab_loads_only_what_its_top_level_needs():
    code = textwrap.dedent("""
        import sys
        import peftlab as pl
        own = sorted(m for m in sys.modules if m == "peftlab" or m.startswith("peftlab."))
        print(len(own), ",".join(own), "torch" in sys.modules)
        pl.core.registry.specs()                   # the scan reads spec files only
        methods = [m for m in sys.modules if m in ("peftlab.lora", "peftlab.full",
                                                   "peftlab.selection", "peftlab.prefix")]
        print(methods)
        pl.lora.LoraConfig                          # first use imports the method
        print("peftlab.lora" in sys.modules, "peftlab.compare" in sys.modules)
    """)
    out = timing.run([sys.executable, "-c", code], "a fresh `import peftlab` subprocess", 600,
                     capture_output=True, text=True, cwd=ROOT, check=True).stdout.splitlines()
    count, names, torch_loaded = out[0].split(" ")
    assert int(count) <= 12, names
    assert out[1] == "[]", "the registry scan imported a method package"
    assert out[2] == "True False"
