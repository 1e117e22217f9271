"""The methods `peftlab train` can apply, their command-line options and default learning
rates (the rates `peftlab compare` found to work on the embedded model)."""

from __future__ import annotations

LEARNING_RATES = {"lora": 3e-3, "adalora": 3e-2, "prefix": 3e-2, "prompt": 3e-2,
                  "selection": 1e-3, "full": 1e-4, "head": 1e-2, "bitfit": 1e-3}
METHODS = tuple(LEARNING_RATES)
DEFAULT_TARGETS = ["query", "value"]


def describe(s: dict) -> str:
    """One line naming the method and its main options, e.g. 'lora r=8 alpha=16 on query,value'."""
    m = s["method"]
    targets = ",".join(s.get("targets") or DEFAULT_TARGETS)
    if m == "lora":
        return f"lora r={s['r']} alpha={s['alpha'] or 2 * s['r']:g} on {targets}"
    if m == "adalora":
        return f"adalora rank {s['r']} -> {s['target_r'] or max(1, s['r'] // 2)} on {targets}"
    if m in ("prefix", "prompt"):
        return f"{m} with {s['virtual_tokens']} virtual tokens"
    if m == "selection":
        return f"selection of {s['fraction']:.2%} of the weights"
    return {"full": "full fine-tuning", "head": "head only", "bitfit": "BitFit"}[m]


def apply_method(model, tokenizer, s: dict, train_split, total_steps: int) -> None:
    """Apply the method named in settings `s` to `model` (in place). A bad option raises
    ValueError before the model changes (each method's apply validates first)."""
    import peftlab as pl

    m = s["method"]
    targets = s.get("targets") or DEFAULT_TARGETS
    alpha = s.get("alpha") or 2 * s["r"]
    if m == "lora":
        pl.lora.apply(model, pl.lora.LoraConfig(r=s["r"], alpha=alpha, dropout=s["dropout"],
                                                targets=targets))
    elif m == "adalora":
        tinit, tfinal = max(0, total_steps // 10), max(1, total_steps // 5)
        if tinit + tfinal >= total_steps:           # very short runs: no warm-up phase
            tinit, tfinal = 0, 1
        pl.adalora.apply(model, pl.adalora.AdaLoraConfig(
            init_r=s["r"], target_r=s.get("target_r") or max(1, s["r"] // 2), targets=targets,
            total_steps=max(2, total_steps), tinit=tinit, tfinal=tfinal, alpha=alpha,
            dropout=s["dropout"]))
    elif m == "prefix":
        pl.prefix.apply(model, pl.prefix.PrefixConfig(num_virtual_tokens=s["virtual_tokens"]))
    elif m == "prompt":
        pl.prompt.apply(model, pl.prompt.PromptConfig(num_virtual_tokens=s["virtual_tokens"],
                                                      seed=s["seed"]), tokenizer=tokenizer)
    elif m == "selection":
        cfg = pl.selection.SelectionConfig(fraction=s["fraction"], per_example=False,
                                           max_batches=8, seed=s["seed"])
        loader = train_split.loader(tokenizer, batch_size=s["batch_size"], shuffle=True,
                                    seed=s["seed"] + 1, max_length=s["max_length"])
        batches = [b for b, _ in zip(loader, range(cfg.max_batches))]
        pl.selection.apply(model, cfg, batches=batches, loss_fn=pl.train.loss_fn)
    elif m in ("full", "head", "bitfit"):
        pl.full.apply(model, pl.full.FullConfig(mode={"full": "all"}.get(m, m)))
    else:
        raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
