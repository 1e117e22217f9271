"""PrefixViewer: how much each real token attends to the virtual tokens, per layer and head.

    viewer = pl.widgets.PrefixViewer(model, tokenizer)     # prefix- or prompt-tuned model
    viewer.text.value = "the film was a delight"           # type a sentence
    viewer.layer.value = 3; viewer.head.value = 0           # pick a layer / head ("mean")
    viewer.attention, viewer.tokens, viewer.mass            # the numbers behind the plots

pl.prefix.attention_to_prefix runs the model once (eager attention) and returns the
softmax probabilities a (L, H, T, P) from the T real tokens to the P virtual tokens. Each row
of softmax sums to 1 over prefix + text, so
    mass[l, h, t] = sum_p a[l, h, t, p]     (in [0, 1])
is the share of token t's attention that goes to the prefix rather than to the text. Left:
a[layer, head] as tokens x virtual tokens; right: mean mass per layer x head, with the
chosen cell boxed. A freshly initialised prefix already draws attention; training moves it.
"""

from __future__ import annotations

import ipywidgets as W
import numpy as np
from matplotlib.patches import Rectangle
from torch import nn

from peftlab.core.state import get_method
from peftlab.widgets._base import (
    WidgetBase,
    esc,
    image_widget,
    label_margin,
    new_figure,
    set_ticks,
    show_figure,
)

MEAN = "mean"
DEFAULT_TEXT = "a gripping, beautifully acted film"


class PrefixViewer(WidgetBase):
    """Attention from real tokens to virtual tokens for a sentence you type."""

    def __init__(self, model: nn.Module, tokenizer, text: str = DEFAULT_TEXT):
        if get_method(model) not in ("prefix", "prompt"):
            raise ValueError(f"PrefixViewer needs a model with pl.prefix.apply(model, "
                             f"PrefixConfig(...)) or pl.prompt.apply(model, PromptConfig(...)); "
                             f"this one carries "
                             f"{get_method(model) or 'no method'}.")
        self.model, self.tokenizer = model, tokenizer
        self.text = W.Text(value=text, description="sentence", continuous_update=False,
                           layout=W.Layout(width="60%"))
        self.layer = W.Dropdown(options=[MEAN], value=MEAN, description="layer")
        self.head = W.Dropdown(options=[MEAN], value=MEAN, description="head")
        self.info, self.image = W.HTML(), image_widget()
        self.text.observe(lambda _: self.run(), names="value")
        for w in (self.layer, self.head):
            w.observe(lambda _: self._draw(), names="value")
        self.widget = W.VBox([self.text, W.HBox([self.layer, self.head]), self.info,
                              self.image])
        self.run()

    def run(self, text: str | None = None) -> None:
        """Run the model on the sentence (the Text widget's, or `text`) and redraw."""
        if text is not None and text != self.text.value:
            self.text.value = text          # the observer calls run() again
            return
        if not self.text.value.strip():
            self.info.value = "<i>type a sentence</i>"
            return
        from peftlab.prefix import attention_to_prefix
        res = attention_to_prefix(self.model, self.tokenizer, self.text.value)
        self.attention = res["attention"].numpy()           # (L, H, T, P)
        self.mass = res["prefix_mass"].numpy()              # (L, H, T)
        self.tokens = list(res["tokens"])
        self.num_virtual_tokens = int(res["num_virtual_tokens"])
        L, H = self.attention.shape[:2]
        self._quiet = True
        if len(self.layer.options) != L + 1:
            self.layer.options = [MEAN] + list(range(L))
        if len(self.head.options) != H + 1:
            self.head.options = [MEAN] + list(range(H))
        self._quiet = False
        self._draw()

    def selected(self) -> np.ndarray:
        """(T, P) attention for the chosen layer and head (averaged where "mean")."""
        a = self.attention
        a = a.mean(0) if self.layer.value == MEAN else a[self.layer.value]       # (H, T, P)
        return a.mean(0) if self.head.value == MEAN else a[self.head.value]       # (T, P)

    def summary(self) -> str:
        m = self.mass.mean(-1)                                                    # (L, H)
        l, h = np.unravel_index(int(m.argmax()), m.shape)
        return (f"{len(self.tokens)} tokens x {self.num_virtual_tokens} virtual tokens; share "
                f"of attention on the prefix: mean {100 * m.mean():.1f}%, highest "
                f"{100 * m.max():.1f}% (layer {l}, head {h})")

    def _draw(self) -> None:
        if getattr(self, "_quiet", False) or not hasattr(self, "attention"):
            return
        self.info.value = f"<b>PrefixViewer</b> · {esc(self.summary())}"
        show_figure(self.image, self.figure())

    def figure(self):
        a = self.selected()
        T, P = a.shape
        L, H = self.mass.shape[:2]
        # each panel gets room for its columns: ~0.3 in per virtual token, ~0.35 in per head
        width = min(16.0, max(9.0, 0.3 * P + 0.35 * H + 5.0))
        fig = new_figure(width, max(3.2, 0.22 * T + 1.2), layout=None)
        ax_a, ax_m = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(P, 4), max(H, 4)]})
        fig.subplots_adjust(left=label_margin(self.tokens, width), right=0.97, bottom=0.14,
                            top=0.88, wspace=0.3)
        im = ax_a.imshow(a, aspect="auto", cmap="Blues", vmin=0, interpolation="nearest")
        ax_a.set(title=f"layer {self.layer.value}, head {self.head.value}: token -> virtual",
                 xlabel="virtual token")
        fig.colorbar(im, ax=ax_a, label="attention probability")
        set_ticks(ax_a, "y", self.tokens)
        set_ticks(ax_a, "x", [f"v{p}" for p in range(P)])
        m = 100 * self.mass.mean(-1)                                              # (L, H)
        im2 = ax_m.imshow(m, aspect="auto", cmap="Oranges", vmin=0, interpolation="nearest")
        ax_m.set(title="% of attention on the prefix", xlabel="head", ylabel="layer")
        l0, l1 = (-0.5, L - 0.5) if self.layer.value == MEAN else \
            (self.layer.value - 0.5, self.layer.value + 0.5)
        h0, h1 = (-0.5, H - 0.5) if self.head.value == MEAN else \
            (self.head.value - 0.5, self.head.value + 0.5)
        ax_m.add_patch(Rectangle((h0, l0), h1 - h0, l1 - l0, fill=False, ec="black", lw=1.5))
        fig.colorbar(im2, ax=ax_m)
        set_ticks(ax_m, "x", range(H))
        set_ticks(ax_m, "y", range(L))
        return fig
