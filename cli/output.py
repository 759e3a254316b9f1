"""What commands print: tables and fields for people, one JSON document for ``--output json``.

Results go to stdout, messages and progress to stderr, so ``easyfaas ... --output json | jq`` sees
nothing but the document.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.table import Table


UNBOUNDED_WIDTH = 10_000


class Output:
    def __init__(self, mode: str = "text") -> None:
        self.mode = mode
        # No emoji codes: a BRN such as brn:cloud:faas:... would lose ":cloud:" to a picture.
        # Off a terminal nothing is cut to 80 columns: scripts and logs get whole values.
        wide = None if sys.stdout.isatty() else UNBOUNDED_WIDTH
        self.out = Console(file=sys.stdout, highlight=False, soft_wrap=True, emoji=False, width=wide)
        self.err = Console(file=sys.stderr, highlight=False, soft_wrap=True, emoji=False)

    @property
    def json(self) -> bool:
        return self.mode == "json"

    def document(self, doc: Any) -> None:
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def raw(self, text: str) -> None:
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        sys.stdout.flush()

    def message(self, text: str) -> None:
        """A line for people, on stderr (kept out of json output)."""
        self.err.print(text, markup=False)

    def table(self, doc: Any, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str = "") -> None:
        """``rows`` as a table, or ``doc`` in json mode."""
        if self.json:
            self.document(doc)
            return
        rows = list(rows)
        if not rows:
            if empty:
                self.message(empty)
            return
        table = Table(*columns, box=None, pad_edge=False, header_style="bold", expand=False)
        for row in rows:
            table.add_row(*("" if cell is None else str(cell) for cell in row))
        self.out.print(table)

    def fields(self, doc: Any, pairs: Iterable[tuple[str, Any]]) -> None:
        """``name: value`` lines, or ``doc`` in json mode."""
        if self.json:
            self.document(doc)
            return
        pairs = list(pairs)
        width = max((len(name) for name, _ in pairs), default=0)
        for name, value in pairs:
            if isinstance(value, (dict, list)):
                value = json.dumps(value, ensure_ascii=False) if value else "-"
            self.out.print(f"{name + ':':<{width + 1}} {'-' if value in (None, '') else value}", markup=False)
