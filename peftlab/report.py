"""trainable_report(model): how many parameters train, out of how many, and where.

    >>> rep = pl.trainable_report(model)
    >>> rep.trainable, rep.total, rep.fraction
    >>> print(rep)          # a text table; in a notebook it renders as HTML

Counting rules (the same as Hugging Face PEFT's print_trainable_parameters): `total` counts
every parameter in the model, adapters included; `trainable` counts those with
requires_grad. A parameter shared by two modules is counted once.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from torch import nn

from peftlab.core.state import get_method


@dataclass
class ModuleRow:
    name: str          # module name ("" for parameters owned by the root)
    type: str          # class name
    trainable: int     # trainable parameters owned directly by this module
    total: int         # all parameters owned directly by this module


@dataclass
class TrainableReport:
    trainable: int
    total: int
    method: str | None
    rows: list[ModuleRow] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    def summary(self) -> str:
        return (f"trainable params: {self.trainable:,} || all params: {self.total:,} || "
                f"trainable%: {100 * self.fraction:.4f}")

    def __repr__(self) -> str:  # the dataclass default would print every row
        return (f"TrainableReport(method={self.method!r}, trainable={self.trainable:,}, "
                f"total={self.total:,}, fraction={self.fraction:.4%}, rows={len(self.rows)})")

    def trainable_rows(self) -> list[ModuleRow]:
        return [r for r in self.rows if r.trainable]

    def __str__(self) -> str:
        rows = self.trainable_rows()
        w = max([len(r.name) for r in rows] + [6])
        lines = [f"method: {self.method or 'none (plain model)'}",
                 f"{'module':<{w}}  {'type':<18} {'trainable':>12} {'total':>12}"]
        lines += [f"{r.name or '(root)':<{w}}  {r.type:<18} {r.trainable:>12,} {r.total:>12,}"
                  for r in rows]
        frozen_mods = sum(1 for r in self.rows if not r.trainable)
        lines.append(f"{'(' + str(frozen_mods) + ' frozen modules)':<{w}}  {'':<18} "
                     f"{0:>12,} {sum(r.total for r in self.rows if not r.trainable):>12,}")
        lines.append(self.summary())
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = self.trainable_rows()
        body = "".join(
            f"<tr><td><code>{html.escape(r.name or '(root)')}</code></td><td>{html.escape(r.type)}</td>"
            f"<td style='text-align:right'>{r.trainable:,}</td>"
            f"<td style='text-align:right'>{r.total:,}</td></tr>" for r in rows)
        return (f"<p><b>{html.escape(self.method or 'plain model')}</b>: "
                f"{self.trainable:,} of {self.total:,} parameters train "
                f"({100 * self.fraction:.4f}%)</p>"
                f"<table><tr><th>module</th><th>type</th><th>trainable</th><th>total</th></tr>"
                f"{body}</table>")


def trainable_report(model: nn.Module) -> TrainableReport:
    """Count trainable and total parameters, per module that owns them."""
    seen: set[int] = set()
    rows = []
    for name, module in model.named_modules():
        t = n = 0
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            n += p.numel()
            t += p.numel() if p.requires_grad else 0
        if n:
            rows.append(ModuleRow(name, type(module).__name__, t, n))
    return TrainableReport(trainable=sum(r.trainable for r in rows),
                           total=sum(r.total for r in rows), method=get_method(model), rows=rows)
