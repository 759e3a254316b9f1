"""Read-only code images: one erofs image per code hash, loop-mounted once and shared by slots.

Layout under ``root``::

    <hash>.erofs          the image (built once per code hash)
    <hash>/               its read-only mountpoint; slots bind-mount this into their task dir
    staging/<hash>-<rnd>  extraction dir and image being built (deleted after the build)

A build extracts the zip (``easyfaas.codezip``: no "..", absolute paths or symlinks), checks the
sha256, compiles ``.pyc`` (unchecked-hash, so imports skip the source stat; the sandbox sets
PYTHONDONTWRITEBYTECODE and could not write them anyway), runs ``mkfs.erofs`` (the one process
spawned here, once per code hash), attaches a read-only autoclear loop device and mounts it.
Unmounting is then the whole teardown: the kernel frees the loop device when its last user goes.

Images are built ahead of need (the controller asks for each new code stubs announces) and on
demand at warmup; the store keeps at most ``max_images``, evicting the least recently used one
that no sandbox has bound (a bound one stays mounted in its slot even after eviction anyway).
"""

from __future__ import annotations

import asyncio
import compileall
import hashlib
import os
import py_compile
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import structlog

from easyfaas import syscalls
from easyfaas.codezip import CodeArchiveError, extract_zip

from .loop import LoopDevice
from .mounts import is_mountpoint, unmount, unmount_under

log = structlog.get_logger(__name__)

MiB = 1024 * 1024
_HASH = re.compile(r"[0-9a-f]{64}")
MKFS_TIMEOUT = 300.0
WARM_BUDGET = 32 * MiB


class CodeImageError(RuntimeError):
    """Building or mounting a code image failed for a reason other than a bad archive."""


@dataclass(frozen=True)
class CodeImage:
    code_hash: str
    image_path: Path
    mountpoint: Path
    size: int


def validate_code_hash(code_hash: str) -> str:
    """The hash names files and dirs, so it must be exactly 64 hex digits; returns it lower-cased."""
    value = code_hash.lower() if isinstance(code_hash, str) else ""
    if not _HASH.fullmatch(value):
        raise ValueError(f"invalid code hash {code_hash!r}: expected 64 hex digits (sha256 of the zip)")
    return value


class CodeImageStore:
    def __init__(self, root: Path, *, mkfs: str = "mkfs.erofs", max_uncompressed: int = 250 * MiB,
                 task_dir: str = "/var/task", max_images: int = 256):
        self.root = Path(root)
        self.mkfs = mkfs
        self.max_uncompressed = max_uncompressed
        self.max_images = max(1, max_images)
        self._last_used: dict[str, float] = {}
        self.task_dir = task_dir  # path the code has inside a sandbox, recorded in the .pyc files
        self._images: dict[str, CodeImage] = {}
        self._building: dict[str, asyncio.Task[CodeImage]] = {}

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    def get(self, code_hash: str) -> CodeImage | None:
        try:
            return self._images.get(validate_code_hash(code_hash))
        except ValueError:
            return None

    def images(self) -> list[CodeImage]:
        return list(self._images.values())

    async def ensure(self, code_hash: str, load_zip: Callable[[], Awaitable[bytes]]) -> CodeImage:
        """Return the mounted image of ``code_hash``, building it once however many callers wait."""
        code_hash = validate_code_hash(code_hash)
        self._last_used[code_hash] = time.monotonic()
        image = self._images.get(code_hash)
        if image is not None:
            return image
        task = self._building.get(code_hash)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._build(code_hash, load_zip))
            self._building[code_hash] = task
            task.add_done_callback(lambda _t, h=code_hash: self._building.pop(h, None))
        # shield: one caller giving up (request timeout) must not cancel the others' build.
        return await asyncio.shield(task)

    async def _build(self, code_hash: str, load_zip: Callable[[], Awaitable[bytes]]) -> CodeImage:
        data = await load_zip()
        image = await asyncio.to_thread(self._build_sync, code_hash, data)
        self._images[code_hash] = image
        return image

    def _build_sync(self, code_hash: str, data: bytes) -> CodeImage:
        if hashlib.sha256(data).hexdigest() != code_hash:
            raise CodeArchiveError("CodeSha256 checksum failed")
        self.staging.mkdir(parents=True, exist_ok=True)
        work = self.staging / f"{code_hash}-{secrets.token_hex(4)}"
        tree = work / "code"
        tmp_image = work / "image.erofs"
        image_path = self.root / f"{code_hash}.erofs"
        mountpoint = self.root / code_hash
        try:
            tree.mkdir(parents=True)
            extract_zip(data, tree, max_uncompressed=self.max_uncompressed)
            self._compile(tree)
            self._normalize_modes(tree)
            self._mkfs(tmp_image, tree)
            os.replace(tmp_image, image_path)
            try:
                self._mount(image_path, mountpoint)
            except BaseException:
                image_path.unlink(missing_ok=True)
                raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        image = CodeImage(code_hash, image_path, mountpoint, image_path.stat().st_size)
        warmed = self._read_through(mountpoint)
        log.info("code_image_built", code_hash=code_hash, size=image.size, zip_size=len(data), warmed=warmed)
        return image

    @staticmethod
    def _read_through(mountpoint: Path, budget: int = WARM_BUDGET) -> int:
        """Read the image's files once (up to ``budget`` bytes), so the function's first import finds
        the image's metadata and blocks cached instead of waiting for the loop device's worker
        (several of those round trips were 1-3 ms of a cold start with a new image)."""
        left = budget
        for dirpath, _dirnames, filenames in os.walk(mountpoint):
            for name in filenames:
                if left <= 0:
                    return budget - left
                try:
                    with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                        while left > 0 and (chunk := f.read(min(left, 1 << 20))):
                            left -= len(chunk)
                except OSError:
                    continue
        return budget - left

    def _compile(self, tree: Path) -> None:
        # Syntax errors are not a build failure: the runtime reports them to the caller at init.
        compileall.compile_dir(
            str(tree), ddir=self.task_dir, quiet=2, workers=1,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)

    @staticmethod
    def _normalize_modes(tree: Path) -> None:
        # User code runs as a non-root uid: everything readable, executables stay executable.
        os.chmod(tree, 0o755)
        for dirpath, dirnames, filenames in os.walk(tree):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
            for f in filenames:
                p = os.path.join(dirpath, f)
                mode = os.lstat(p).st_mode
                os.chmod(p, 0o755 if mode & 0o111 else 0o644)

    def _mkfs(self, image: Path, tree: Path) -> None:
        cmd = [self.mkfs, "--quiet", "--all-root", str(image), str(tree)]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=MKFS_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CodeImageError(f"{self.mkfs} failed: {e}") from e
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-500:]
            raise CodeImageError(f"{self.mkfs} exited with {proc.returncode}: {err}")

    @staticmethod
    def _mount(image_path: Path, mountpoint: Path) -> None:
        mountpoint.mkdir(exist_ok=True)
        while is_mountpoint(mountpoint):  # a leftover of a crash that cleanup_stale did not see
            if not unmount(mountpoint, lazy=True):
                break
        loop = LoopDevice.attach(image_path, readonly=True, autoclear=True)
        try:
            syscalls.mount(loop.path, str(mountpoint), "erofs",
                           syscalls.MS_RDONLY | syscalls.MS_NODEV | syscalls.MS_NOSUID)
        except OSError as e:
            loop.detach()
            raise CodeImageError(f"mount {image_path} on {mountpoint}: {e.strerror}") from e
        # The mount holds the device now; with autoclear, unmount alone detaches it.
        loop.close()

    def is_built(self, code_hash: str) -> bool:
        return code_hash in self._images

    async def trim(self, in_use: Collection[str]) -> list[str]:
        """Evict least recently used images not in ``in_use`` until at most ``max_images`` remain."""
        evicted: list[str] = []
        idle = sorted((h for h in self._images if h not in in_use), key=lambda h: self._last_used.get(h, 0.0))
        for code_hash in idle[:max(0, len(self._images) - self.max_images)]:
            await self.evict(code_hash)
            evicted.append(code_hash)
        return evicted

    async def evict(self, code_hash: str) -> None:
        """Unmount and delete the image (slots still bound to it keep it alive until they unmount)."""
        code_hash = validate_code_hash(code_hash)
        task = self._building.get(code_hash)
        if task is not None:
            try:
                await asyncio.shield(task)
            except Exception:
                pass
        image = self._images.pop(code_hash, None)
        self._last_used.pop(code_hash, None)
        if image is not None:
            await asyncio.to_thread(self._remove_image, image)
            log.info("code_image_evicted", code_hash=code_hash)

    @staticmethod
    def _remove_image(image: CodeImage) -> None:
        unmount_under(image.mountpoint)
        image.image_path.unlink(missing_ok=True)
        try:
            image.mountpoint.rmdir()
        except FileNotFoundError:
            pass

    def cleanup_stale(self) -> None:
        """At start: unmount, detach and delete everything a previous run left under ``root``."""
        self.root.mkdir(parents=True, exist_ok=True)
        unmount_under(self.root)
        LoopDevice.detach_under(self.root)
        shutil.rmtree(self.staging, ignore_errors=True)
        for entry in self.root.iterdir():
            if entry.name.endswith(".erofs") and _HASH.fullmatch(entry.name.removesuffix(".erofs")):
                entry.unlink(missing_ok=True)
            elif _HASH.fullmatch(entry.name) and entry.is_dir():
                try:
                    entry.rmdir()
                except OSError as e:
                    log.warning("code_image_dir_not_removed", path=str(entry), error=e.strerror)
        self._images.clear()
        self._last_used.clear()

    async def close(self) -> None:
        """Unmount every image (in-flight builds are awaited first) and delete the files."""
        for task in list(self._building.values()):
            try:
                await asyncio.shield(task)
            except Exception:
                pass
        images = list(self._images.values())
        self._images.clear()
        for image in images:
            await asyncio.to_thread(self._remove_image, image)
