"""What a sandbox's slot directory holds: the code image on ``task``, the runtime on ``runtime``.

Both are read-only bind mounts made on the host; they reach the sandbox's ``/var/task`` and
``/var/runtime`` by mount propagation (the slots directory is a shared mount).
"""

from __future__ import annotations

from pathlib import Path

from easyfaas.errors import InvalidParameterValue
from easyfaas.models import RuntimeConfiguration
from funclet.pool.kernel import Mounts
from funclet.pool.records import Sandbox

SLOT_SUBDIRS = ("root", "task", "runtime", "secrets")  # secrets: funclet/sandbox/secretfs.py


class Slots:
    def __init__(self, runtime_path: Path, mounts: Mounts) -> None:
        self._runtime_path = runtime_path
        self.mounts = mounts

    def runtime_dir(self, runtime: RuntimeConfiguration) -> Path:
        """The prepared directory of ``runtime``; refused when it is outside the runtime path or missing."""
        base = self._runtime_path.resolve()
        path = Path(runtime.Path or base / runtime.Name).resolve()
        if path != base and base not in path.parents:
            raise InvalidParameterValue(f"runtime path {runtime.Path} is outside {base}")
        if not path.is_dir():
            raise InvalidParameterValue(f"runtime {runtime.Name} is not prepared ({path} is missing)")
        return path

    def bind_code(self, sb: Sandbox, image_mountpoint: Path, code_hash: str) -> None:
        self.mounts.bind(str(image_mountpoint), str(sb.slot_dir / "task"), readonly=True)
        sb.code_hash = code_hash

    def bind_runtime(self, sb: Sandbox, runtime_dir: Path) -> None:
        if sb.runtime_bound == str(runtime_dir):
            return
        if sb.runtime_bound:
            self.mounts.unmount(str(sb.slot_dir / "runtime"))
            sb.runtime_bound = ""
        self.mounts.bind(str(runtime_dir), str(sb.slot_dir / "runtime"), readonly=True)
        sb.runtime_bound = str(runtime_dir)

    def unbind(self, sb: Sandbox) -> None:
        """Unmount the code, the runtime and the secrets (whether or not they were mounted)."""
        for sub in ("task", "runtime", "secrets"):
            self.mounts.unmount(str(sb.slot_dir / sub))
        sb.code_hash = ""
        sb.runtime_bound = ""
