"""The errors peftlab raises on bad input. Each names the culprit and the way out, and is
raised before anything is changed."""

from __future__ import annotations


class TargetError(ValueError):
    """A target spec matched nothing, or matched a module a method cannot wrap."""


class AlreadyAdaptedError(RuntimeError):
    """The model (or a module in it) already carries a peftlab method."""


class AdapterError(ValueError):
    """An adapter file is missing, malformed, or does not fit the model; nothing was changed."""
