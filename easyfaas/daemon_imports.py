"""What a daemon process must not import: the terminal-rendering library the command line brings,
and the re-exports of packages the daemons use one part of.

``structlog.dev`` imports ``rich`` whenever it is installed (it is, as the CLI's dependency), which
costs every daemon about 4 MiB of resident memory for tracebacks the daemons never render (their
logs are JSON lines). Each daemon's entry module calls :func:`keep_terminal_libraries_out` before
it imports anything that imports structlog.

A package whose ``__init__`` imports everything it has costs its whole size to a daemon that needs
one submodule of it; :func:`package_without_its_exports` lets the submodules load alone.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

__all__ = ["keep_terminal_libraries_out", "package_without_its_exports"]


def keep_terminal_libraries_out() -> None:
    """Make ``import rich`` fail in this process unless something imported it already."""
    if "rich" not in sys.modules:
        sys.modules["rich"] = None  # type: ignore[assignment]  # the import system's "not found" marker


def package_without_its_exports(name: str) -> None:
    """Let ``import <name>.<submodule>`` load that submodule without the package's ``__init__``.

    The package is registered as an empty module on its own path; its ``__init__`` runs only when
    something asks the package for a name it lacks (``from <name> import X``), so every other
    importer still sees the whole package. Nothing happens when the package is imported already.
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not installed as a plain package: the importer's own import says so
    package = types.ModuleType(name)
    package.__spec__ = spec
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__package__ = name
    loader = spec.loader

    def __getattr__(attr: str) -> Any:
        if importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")  # a submodule (``from <name> import core``)
        del package.__getattr__  # the package's own __init__ runs once, then defines the names
        loader.exec_module(package)
        return getattr(package, attr)

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[name] = package
