"""ModelInspector: the module tree of any model, with what trains, where it lives, what it costs.

    insp = pl.widgets.ModelInspector(model)     # shows itself as the last value of a cell
    insp.rows(depth=2)                           # the same rows, without a browser
    insp.trainable, insp.total, insp.summary()

Per module (counts include children; a parameter shared by two modules is counted once):
parameters, trainable parameters, status (trainable / frozen / partial), the adapter that
wraps it (a peftlab AdapterLayer's `method`), dtype, device and bytes of parameters + buffers.
Controls: a name filter (a filter shows matches at any depth), a depth slider (collapse /
expand the tree), "trainable only", and a device selector that moves the model (CPU, CUDA,
MPS where available). On CUDA a line shows the allocator's allocated / reserved / peak bytes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import ipywidgets as W
import torch
from torch import nn

from peftlab.core.layers import AdapterLayer
from peftlab.core.state import get_method
from peftlab.measure import human_bytes
from peftlab.report import trainable_report
from peftlab.runtime import available_devices
from peftlab.widgets._base import WidgetBase, esc, fmt_int, html_table

STATUS_COLOR = {"trainable": "#1a7f37", "partial": "#b35900", "frozen": "#777", "-": "#777"}


@dataclass
class InspectorRow:
    name: str          # full module name ("" is the model itself)
    type: str          # class name
    depth: int         # number of dots + 1 (the model itself is 0)
    params: int        # parameters in this module and its children
    trainable: int     # of which requires_grad
    adapter: str       # peftlab method of the AdapterLayer at or above this module, else ""
    dtype: str         # parameter dtype(s), e.g. "float32" or "float32,bfloat16"
    device: str        # parameter device(s)
    bytes: int         # bytes of parameters + buffers (children included)

    @property
    def status(self) -> str:
        if not self.params:
            return "-"
        if self.trainable == self.params:
            return "trainable"
        return "partial" if self.trainable else "frozen"


def cuda_memory(device=None) -> dict | None:
    """{'allocated', 'reserved', 'peak'} bytes of the CUDA caching allocator; None off CUDA."""
    if not torch.cuda.is_available():
        return None
    return {"allocated": torch.cuda.memory_allocated(device),
            "reserved": torch.cuda.memory_reserved(device),
            "peak": torch.cuda.max_memory_allocated(device)}


def model_rows(model: nn.Module) -> list[InspectorRow]:
    """One InspectorRow per module, in model order (the browser-free core of the inspector)."""
    rows, adapter_at = [], {}
    for name, m in model.named_modules():
        params = {id(p): p for p in m.parameters()}.values()
        tensors = list(params) + list({id(b): b for b in m.buffers()}.values())
        parent = name.rpartition(".")[0] if name else None
        adapter = m.method if isinstance(m, AdapterLayer) else adapter_at.get(parent, "")
        adapter_at[name] = adapter
        rows.append(InspectorRow(
            name=name, type=type(m).__name__, depth=name.count(".") + 1 if name else 0,
            params=sum(p.numel() for p in params),
            trainable=sum(p.numel() for p in params if p.requires_grad),
            adapter=adapter,
            dtype=",".join(sorted({str(p.dtype).replace("torch.", "") for p in params})),
            device=",".join(sorted({str(p.device) for p in params})),
            bytes=sum(t.numel() * t.element_size() for t in tensors)))
    return rows


class ModelInspector(WidgetBase):
    """Browse a model's module tree; see counts, trainable status, adapters, dtype, device."""

    def __init__(self, model: nn.Module, depth: int | None = None, max_rows: int = 150):
        if not isinstance(model, nn.Module):
            raise TypeError(f"ModelInspector needs a torch.nn.Module, got {type(model).__name__}.")
        self.model, self.max_rows = model, max_rows
        self._all = model_rows(model)
        max_depth = max(r.depth for r in self._all)
        if depth is None:  # the deepest view that still fits on a screen (about 30 rows)
            depth = max([d for d in range(1, max_depth + 1)
                         if sum(r.depth <= d for r in self._all) <= 30] or [1])
        self.filter = W.Text(description="filter", placeholder="name contains, e.g. query",
                             continuous_update=True)
        self.depth = W.IntSlider(value=min(depth, max_depth), min=0, max=max_depth,
                                 description="depth")
        self.trainable_only = W.Checkbox(value=False, description="trainable only", indent=False)
        devices = available_devices()
        self.device = W.Dropdown(options=devices, value=self._model_device(),
                                 description="device", disabled=len(devices) == 1)
        self.refresh_button = W.Button(description="refresh", icon="refresh")
        self.live = W.Checkbox(value=False, description="live CUDA memory (1 s)", indent=False,
                               disabled=not torch.cuda.is_available())
        self.live.observe(self._on_live, names="value")
        self.totals_html, self.memory_html, self.table_html = W.HTML(), W.HTML(), W.HTML()
        for w in (self.filter, self.depth, self.trainable_only):
            w.observe(lambda _: self._render(), names="value")
        self.device.observe(self._on_device, names="value")
        self.refresh_button.on_click(lambda _: self.refresh())
        controls = W.HBox([self.filter, self.depth, self.trainable_only])
        self.widget = W.VBox([self.totals_html, self.memory_html,
                              W.HBox([self.device, self.refresh_button, self.live]), controls,
                              self.table_html])
        self.refresh()

    # --- browser-free API -----------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the model (after apply, training, .to(...)) and redraw."""
        self._all = model_rows(self.model)
        self.depth.max = max(r.depth for r in self._all)
        self.trainable, self.total = trainable_report(self.model).trainable, self._all[0].params
        self.memory = self._all[0].bytes
        self.method = get_method(self.model)
        self._render()

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def rows(self, depth: int | None = None, filter: str | None = None,
             trainable_only: bool | None = None) -> list[InspectorRow]:
        """Rows visible for the given controls (default: the widget's current values).

        A non-empty filter (case-insensitive substring of the name) shows matches at any depth.
        """
        depth = self.depth.value if depth is None else depth
        filt = (self.filter.value if filter is None else filter).strip().lower()
        only = self.trainable_only.value if trainable_only is None else trainable_only
        if filt:
            out = [r for r in self._all if filt in r.name.lower()]
        else:
            out = [r for r in self._all if r.depth <= depth]
        return [r for r in out if r.trainable] if only else out

    def summary(self) -> str:
        return (f"{type(self.model).__name__} ({self.method or 'plain model'}): "
                f"{self.trainable:,} of {self.total:,} parameters train "
                f"({100 * self.fraction:.4f}%), {human_bytes(self.memory)} on {self.device.value}")

    def cuda_memory(self) -> dict | None:
        dev = torch.device(self.device.value)
        return cuda_memory(dev) if dev.type == "cuda" else None

    def to(self, device: str) -> None:
        """Move the model (same as choosing in the device selector)."""
        self.device.value = str(torch.device(device).type)

    # --- rendering ------------------------------------------------------------------------
    def _model_device(self) -> str:
        p = next(self.model.parameters(), None)
        return p.device.type if p is not None else "cpu"

    def _on_live(self, change) -> None:
        """A daemon thread re-reads the CUDA allocator every second while the box is ticked
        (ipywidgets sends updates from threads, so it keeps ticking while a cell trains)."""
        if change["new"]:
            stop = self._live_stop = threading.Event()

            def tick():
                while not stop.wait(1.0):
                    self._render_memory()
            threading.Thread(target=tick, daemon=True).start()
        elif getattr(self, "_live_stop", None) is not None:
            self._live_stop.set()

    def _render_memory(self) -> None:
        mem = self.cuda_memory()
        self.memory_html.value = "" if mem is None else (
            "CUDA memory: " + " · ".join(f"{k} <b>{human_bytes(v)}</b>" for k, v in mem.items()))

    def _on_device(self, change) -> None:
        self.model.to(change["new"])
        self.refresh()

    def _render(self) -> None:
        self.totals_html.value = (
            f"<b>{esc(type(self.model).__name__)}</b> · method: "
            f"<b>{esc(self.method or 'none')}</b> · trainable <b>{self.trainable:,}</b> of "
            f"{self.total:,} (<b>{100 * self.fraction:.4f}%</b>) · parameters + buffers "
            f"{human_bytes(self.memory)}")
        self._render_memory()
        shown = self.rows()
        flat = bool(self.filter.value.strip())     # filtered rows come from any depth: a tree
        cells, styles = [], []                     # would mislead, so show full paths
        for r in shown[:self.max_rows]:
            badge = (f" <span style='background:#ddf4ff;border-radius:3px;padding:0 3px'>"
                     f"{esc(r.adapter)}</span>" if r.adapter else "")
            name = r.name if flat else r.name.rpartition(".")[2]
            indent = "" if flat else "&nbsp;" * 2 * r.depth
            cells.append([f"{indent}{esc(name or '(model)')}{badge}",
                          esc(r.type), fmt_int(r.params), fmt_int(r.trainable),
                          f"<span style='color:{STATUS_COLOR[r.status]}'>{r.status}</span>",
                          esc(r.dtype), esc(r.device), human_bytes(r.bytes)])
            styles.append("" if r.depth else "font-weight:bold")
        more = (f"<p>... {len(shown) - self.max_rows} more rows (narrow the filter)</p>"
                if len(shown) > self.max_rows else "")
        self.table_html.value = html_table(
            ["module", "type", "params", "trainable", "status", "dtype", "device", "memory"],
            cells, align_right={2, 3, 7}, row_styles=styles) + more
