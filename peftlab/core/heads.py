"""The one rule for what counts as a model's output head, used by every method.

    head_names(model)      every head module holding parameters: a module whose last name is
                           in HEAD_NAMES (or whose parent's is: RoBERTa's classifier.dense),
                           or the model's output embeddings (an LM's lm_head)
    default_heads(model)   the heads a method trains by default next to its adapter
                           (modules_to_save=None; head-only and BitFit): the task head, never
                           an LM's output embeddings and never a module whose weights are tied
                           to another module's

A tied LM head (GPT-2's lm_head shares its weight with the input embeddings wte) is never made
trainable behind the user's back: training it would move the input embeddings too. Name it in
modules_to_save to train it on purpose.
"""

from __future__ import annotations

from torch import nn

# last name components that mark a classification / LM output head
HEAD_NAMES = ("classifier", "score", "lm_head", "fc", "head", "heads", "qa_outputs")


def output_embeddings(model: nn.Module) -> nn.Module | None:
    """The model's output embeddings (an LM head), or None."""
    if not hasattr(model, "get_output_embeddings"):
        return None
    try:
        return model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None


def is_head(name: str, model: nn.Module | None = None) -> bool:
    """True for the output head: a module named like HEAD_NAMES, or the model's output embeddings."""
    last = name.rsplit(".", 1)[-1]
    parts = name.split(".")
    if last in HEAD_NAMES or (len(parts) >= 2 and parts[-2] in HEAD_NAMES):
        return True
    out = output_embeddings(model) if model is not None else None
    return out is not None and dict(model.named_modules()).get(name) is out


def head_names(model: nn.Module) -> list[str]:
    """Names of the output-head modules that hold parameters (e.g. ['classifier'])."""
    out = []
    for n, m in model.named_modules():
        if n and is_head(n, model) and any(True for _ in m.parameters(recurse=False)):
            if not any(n.startswith(o + ".") for o in out):
                out.append(n)
    return out


def tied_to(model: nn.Module, name: str) -> str | None:
    """The name of a parameter outside module `name` that shares a tensor with it, or None."""
    mine = {id(p) for p in model.get_submodule(name).parameters()}
    prefix = name + "."
    for n, p in model.named_parameters(remove_duplicate=False):
        if id(p) in mine and not n.startswith(prefix):
            return n
    return None


def default_heads(model: nn.Module) -> list[str]:
    """The heads trained by default: head_names minus LM output embeddings and tied modules."""
    out_emb = output_embeddings(model)
    return [n for n in head_names(model)
            if model.get_submodule(n) is not out_emb and tied_to(model, n) is None]


def tied_heads(model: nn.Module) -> dict[str, str]:
    """{head name: the parameter it is tied to} for heads left out of default_heads by a tie."""
    return {n: t for n in head_names(model) if (t := tied_to(model, n)) is not None}
