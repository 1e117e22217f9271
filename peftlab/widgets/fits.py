"""FitExplorer: will fine-tuning this model fit a 16 GB laptop, a 24 GB or a 48 GB GPU?

    fx = pl.widgets.FitExplorer()                 # the shipped 1B / 7B / 70B configs + embedded models
    fx.model.value = "Llama-2-7B"; fx.method.value = "qlora"; fx.checkpointing.value = True
    fx.answer()                                   # {"16 GB laptop": True, "24 GB GPU": True, ...}
    fx.rows(), fx.summary(), fx.figure()

Every number comes from pl.estimate (peftlab/fit_estimate.py): weights, gradients, optimizer
state, activations saved for backward, and the largest temporary (logits, attention scores,
a checkpointed layer's recompute). The table compares every method at the chosen batch,
sequence length and checkpointing; QLoRA always uses an NF4 base with double quantization,
the others the chosen precision. Nothing is loaded or trained: configs only.
"""

from __future__ import annotations

from pathlib import Path

import ipywidgets as W

from peftlab.fit_estimate import GB, METHODS, estimate
from peftlab.widgets._base import WidgetBase, esc, html_table, image_widget, new_figure, show_figure

CONFIGS = Path(__file__).resolve().parents[2] / "data" / "model_configs"
BUDGETS = {"16 GB laptop": 16 * GB, "24 GB GPU": 24 * GB, "48 GB GPU": 48 * GB}
# SmolLM2-135M-Instruct's architecture (the embedded chat model), so nothing needs loading
CHAT_CONFIG = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
               "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
               "vocab_size": 49152, "tie_word_embeddings": True}
PARTS = ("weights", "gradients", "optimizer", "activations", "temporaries")


def default_models() -> dict:
    """{label: config}: the embedded chat and text models and the shipped model configs."""
    models = {"SmolLM2-135M (chat model)": CHAT_CONFIG}
    from peftlab.models.checksums import ModelNotFoundError
    from peftlab.models.text import default_text_model_path
    try:                                          # the text model's package may be missing
        models["MiniLM-L6 (text model)"] = str(default_text_model_path() / "config.json")
    except (ModelNotFoundError, OSError):
        models.pop("MiniLM-L6 (text model)", None)
    names = {"llama-3.2-1b": "Llama-3.2-1B", "llama-2-7b": "Llama-2-7B", "llama-2-70b": "Llama-2-70B"}
    for stem, label in names.items():
        if (CONFIGS / f"{stem}.json").is_file():
            models[label] = str(CONFIGS / f"{stem}.json")
    return models


class FitExplorer(WidgetBase):
    """Model, method, precision, batch, length, checkpointing -> the memory bill and the
    answer per budget, for the chosen method and for every method side by side."""

    def __init__(self, models: dict | None = None, model: str | None = None,
                 method: str = "lora", precision: str = "bf16", batch_size: int = 1,
                 seq_len: int = 512, checkpointing: bool = False, r: int = 16):
        self.models = dict(models or default_models())
        if not self.models:
            raise ValueError("FitExplorer needs at least one model config ({label: config}).")
        model = model or next(iter(self.models))
        if model not in self.models:
            raise ValueError(f"FitExplorer: no model {model!r}; choose one of {list(self.models)}")
        self.model = W.Dropdown(options=list(self.models), value=model, description="model")
        self.method = W.Dropdown(options=list(METHODS), value=method, description="method")
        self.precision = W.Dropdown(options=["fp32", "bf16", "fp16"], value=precision,
                                    description="precision")
        self.batch = W.BoundedIntText(value=batch_size, min=1, max=4096, description="batch")
        self.seq_len = W.BoundedIntText(value=seq_len, min=1, max=131072, description="seq len")
        self.checkpointing = W.Checkbox(value=checkpointing, description="checkpointing")
        self.r = r
        self.info, self.table, self.image = W.HTML(), W.HTML(), image_widget()
        controls = (self.model, self.method, self.precision, self.batch, self.seq_len,
                    self.checkpointing)
        for c in controls:
            c.observe(lambda _: self.update(), names="value")
        self.widget = W.VBox([W.HBox([self.model, self.method, self.precision]),
                              W.HBox([self.batch, self.seq_len, self.checkpointing]),
                              self.info, self.image, self.table])
        self.update()

    # --- browser-free API -------------------------------------------------------------------
    def estimate(self, method: str | None = None):
        """pl.estimate for the current controls (and `method`, default the chosen one)."""
        method = method or self.method.value
        return estimate(self.models[self.model.value], method,
                        None if method == "qlora" else self.precision.value, r=self.r,
                        batch_size=self.batch.value, seq_len=self.seq_len.value,
                        checkpointing=self.checkpointing.value)

    def answer(self, method: str | None = None) -> dict[str, bool]:
        """{budget: fits?} for the chosen (or given) method."""
        peak = self.estimate(method).peak
        return {name: peak <= b for name, b in BUDGETS.items()}

    def rows(self) -> list[dict]:
        """One row per method: its parts, peak (bytes) and whether it fits each budget."""
        out = []
        for m in METHODS:
            e = self.estimate(m)
            out.append({"method": m, **e.parts, "peak": e.peak, "trainable": e.trainable,
                        **{k: e.peak <= b for k, b in BUDGETS.items()}})
        return out

    def summary(self) -> str:
        e, ans = self.estimate(), self.answer()
        fits = [k for k, v in ans.items() if v]
        return (f"{self.model.value}, {self.method.value}: peak {e.peak / GB:.2f} GB; "
                + (f"fits a {fits[0]}" if fits else "fits none of " + ", ".join(BUDGETS)))

    def update(self) -> None:
        self.info.value = f"<b>FitExplorer</b> · {esc(self.summary())}"
        rows = self.rows()
        self.table.value = html_table(
            ["method", *PARTS, "peak", *BUDGETS],
            [[esc(r["method"]), *(f"{r[p] / GB:.2f} GB" for p in PARTS), f"{r['peak'] / GB:.2f} GB",
              *("yes" if r[k] else "no" for k in BUDGETS)] for r in rows],
            align_right=set(range(1, len(PARTS) + 2)),
            row_styles=["font-weight:bold" if r["method"] == self.method.value else ""
                        for r in rows])
        show_figure(self.image, self.figure(rows))

    def figure(self, rows: list[dict] | None = None):
        """Stacked bars: each method's peak by part, with the three budgets as lines."""
        rows = rows or self.rows()
        fig = new_figure(7.5, 3.6)
        ax = fig.subplots()
        left = [0.0] * len(rows)
        for i, part in enumerate(PARTS):
            vals = [r[part] / GB for r in rows]
            ax.barh([r["method"] for r in rows], vals, left=left, color=f"C{i}", label=part)
            left = [a + b for a, b in zip(left, vals)]
        for k, (name, b) in enumerate(BUDGETS.items()):
            ax.axvline(b / GB, color="k", lw=1, ls=(":", "--", "-")[k], label=name)
        ax.set(xlabel="GB (2^30 bytes)", title=f"{self.model.value}: memory of one training step")
        ax.legend(fontsize=7, loc="lower right")
        return fig
