"""What a daemon process must not import: the terminal-rendering library the command line brings.

``structlog.dev`` imports ``rich`` whenever it is installed (it is, as the CLI's dependency), which
costs every daemon about 4 MiB of resident memory for tracebacks the daemons never render (their
logs are JSON lines). Each daemon's entry module calls :func:`keep_terminal_libraries_out` before
it imports anything that imports structlog.
"""

from __future__ import annotations

import sys


def keep_terminal_libraries_out() -> None:
    """Make ``import rich`` fail in this process unless something imported it already."""
    if "rich" not in sys.modules:
        sys.modules["rich"] = None  # type: ignore[assignment]  # the import system's "not found" marker
