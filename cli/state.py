"""What the root options give every command: the settings, the output, and a client built from them."""

from __future__ import annotations

from dataclasses import dataclass, field

import typer

from cli.client import Client
from cli.output import Output
from cli.progress import QuietReporter, RichReporter, stderr_console, wants_progress
from cli.settings import Settings


@dataclass
class CliState:
    settings: Settings = field(default_factory=Settings)
    output: Output = field(default_factory=Output)
    explicit: set[str] = field(default_factory=set)  # settings given by a flag or the environment

    def client(self, timeout: float | None = None) -> Client:
        return Client(self.settings, timeout=timeout) if timeout else Client(self.settings)

    def reporter(self) -> RichReporter | QuietReporter:
        """A rich progress display on a terminal, else a quiet one; both are context managers."""
        if wants_progress(self.settings.output):
            return RichReporter(stderr_console())
        return QuietReporter()


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    if not isinstance(obj, CliState):  # the commands run only under cli.app's root callback
        raise RuntimeError("easyfaas commands need the root command's settings")
    return obj
