"""Loop devices by ioctl and erofs code images (real loop devices, real mounts)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import os
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from easyfaas import syscalls
from funclet.sandbox.loop import LoopDevice
from funclet.sandbox.mounts import mounts_at, parse_mountinfo, unmount, unmount_under


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _sys(dev: LoopDevice, name: str) -> str:
    return Path(f"/sys/block/loop{dev.number}/{name}").read_text().strip()


def _wait_detached(number: int, image: str, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            backing = Path(f"/sys/block/loop{number}/loop/backing_file").read_text().strip()
        except FileNotFoundError:
            return True
        if not backing.startswith(image):
            return True
        time.sleep(0.01)
    return False


def _no_leftovers(root: Path) -> None:
    prefix = os.path.realpath(root)
    assert not [e.mountpoint for e in parse_mountinfo() if _under(e.mountpoint, prefix)]
    assert LoopDevice.find_attached(prefix) == []


@pytest.fixture
def erofs_image(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "hello.txt").write_text("hello from erofs")
    image = tmp_path / "img.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", str(image), str(tree)], check=True)
    try:
        yield image
    finally:
        unmount_under(tmp_path)
        LoopDevice.detach_under(tmp_path)
        _no_leftovers(tmp_path)


def test_loop_attach_readonly_autoclear_and_detach(erofs_image):
    dev = LoopDevice.attach(erofs_image)
    try:
        assert dev.path == f"/dev/loop{dev.number}" and stat.S_ISBLK(os.stat(dev.path).st_mode)
        assert dev.backing_file() == str(erofs_image.resolve())
        assert _sys(dev, "ro") == "1"
        assert _sys(dev, "loop/autoclear") == "1"
        assert dev in LoopDevice.find_attached(erofs_image.parent)
    finally:
        dev.detach()
    assert dev.fd is None
    assert _wait_detached(dev.number, str(erofs_image))
    dev.detach()  # not bound any more: ENXIO ignored


def test_loop_autoclear_after_unmount(erofs_image, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    dev = LoopDevice.attach(erofs_image)
    syscalls.mount(dev.path, str(mnt), "erofs", syscalls.MS_RDONLY)
    dev.close()  # the mount holds the device now
    assert (mnt / "hello.txt").read_text() == "hello from erofs"
    assert dev.backing_file() == str(erofs_image.resolve())
    unmount(mnt)
    assert _wait_detached(dev.number, str(erofs_image))


def test_loop_two_devices_and_detach_under(erofs_image):
    a = LoopDevice.attach(erofs_image)
    b = LoopDevice.attach(erofs_image, autoclear=False)
    try:
        assert a.number != b.number
        b.close()  # without autoclear the device stays bound
        assert b.backing_file() == str(erofs_image.resolve())
        found = {d.number for d in LoopDevice.find_attached(erofs_image.parent)}
        assert {a.number, b.number} <= found
        a.close()
    finally:
        assert LoopDevice.detach_under(erofs_image.parent) >= 1
    assert _wait_detached(a.number, str(erofs_image))
    assert _wait_detached(b.number, str(erofs_image))


def test_loop_attach_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        LoopDevice.attach(tmp_path / "nope.img")


# ------------------------------------------------------------------------------------ code images

HANDLER = "def handler(event, context):\n    return 'hi'\n"


def _zip(files: dict[str, tuple[str, int]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, (text, mode) in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, text)
    return buf.getvalue()


def _code_zip() -> bytes:
    return _zip({
        "index.py": (HANDLER, 0o644),
        "pkg/__init__.py": ("", 0o644),
        "pkg/util.py": ("X = 1\n", 0o600),
        "broken.py": ("def oops(:\n", 0o644),
        "bin/run.sh": ("#!/bin/sh\necho ok\n", 0o755),
    })


@pytest.fixture
def codezip():
    return pytest.importorskip("easyfaas.codezip")


@pytest.fixture
async def store(codezip, tmp_path):
    from funclet.sandbox.codeimage import CodeImageStore

    root = tmp_path / "images"
    s = CodeImageStore(root)
    s.cleanup_stale()
    try:
        yield s
    finally:
        await s.close()
        s.cleanup_stale()
        _no_leftovers(root)


def _loader(data: bytes, calls: list[int] | None = None, delay: float = 0.0):
    async def load() -> bytes:
        if calls is not None:
            calls.append(1)
        if delay:
            await asyncio.sleep(delay)
        return data
    return load


async def test_build_mounts_readonly_erofs_with_pyc(store):
    data = _code_zip()
    code_hash = hashlib.sha256(data).hexdigest()
    image = await store.ensure(code_hash, _loader(data))
    assert image.code_hash == code_hash
    assert image.image_path == store.root / f"{code_hash}.erofs" and image.image_path.is_file()
    assert image.mountpoint == store.root / code_hash
    assert image.size == image.image_path.stat().st_size > 0
    assert store.get(code_hash) is image and store.get(code_hash.upper()) is image

    (entry,) = mounts_at(image.mountpoint)
    assert entry.fstype == "erofs" and entry.readonly
    assert {"nosuid", "nodev"} <= set(entry.options.split(","))
    assert entry.source.startswith("/dev/loop")

    m = image.mountpoint
    assert (m / "index.py").read_text() == HANDLER
    assert stat.S_IMODE((m / "index.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((m / "pkg/util.py").stat().st_mode) == 0o644  # readable by the sandbox uid
    assert stat.S_IMODE((m / "bin/run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE(m.stat().st_mode) == 0o755
    assert (m / "index.py").stat().st_uid == 0
    assert subprocess.run([str(m / "bin/run.sh")], capture_output=True).stdout == b"ok\n"

    tag = sys.implementation.cache_tag
    pyc = m / "__pycache__" / f"index.{tag}.pyc"
    header = pyc.read_bytes()[:16]
    assert int.from_bytes(header[4:8], "little") == 0b01  # hash-based, unchecked
    assert (m / "pkg" / "__pycache__" / f"util.{tag}.pyc").exists()
    assert not (m / "__pycache__" / f"broken.{tag}.pyc").exists()  # syntax error: no pyc, no failure

    with pytest.raises(OSError) as exc:
        (m / "new.txt").write_text("x")
    assert exc.value.errno == errno.EROFS
    assert list(store.staging.iterdir()) == []


async def test_concurrent_ensure_builds_once(store):
    data = _code_zip()
    code_hash = hashlib.sha256(data).hexdigest()
    calls: list[int] = []
    load = _loader(data, calls, delay=0.05)
    images = await asyncio.gather(*(store.ensure(code_hash, load) for _ in range(5)))
    assert all(img is images[0] for img in images)
    assert calls == [1]
    assert len(mounts_at(images[0].mountpoint)) == 1
    assert await store.ensure(code_hash, load) is images[0]
    assert calls == [1]


async def test_checksum_mismatch_and_bad_zip_leave_nothing(store, codezip):
    data = _code_zip()
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(codezip.CodeArchiveError, match="CodeSha256 checksum failed"):
        await store.ensure(wrong, _loader(data))

    garbage = b"PK\x03\x04 this is not a zip"
    garbage_hash = hashlib.sha256(garbage).hexdigest()
    with pytest.raises(codezip.CodeArchiveError):
        await store.ensure(garbage_hash, _loader(garbage))

    for h in (wrong, garbage_hash):
        assert store.get(h) is None
        assert not (store.root / h).exists()
        assert not (store.root / f"{h}.erofs").exists()
    assert list(store.staging.iterdir()) == []
    _no_leftovers(store.root)

    # A failed build is not cached: the right bytes build fine afterwards.
    good = await store.ensure(hashlib.sha256(data).hexdigest(), _loader(data))
    assert (good.mountpoint / "index.py").exists()


async def test_invalid_hash_rejected(store):
    for bad in ("../../etc", "abc", "g" * 64, "a" * 63):
        with pytest.raises(ValueError, match="invalid code hash"):
            await store.ensure(bad, _loader(b""))
    assert store.get("../../etc") is None


async def test_evict_frees_loop_device(store):
    data = _code_zip()
    code_hash = hashlib.sha256(data).hexdigest()
    image = await store.ensure(code_hash, _loader(data))
    (entry,) = mounts_at(image.mountpoint)
    number = int(entry.source.removeprefix("/dev/loop"))
    assert Path(f"/sys/block/loop{number}/loop/backing_file").read_text().strip() == str(image.image_path)

    await store.evict(code_hash)
    assert store.get(code_hash) is None
    assert not image.mountpoint.exists() and not image.image_path.exists()
    assert _wait_detached(number, str(image.image_path))
    await store.evict(code_hash)  # nothing left to do


async def test_cleanup_stale_after_crash(codezip, tmp_path):
    from funclet.sandbox.codeimage import CodeImageStore

    root = tmp_path / "images"
    crashed = CodeImageStore(root)
    data = _code_zip()
    code_hash = hashlib.sha256(data).hexdigest()
    image = await crashed.ensure(code_hash, _loader(data))
    # what a crash mid-build leaves: a staging dir and a half-written image
    (root / "staging" / f"{code_hash}-dead" / "code").mkdir(parents=True)
    (root / "staging" / f"{code_hash}-dead" / "image.erofs").write_bytes(b"\0" * 4096)
    # and the old process is gone without unmounting anything
    del crashed

    fresh = CodeImageStore(root)
    try:
        fresh.cleanup_stale()
        assert not image.mountpoint.exists() and not image.image_path.exists()
        assert not (root / "staging").exists()
        _no_leftovers(root)
        assert list(root.iterdir()) == []
        rebuilt = await fresh.ensure(code_hash, _loader(data))
        assert (rebuilt.mountpoint / "index.py").read_text() == HANDLER
    finally:
        await fresh.close()
        fresh.cleanup_stale()
        _no_leftovers(root)
