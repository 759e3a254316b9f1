"""A function's package: a directory zipped without junk, its dependencies installed into it.

Dependencies go into the package the way Lambda users expect: ``requirements.txt`` →
``pip install --target <build> -r requirements.txt`` run by the Python the sandbox runs (the pod's
python3 runtime is this machine's interpreter, so ``sys.executable`` by default); ``package.json`` →
``npm ci --omit=dev`` when a lock file exists, else ``npm install --omit=dev``. They run in a
temporary copy of the directory, never in the user's own.

The zip is reproducible: entries sorted, fixed timestamps, so the same sources give the same
CodeSha256 (and the pod reuses the code image it already built).
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from cli.exits import BuildError
from cli.progress import QuietReporter, Reporter

IGNORED_NAMES = frozenset({".git", "__pycache__", ".DS_Store", ".venv"})
IGNORED_SUFFIXES = (".pyc",)
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
NPM_LOCK_FILES = ("package-lock.json", "npm-shrinkwrap.json")
INSTALL_TIMEOUT = 600.0
OUTPUT_TAIL = 15


def is_ignored(rel: PurePosixPath) -> bool:
    """Whether the package leaves ``rel`` (a path relative to the directory) out."""
    parts = rel.parts
    if any(part in IGNORED_NAMES for part in parts):
        return True
    if rel.name.endswith(IGNORED_SUFFIXES):
        return True
    # npm's and build tools' caches under node_modules/.cache
    return any(parts[i] == "node_modules" and parts[i + 1] == ".cache" for i in range(len(parts) - 1))


def package_files(root: Path) -> list[tuple[Path, PurePosixPath]]:
    """(path, name in the zip) of every file ``root`` packages, sorted by name; symlinks are followed."""
    return sorted(_walk(root), key=lambda entry: str(entry[1]))


def _walk(root: Path) -> Iterator[tuple[Path, PurePosixPath]]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        dirnames[:] = sorted(d for d in dirnames if not is_ignored(here / d))
        for name in sorted(filenames):
            rel = here / name if str(here) != "." else PurePosixPath(name)
            path = Path(dirpath) / name
            if is_ignored(rel) or not path.is_file():
                continue  # dangling links, sockets and fifos have no place in a code zip
            yield path, rel


def zip_directory(root: Path, reporter: Reporter | None = None) -> bytes:
    """The zip of ``root``'s packaged files (modes kept: executables stay executable)."""
    reporter = reporter or QuietReporter()
    files = package_files(root)
    if not files:
        raise BuildError(f"{root}: nothing to package (the directory is empty once ignored files are left out)")
    reporter.start("zipping", total=len(files))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, rel in files:
            info = zipfile.ZipInfo(str(rel), date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = path.stat().st_mode
            info.external_attr = ((0o755 if mode & stat.S_IXUSR else 0o644) | stat.S_IFREG) << 16
            try:
                zf.writestr(info, path.read_bytes())
            except OSError as exc:
                raise BuildError(f"{path}: cannot read: {exc.strerror}") from None
            reporter.advance()
    reporter.finish()
    return buf.getvalue()


def copy_sources(src: Path, dst: Path) -> None:
    """Copy ``src``'s packaged files into ``dst`` (the build copy)."""
    for path, rel in package_files(src):
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


@dataclass
class InstallStep:
    """One dependency installation command, run in the build copy."""

    manifest: str
    argv: list[str]

    def describe(self) -> str:
        """The command as a person would type it (the tool's name, not its full path)."""
        return " ".join([Path(self.argv[0]).name, *self.argv[1:]])


def install_steps(directory: Path, *, python: str, npm: str = "npm") -> list[InstallStep]:
    """The installations ``directory``'s manifests ask for (the build dir is the directory itself)."""
    steps: list[InstallStep] = []
    if (directory / "requirements.txt").is_file():
        steps.append(InstallStep("requirements.txt", [
            python, "-m", "pip", "install", "--target", ".", "-r", "requirements.txt",
            "--no-compile", "--disable-pip-version-check", "--no-input", "--quiet"]))
    if (directory / "package.json").is_file():
        verb = "ci" if any((directory / lock).is_file() for lock in NPM_LOCK_FILES) else "install"
        steps.append(InstallStep("package.json", [npm, verb, "--omit=dev", "--no-audit", "--no-fund",
                                                  "--loglevel=error"]))
    return steps


def run_step(step: InstallStep, cwd: Path) -> None:
    try:
        proc = subprocess.run(step.argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=INSTALL_TIMEOUT, check=False)
    except FileNotFoundError:
        raise BuildError(f"{step.manifest}: {step.argv[0]} not found; install it or use --no-install") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"{step.manifest}: {step.describe()} did not finish in {INSTALL_TIMEOUT:.0f}s") from None
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        last = lines[-1].strip() if lines else "(no output)"
        err = BuildError(f"{step.manifest}: `{step.describe()}` failed (exit {proc.returncode}): {last}")
        err.detail = {"Command": step.argv, "ExitCode": proc.returncode,
                      "Output": "\n".join(lines[-OUTPUT_TAIL:])}
        raise err


@dataclass
class Package:
    zip_bytes: bytes
    installed: list[str] = field(default_factory=list)  # the manifests whose dependencies went in

    @property
    def size(self) -> int:
        return len(self.zip_bytes)


def build_package(directory: Path, *, python: str = sys.executable, npm: str = "npm", install: bool = True,
                  reporter: Reporter | None = None) -> Package:
    """``directory`` zipped, with its dependencies installed into a temporary copy first."""
    reporter = reporter or QuietReporter()
    if not directory.is_dir():
        raise BuildError(f"{directory}: not a directory")
    steps = install_steps(directory, python=python, npm=npm) if install else []
    if not steps:
        return Package(zip_directory(directory, reporter))
    with tempfile.TemporaryDirectory(prefix="easyfaas-build-") as tmp:
        build = Path(tmp) / "package"
        build.mkdir()
        reporter.start("copying sources")
        copy_sources(directory, build)
        for step in steps:
            reporter.start(f"installing {step.manifest} dependencies ({Path(step.argv[0]).name})")
            run_step(step, build)
        reporter.finish()
        return Package(zip_directory(build, reporter), [step.manifest for step in steps])
