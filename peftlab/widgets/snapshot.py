"""Static HTML snapshots of widgets, drawn from the widget state a notebook stores.

When nbconvert (or JupyterLab with "saveState") saves a notebook, it stores every widget
model in the notebook's metadata:

    nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
        = {model_id: {"model_name": "VBoxModel", "state": {...}, "buffers": [...]}}

and each output that shows a widget carries only a reference to its root model
(`application/vnd.jupyter.widget-view+json: {"model_id": ...}`) plus a text/plain repr,
`VBox(children=(HBox(...`. A browser needs the widget JavaScript (and a trusted notebook)
to turn that into a view; without it, JupyterLab falls back to the text. This module walks
the stored models and writes the same picture as plain HTML: boxes as flex rows/columns,
HTML widgets as their HTML, images inline (data: URIs), controls as their label and value.
No JavaScript, no network: it reads in an untrusted JupyterLab, on GitHub and in the static
course site (peftlab.site).

    html = snapshot_html(model_id, state)          # one widget tree
    n = add_snapshots(nb)                          # every widget output of a notebook (dict)
"""

from __future__ import annotations

import html as _html

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
SNAPSHOT_CLASS = "peftlab-widget-snapshot"

_BOX = "display:flex;gap:4px 12px;"
# ipywidgets' default readouts (state saved without defaults leaves them out)
_READOUT = {"FloatSliderModel": ".2f", "FloatRangeSliderModel": ".2f",
            "FloatLogSliderModel": ".3g"}
_CONTROL = ("display:inline-block;padding:2px 6px;margin:1px 0;border:1px solid #ccc;"
            "border-radius:3px;font-size:12px;font-family:sans-serif")


def widget_state(nb: dict) -> dict:
    """{model_id: model} stored in a notebook (empty when it stores none)."""
    meta = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {})
    return meta.get("state", {}) or {}


def _esc(x) -> str:
    return _html.escape(str(x))


def _ref(value) -> str | None:
    return value[len("IPY_MODEL_"):] if isinstance(value, str) and \
        value.startswith("IPY_MODEL_") else None


def _fmt(value, fmt: str | None) -> str:
    """A slider readout: d3-format specs such as '.2f', '.2%', 'd' read the same in Python."""
    if fmt:
        try:
            return format(value, fmt)
        except (TypeError, ValueError):
            pass
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _label(s: dict) -> str:
    d = s.get("description") or ""
    return f"{_esc(d)}: " if d else ""


def _chosen(s: dict) -> str:
    labels, index = s.get("_options_labels") or [], s.get("index")
    if isinstance(index, (list, tuple)):
        return ", ".join(_esc(labels[i]) for i in index if 0 <= i < len(labels))
    if isinstance(index, int) and 0 <= index < len(labels):
        return _esc(labels[index])
    return "-"


def _image(model: dict) -> str:
    s = model["state"]
    data = next((b["data"] for b in model.get("buffers", [])
                 if b.get("path") == ["value"] and b.get("encoding") == "base64"), None)
    if data is None:
        return ""
    fmt = s.get("format") or "png"
    mime = "image/svg+xml" if fmt == "svg" else f"image/{fmt}"
    size = "".join(f" {k}='{_esc(s[k])}'" for k in ("width", "height") if s.get(k))
    return (f"<img src='data:{mime};base64,{data}'{size} alt='widget figure' "
            f"style='max-width:100%;height:auto;display:block'>")


def _progress(s: dict) -> str:
    lo, hi, v = s.get("min", 0), s.get("max", 100), s.get("value", 0)
    pct = 100 * (v - lo) / (hi - lo) if hi != lo else 0
    return (f"{_label(s)}<span style='display:inline-block;width:180px;height:10px;"
            f"background:#eee;vertical-align:middle'><span style='display:block;height:10px;"
            f"width:{max(0.0, min(100.0, pct)):.0f}%;background:#3b82c4'></span></span>")


def _render(mid: str, state: dict, depth: int) -> str:
    model = state.get(mid)
    if model is None or depth > 50:
        return ""
    name, s = model.get("model_name", ""), model.get("state", {})
    layout = state.get(_ref(s.get("layout")) or "", {}).get("state", {})
    if layout.get("display") == "none" or layout.get("visibility") == "hidden":
        return ""
    kids = [_render(_ref(c), state, depth + 1) for c in s.get("children", []) if _ref(c)]
    if name in ("VBoxModel", "BoxModel", "GridBoxModel"):
        return f"<div style='{_BOX}flex-direction:column'>{''.join(kids)}</div>"
    if name == "HBoxModel":
        return (f"<div style='{_BOX}flex-direction:row;flex-wrap:wrap;align-items:center'>"
                f"{''.join(kids)}</div>")
    if name in ("AccordionModel", "TabModel", "StackModel"):
        titles = list(s.get("titles") or [])
        return "".join(f"<details><summary>{_esc(titles[i] if i < len(titles) else i)}"
                       f"</summary>{k}</details>" for i, k in enumerate(kids))
    if name in ("HTMLModel", "HTMLMathModel"):
        return f"<div>{_label(s)}{s.get('value', '')}</div>"
    if name == "LabelModel":
        return f"<span>{_esc(s.get('value', ''))}</span>"
    if name == "ImageModel":
        return _image(model)
    if name in ("FloatProgressModel", "IntProgressModel"):
        return f"<div>{_progress(s)}</div>"
    if name.endswith("SliderModel") and name != "SelectionSliderModel":
        v = s.get("value")
        fmt = s.get("readout_format") or _READOUT.get(name)
        shown = (" - ".join(_fmt(x, fmt) for x in v) if isinstance(v, (list, tuple))
                 else _fmt(v, fmt))
        return (f"<span style='{_CONTROL}'>{_label(s)}<b>{_esc(shown)}</b> "
                f"<span style='color:#888'>({_esc(s.get('min'))} to {_esc(s.get('max'))})"
                f"</span></span>")
    if name in ("DropdownModel", "SelectModel", "SelectMultipleModel", "ToggleButtonsModel",
                "RadioButtonsModel", "SelectionSliderModel", "SelectionRangeSliderModel"):
        return f"<span style='{_CONTROL}'>{_label(s)}<b>{_chosen(s)}</b></span>"
    if name in ("CheckboxModel", "ToggleButtonModel"):
        box = "&#9745;" if s.get("value") else "&#9744;"
        return f"<span style='{_CONTROL}'>{box} {_esc(s.get('description', ''))}</span>"
    if name in ("TextModel", "TextareaModel", "PasswordModel", "IntTextModel",
                "FloatTextModel", "BoundedIntTextModel", "BoundedFloatTextModel"):
        value = "***" if name == "PasswordModel" else s.get("value", "")
        return f"<span style='{_CONTROL}'>{_label(s)}&#8220;{_esc(value)}&#8221;</span>"
    if name == "ButtonModel":
        return f"<span style='{_CONTROL};background:#f3f3f3'>{_esc(s.get('description'))}</span>"
    if name == "OutputModel":
        return "".join(_output_html(o) for o in s.get("outputs", []))
    return f"<span style='{_CONTROL}'>{_label(s)}{_esc(s.get('value', ''))}</span>" \
        if "value" in s else ""


def _output_html(out: dict) -> str:
    data = out.get("data", {})
    if "text/html" in data:
        v = data["text/html"]
        return "".join(v) if isinstance(v, list) else v
    if "image/png" in data:
        return f"<img src='data:image/png;base64,{data['image/png']}' style='max-width:100%'>"
    text = out.get("text") or data.get("text/plain") or ""
    return f"<pre>{_esc(''.join(text) if isinstance(text, list) else text)}</pre>"


def snapshot_html(model_id: str, state: dict) -> str:
    """HTML for the widget tree rooted at `model_id`, from stored state ({id: model})."""
    if model_id not in state:
        raise KeyError(f"widget model {model_id} is not in the stored widget state: the notebook "
                       f"was saved without it (execute it with nbconvert, or turn on JupyterLab's "
                       f"'Save Jupyter widget state in notebooks' setting, then save).")
    return (f"<div class='{SNAPSHOT_CLASS}' style='font-size:13px'>"
            f"{_render(model_id, state, 0)}</div>")


def add_snapshots(nb: dict) -> int:
    """Give every widget output of `nb` (a notebook dict, changed in place) a text/html
    snapshot of its stored state, next to the widget view. A browser with the widget
    JavaScript and a trusted notebook still shows the live view (it ranks first); everything
    else shows the snapshot instead of the `VBox(children=...` text. Returns the count."""
    state, n = widget_state(nb), 0
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view and view.get("model_id") in state:
                out["data"]["text/html"] = snapshot_html(view["model_id"], state)
                n += 1
    return n
