"""TokenProbs: how an adapter changes a chat model's next-token probabilities, token by token.

    probs = pl.widgets.TokenProbs(model, tokenizer, "Extract the name, city and day: ...")
    probs                                    # a sentence box, an answer box, a position slider
    probs.position.value = 3                 # pick an answer token
    probs.rows()                             # the numbers: one dict per answer token
    probs.summary(), probs.figure()          # without a browser

The answer is scored by teacher forcing, the way training sees it: the conversation
(user message + answer) is rendered by the same ChatTemplate as training, run through the
model once, and the answer's tokens are the supervised ones (its end-of-turn token included).
For the answer token y_t at position t, the logits at position t - 1 give

    p(y_t | everything before it) = softmax(logits[t - 1])[y_t]

once with the adapter and once without: inside `pl.disable_adapters(model)` (LoRA), or from a
`base` model you pass (any method). The answer is the reference you type, or, left empty,
the adapted model's own greedy answer (pl.generate). Left: p(y_t) per answer token with and
without the adapter (the chosen position boxed); right: the top-k next tokens at the chosen
position, with the adapter and without.
"""

from __future__ import annotations

import contextlib

import ipywidgets as W
import numpy as np
import torch
from torch import nn

from peftlab.core.state import eval_mode, get_method
from peftlab.widgets._base import (
    WidgetBase,
    esc,
    html_table,
    image_widget,
    new_figure,
    show_figure,
)

DEFAULT_PROMPT = "Extract the name, city and day: Anna flies to Oslo on Friday."


def show_token(text: str) -> str:
    """A token as a label: spaces as '·', line breaks as '\\n' (so ' Oslo' reads '·Oslo')."""
    return text.replace(" ", "·").replace("\n", "\\n") or "''"


class TokenProbs(WidgetBase):
    """Per answer token: its probability and the top-k next tokens, with and without the adapter.

    model: a causal LM carrying an adapter (LoRA, unless `base` is given). tokenizer: its
    tokenizer (with a chat template). prompt: the user message (a string) or a conversation
    without its answer. answer: the answer to score; None or "": the adapted model's greedy
    answer. base: a model without the adapter (default: `model` inside pl.disable_adapters).
    top_k: how many next tokens to list. system: the system prompt (the same default as
    training and pl.generate). max_new_tokens: the longest generated answer.
    """

    def __init__(self, model: nn.Module, tokenizer, prompt=DEFAULT_PROMPT, answer=None, *,
                 base: nn.Module | None = None, top_k: int = 5, system: str | None = None,
                 max_new_tokens: int = 32):
        from peftlab.data.template import DEFAULT_SYSTEM, ChatTemplate
        if base is None and get_method(model) != "lora":
            raise ValueError(f"TokenProbs compares the model with and without its adapter via "
                             f"pl.disable_adapters, which needs LoRA; this model carries "
                             f"{get_method(model) or 'no method'}. Pass base= a copy of the "
                             f"model without the adapter.")
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        self.model, self.tokenizer, self.base = model, tokenizer, base
        self.top_k, self.max_new_tokens = top_k, max_new_tokens
        self.template = ChatTemplate(tokenizer, system=DEFAULT_SYSTEM if system is None
                                     else system)
        from peftlab.data.template import as_messages
        self._conversation = as_messages(prompt, "prompt")
        if self._conversation[-1]["role"] != "user":
            raise ValueError("TokenProbs needs a conversation that ends with a user message "
                             "(the answer goes in `answer`).")
        text = self._conversation[-1]["content"]
        self.prompt = W.Text(value=text, description="sentence", continuous_update=False,
                             layout=W.Layout(width="80%"))
        self.answer = W.Text(value=answer or "", description="answer", continuous_update=False,
                             placeholder="empty: the adapted model's own answer",
                             layout=W.Layout(width="80%"))
        self.position = W.IntSlider(value=0, min=0, max=0, description="token",
                                    continuous_update=False)
        self.info, self.table, self.image = W.HTML(), W.HTML(), image_widget()
        for w in (self.prompt, self.answer):
            w.observe(lambda _: self.run(), names="value")
        self.position.observe(lambda _: self._draw(), names="value")
        self.widget = W.VBox([self.prompt, self.answer, self.position, self.info,
                              W.HBox([self.image, self.table])])
        self.run()

    # --- the numbers ---------------------------------------------------------------------------
    def messages(self) -> list[dict]:
        """The conversation without its answer (its last user message: the sentence box)."""
        return [*self._conversation[:-1], {"role": "user", "content": self.prompt.value}]

    def _without(self):
        if self.base is not None:
            return contextlib.nullcontext(self.base)
        from peftlab.lora.named import disable_adapters
        return disable_adapters(self.model)

    @torch.no_grad()
    def _probs(self, model: nn.Module, ids: list[int]) -> torch.Tensor:
        device = next(model.parameters()).device
        with eval_mode(model):
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0]
        return torch.log_softmax(logits.float(), dim=-1).cpu()      # (T, V) log-probabilities

    def run(self) -> None:
        """Score the answer (the box's, or the adapted model's own) and redraw."""
        if not self.prompt.value.strip():
            self.info.value = "<i>type a sentence</i>"
            return
        msgs = self.messages()
        reference = self.answer.value
        if not reference.strip():
            from peftlab.chat.generate import generate
            reference = generate(self.model, self.tokenizer, msgs, template=self.template,
                                 max_new_tokens=self.max_new_tokens)
        self.answer_text = reference
        self.generated = not self.answer.value.strip()
        ids, supervised = self.template.encode([*msgs, {"role": "assistant",
                                                        "content": reference}])
        where = [t for t, s in enumerate(supervised) if s]          # answer token positions
        before = [t - 1 for t in where]                 # the positions whose logits predict them
        with_lp = self._probs(self.model, ids)[before]              # (N, V)
        with self._without() as plain:
            without_lp = self._probs(plain, ids)[before]            # (N, V)
        self.ids, self.where = ids, where
        self.tokens = [self.label(ids[t]) for t in where]
        answer = torch.tensor([ids[t] for t in where])[:, None]     # (N, 1)
        self.logp_adapter = with_lp.gather(1, answer)[:, 0].double().numpy()
        self.logp_base = without_lp.gather(1, answer)[:, 0].double().numpy()
        self.p_adapter, self.p_base = np.exp(self.logp_adapter), np.exp(self.logp_base)
        self._dist = {"adapter": with_lp.exp(), "base": without_lp.exp()}   # (N, V) each
        self._top = {}
        for name, p in self._dist.items():
            val, idx = p.topk(self.top_k, dim=-1)                   # (N, k)
            self._top[name] = [[(int(i), float(v)) for v, i in zip(vs, ix)]
                               for vs, ix in zip(val, idx)]
        self._quiet = True
        self.position.max = len(where) - 1
        self.position.value = min(self.position.value, len(where) - 1)
        self._quiet = False
        self._draw()

    def label(self, token_id: int) -> str:
        """A token id as shown: decoded, spaces as '·' (show_token)."""
        return show_token(self.tokenizer.decode([int(token_id)]))

    def top(self, position: int, which: str = "adapter") -> list[tuple[str, float]]:
        """The top-k (token, probability) of the next-token distribution before answer token
        `position`, with the adapter ("adapter") or without ("base")."""
        return [(self.label(i), p) for i, p in self._top[which][position]]

    def rows(self) -> list[dict]:
        """One dict per answer token: position (in the answer), token, p_adapter, p_base (the
        probability of that token given everything before it), top_adapter, top_base (the
        top-k (token, probability) pairs of the next-token distribution there)."""
        return [{"position": i, "token": tok, "p_adapter": float(self.p_adapter[i]),
                 "p_base": float(self.p_base[i]), "top_adapter": self.top(i, "adapter"),
                 "top_base": self.top(i, "base")} for i, tok in enumerate(self.tokens)]

    def log_probs(self) -> tuple[float, float]:
        """(with the adapter, without): the answer's total log-probability, sum_t log p(y_t)."""
        return float(self.logp_adapter.sum()), float(self.logp_base.sum())

    def summary(self) -> str:
        """One line: the answer, its log-probability both ways, the token that moved most."""
        la, lb = self.log_probs()
        k = int(np.argmax(np.abs(self.logp_adapter - self.logp_base)))
        source = "the adapted model's own answer" if self.generated else "the given answer"
        return (f"{source} {self.answer_text!r}: {len(self.tokens)} tokens (end of turn "
                f"included); log p(answer) {la:.2f} with the adapter, {lb:.2f} without; moved "
                f"most: token {k} {self.tokens[k]!r}, p {self.p_base[k]:.3f} -> "
                f"{self.p_adapter[k]:.3f}")

    # --- the picture ---------------------------------------------------------------------------
    def _draw(self) -> None:
        if getattr(self, "_quiet", False) or not hasattr(self, "tokens"):
            return
        i = self.position.value
        self.info.value = f"<b>TokenProbs</b> · {esc(self.summary())}"
        rows = [[esc(a), f"{pa:.3f}", esc(b), f"{pb:.3f}"]
                for (a, pa), (b, pb) in zip(self.top(i, "adapter"), self.top(i, "base"))]
        self.table.value = (f"<b>token {i}</b> {esc(self.tokens[i])}: next-token top "
                            f"{self.top_k}<br>" + html_table(
                                ["with adapter", "p", "without", "p"], rows, {1, 3}))
        show_figure(self.image, self.figure())

    def figure(self):
        """p(answer token) with / without the adapter per position, and the chosen position's
        top-k next tokens both ways."""
        i, n = self.position.value, len(self.tokens)
        width = min(15.0, max(10.0, 0.4 * n + 6.0))
        fig = new_figure(width, 3.8, layout=None)
        ax, ax_k = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(n, 8), 7]})
        fig.subplots_adjust(left=0.06, right=0.98, bottom=0.28, top=0.9, wspace=0.3)
        x = np.arange(n)
        ax.bar(x - 0.2, self.p_base, 0.4, label="without adapter", color="#bbbbbb")
        ax.bar(x + 0.2, self.p_adapter, 0.4, label="with adapter", color="#1f77b4")
        ax.axvspan(i - 0.5, i + 0.5, color="orange", alpha=0.2)
        ax.set_xticks(x, self.tokens, rotation=60, ha="right", fontsize=8)
        ax.set(ylim=(0, 1.05), ylabel="p(answer token | before)",
               title="the answer, token by token (teacher forcing)")
        ids = list(dict.fromkeys([t for t, _ in self._top["adapter"][i]] +
                                 [t for t, _ in self._top["base"][i]]))   # both top-k lists
        y = np.arange(len(ids))
        ax_k.barh(y - 0.2, [float(self._dist["base"][i, t]) for t in ids], 0.4, color="#bbbbbb",
                  label="without adapter")
        ax_k.barh(y + 0.2, [float(self._dist["adapter"][i, t]) for t in ids], 0.4,
                  color="#1f77b4", label="with adapter")
        ax_k.legend(fontsize=8, loc="lower right")
        names = [self.label(t) for t in ids]
        ax_k.set_yticks(y, names, fontsize=8)
        ax_k.invert_yaxis()
        ax_k.set(xlim=(0, 1.05), xlabel="probability",
                 title=f"before token {i} ({self.tokens[i]}): top {self.top_k} next tokens")
        ax_k.title.set_fontsize(10)
        ax.title.set_fontsize(10)
        return fig
