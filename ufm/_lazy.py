"""Packages whose public names load on first use (PEP 562): importing the package costs nothing, so
a command line can parse its flags without loading torch."""

from __future__ import annotations

import importlib
import sys
from typing import Callable


def lazy_names(package: str, names: dict[str, str], modules: tuple[str, ...] = ()
               ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: ``names`` maps each public name to the
    submodule that defines it, ``modules`` are submodules reachable as attributes."""
    def __getattr__(name: str):
        if name in modules:
            return importlib.import_module(f".{name}", package)
        if name in names:
            value = getattr(importlib.import_module(f".{names[name]}", package), name)
            setattr(sys.modules[package], name, value)  # later lookups skip this function
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *names, *modules})

    return __getattr__, __dir__
