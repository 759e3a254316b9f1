"""The language runtimes prepared on this host: ``<runtime_dir>/*/runtime.yaml`` files.

The files are written by ``runner prepare``; each becomes a RuntimeConfiguration, found by its Name
or any of its Aliases. The catalog re-reads the directory when a file or the directory changes, so
a runtime prepared while a daemon runs is seen without a restart. Stubs serves them; the funclet
reads them to pre-start runtimes that support a standby (``Standby: true``).

``runner prepare`` writes them as JSON, which is YAML too: a daemon reads those with ``json``, and
loads the YAML parser (about 1 MiB of resident memory) only for a file written by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import structlog

from easyfaas.models import ModelError, RuntimeConfiguration

log = structlog.get_logger(__name__)

RUNTIME_FILE = "runtime.yaml"


class RuntimeCatalog:
    def __init__(self, runtime_dir: str | os.PathLike[str] | None, runtimes: list[RuntimeConfiguration] = ()) -> None:
        self._dir = Path(runtime_dir) if runtime_dir is not None else None
        self._signature: tuple | None = None
        self._by_name: dict[str, RuntimeConfiguration] = {}
        self._runtimes: list[RuntimeConfiguration] = []
        self._install(list(runtimes))

    @classmethod
    def load(cls, runtime_dir: str | os.PathLike[str]) -> RuntimeCatalog:
        catalog = cls(runtime_dir)
        catalog.refresh()
        return catalog

    def _install(self, runtimes: list[RuntimeConfiguration]) -> None:
        by_name: dict[str, RuntimeConfiguration] = {}
        for runtime in sorted(runtimes, key=lambda r: r.Name):
            for name in (runtime.Name, *runtime.Aliases):
                if name in by_name and by_name[name] is not runtime:
                    log.warning("runtime_name_clash", name=name, kept=by_name[name].Name, ignored=runtime.Name)
                    continue
                by_name[name] = runtime
        self._runtimes = sorted(runtimes, key=lambda r: r.Name)
        self._by_name = by_name

    def _files(self) -> list[Path]:
        assert self._dir is not None
        try:
            return sorted(p for p in self._dir.glob(f"*/{RUNTIME_FILE}") if p.is_file())
        except OSError:
            return []

    def _current_signature(self) -> tuple:
        assert self._dir is not None
        stamps = []
        for path in [self._dir, *self._files()]:
            try:
                st = path.stat()
            except OSError:
                continue
            stamps.append((str(path), st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def refresh(self) -> None:
        """Re-read the runtime files if anything changed since the last read (a few stat calls)."""
        if self._dir is None:
            return
        signature = self._current_signature()
        if signature == self._signature:
            return
        self._signature = signature
        if not self._dir.is_dir():
            log.warning("runtime_dir_missing", runtime_dir=str(self._dir))
        runtimes = []
        for path in self._files():
            runtime = _read_runtime_file(path)
            if runtime is not None:
                runtimes.append(runtime)
        self._install(runtimes)
        log.info("runtimes_loaded", runtime_dir=str(self._dir), runtimes=[r.Name for r in runtimes])

    def get(self, name: str) -> RuntimeConfiguration | None:
        self.refresh()
        return self._by_name.get(name)

    def list(self) -> list[RuntimeConfiguration]:
        self.refresh()
        return list(self._runtimes)

    def names(self) -> list[str]:
        """Every name a function's Runtime may use (names and aliases), sorted."""
        self.refresh()
        return sorted(self._by_name)


def _read_runtime_file(path: Path) -> RuntimeConfiguration | None:
    try:
        data = _parse(path.read_text(encoding="utf-8"))
        if data is None:
            data = {}
        runtime = RuntimeConfiguration.from_dict(data)
    except (OSError, UnicodeDecodeError, ValueError, ModelError) as exc:
        log.warning("runtime_file_invalid", path=str(path), error=str(exc))
        return None
    if not runtime.Name:
        runtime.Name = path.parent.name
    return runtime


def _parse(text: str) -> Any:
    """A runtime file's document: JSON when it is (what ``runner prepare`` writes), else YAML."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            pass  # a YAML flow mapping, not JSON
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from exc
