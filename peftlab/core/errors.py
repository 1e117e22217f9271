"""The errors peftlab raises on bad input. Each names the culprit and the way out, and is
raised before anything is changed."""

from __future__ import annotations


class TargetError(ValueError):
    """A target spec matched nothing, or matched a module a method cannot wrap."""


class AlreadyAdaptedError(RuntimeError):
    """The model (or a module in it) already carries a peftlab method."""


class AdapterError(ValueError):
    """An adapter file is missing, malformed, or does not fit the model; nothing was changed."""


def check_number(who: str, name: str, value, kind: type = float, *, low=None, high=None,
                 low_open: bool = False, none: bool = False, hint: str = "") -> None:
    """Raise TypeError / ValueError naming `who.name` unless `value` is a number of `kind`
    (int: a Python int, not a bool; float: an int or a float) in [low, high] (low excluded
    with low_open), or None where none=True. Configs call it in __post_init__ so an odd value
    is refused where it was typed, not as a raw TypeError from deep inside torch."""
    if value is None and none:
        return
    what = "an int" if kind is int else "a number"
    span = ""
    if low is not None or high is not None:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"<= {high}"
        span = " " + " and ".join(s for s in (lo, hi) if s)
    need = f"{who}.{name} must be {what}{span}{' or None' if none else ''}{hint}"
    numeric = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, numeric):
        raise TypeError(f"{need}, got {type(value).__name__} {value!r:.60}.")
    if value != value:
        raise ValueError(f"{need}, got nan.")
    if (low is not None and (value <= low if low_open else value < low)) or \
            (high is not None and value > high):
        raise ValueError(f"{need}, got {value!r}.")
