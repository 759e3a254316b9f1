"""Host mount operations, including the slot propagation the sandboxes depend on (real mounts)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from easyfaas import syscalls
from funclet.sandbox.mounts import (
    bind,
    is_mountpoint,
    make_shared_dir,
    mounts_at,
    parse_mountinfo,
    unmount,
    unmount_under,
)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


@pytest.fixture
def base(tmp_path):
    try:
        yield tmp_path
    finally:
        unmount_under(tmp_path)
        prefix = os.path.realpath(tmp_path)
        assert not [e for e in parse_mountinfo() if _under(e.mountpoint, prefix)]


def test_parse_mountinfo_fields_and_escapes(tmp_path):
    sample = tmp_path / "mountinfo"
    sample.write_text(
        "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard\n"
        "90 27 0:50 / /tmp/with\\040space rw,nosuid shared:7 master:3 - tmpfs my\\134src rw,size=64k\n"
        "91 27 0:51 / /mnt/priv ro,relatime - erofs /dev/loop3 ro\n"
    )
    entries = parse_mountinfo(str(sample))
    assert [e.mount_id for e in entries] == [27, 90, 91]
    e = entries[1]
    assert e.parent_id == 27
    assert e.mountpoint == "/tmp/with space"
    assert e.source == "my\\src"
    assert e.fstype == "tmpfs"
    assert e.propagation == "shared:7 master:3" and e.shared
    assert e.options == "rw,nosuid" and not e.readonly
    assert entries[2].propagation == "" and entries[2].readonly and not entries[2].shared


def test_parse_real_mountinfo_has_root():
    assert any(e.mountpoint == "/" for e in parse_mountinfo())


def test_bind_readonly_and_unmount(base):
    src, dst = base / "src", base / "dir with space"
    src.mkdir()
    dst.mkdir()
    (src / "f").write_text("data")
    assert not is_mountpoint(dst)
    bind(src, dst, readonly=True)
    assert is_mountpoint(dst)
    (entry,) = mounts_at(dst)
    assert entry.mountpoint == str(dst.resolve()) and entry.readonly
    assert (dst / "f").read_text() == "data"
    with pytest.raises(OSError) as exc:
        (dst / "new").write_text("x")
    assert exc.value.errno == errno.EROFS
    assert unmount(dst) is True
    assert not is_mountpoint(dst)
    assert unmount(dst) is False  # not mounted: ignored


def test_bind_writable(base):
    src, dst = base / "src", base / "dst"
    src.mkdir()
    dst.mkdir()
    bind(src, dst, readonly=False)
    (dst / "new").write_text("x")
    assert (src / "new").read_text() == "x"
    unmount(dst, lazy=False)
    assert not is_mountpoint(dst)


def test_unmount_under_deepest_first(base):
    top = base / "top"
    top.mkdir()
    syscalls.mount("tmpfs", str(top), "tmpfs", 0, "size=1m")
    (top / "a" / "b").mkdir(parents=True)
    src = base / "src"
    src.mkdir()
    bind(src, top / "a", readonly=True)
    (src / "b").mkdir()
    bind(src, top / "a" / "b", readonly=False)
    assert unmount_under(top) == 3
    assert not is_mountpoint(top)
    assert unmount_under(top) == 0


def test_make_shared_dir_is_idempotent(base):
    d = base / "slots"
    make_shared_dir(d)
    make_shared_dir(d)
    entries = mounts_at(d)
    assert len(entries) == 1 and entries[0].shared


def _sandbox_child(shared_task: Path, sandbox_task: Path) -> tuple[int, int, int]:
    """Fork a stand-in sandbox: own mount ns, slave of the host, binds the slot's task dir.

    Returns (pid, command fd, answer fd). Command b"?" → answer b"1"/b"0" (marker visible?).
    """
    cmd_r, cmd_w = os.pipe()
    ans_r, ans_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only simple calls, always _exit
        code = 1
        try:
            os.close(cmd_w)
            os.close(ans_r)
            syscalls.unshare(syscalls.CLONE_NEWNS)
            syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_SLAVE)
            syscalls.mount(str(shared_task), str(sandbox_task), None, syscalls.MS_BIND)
            os.write(ans_w, b"R")
            while os.read(cmd_r, 1) == b"?":
                os.write(ans_w, b"1" if os.path.exists(os.path.join(sandbox_task, "marker")) else b"0")
            code = 0
        finally:
            os._exit(code)
    os.close(cmd_r)
    os.close(ans_w)
    assert os.read(ans_r, 1) == b"R"
    return pid, cmd_w, ans_r


def test_slot_mount_propagates_into_sandbox(base):
    slots = base / "slots"
    make_shared_dir(slots)
    (slots / "slot0" / "task").mkdir(parents=True)
    sandbox_task = base / "sandbox-var-task"  # outside the shared dir, like /var/task
    sandbox_task.mkdir()
    code = base / "code"
    code.mkdir()
    (code / "marker").write_text("hello")

    pid, cmd, ans = _sandbox_child(slots / "slot0" / "task", sandbox_task)

    def child_sees_marker() -> bool:
        os.write(cmd, b"?")
        return os.read(ans, 1) == b"1"

    via_proc = Path(f"/proc/{pid}/root") / str(sandbox_task).lstrip("/") / "marker"
    try:
        assert not child_sees_marker()
        bind(code, slots / "slot0" / "task", readonly=True)
        assert child_sees_marker()
        assert via_proc.read_text() == "hello"
        # The host never sees it at the sandbox path: it exists only in the child's namespace.
        assert not (sandbox_task / "marker").exists()
        unmount(slots / "slot0" / "task")
        assert not child_sees_marker()
        assert not via_proc.exists()
        # A second image mounted later reaches the same sandbox.
        bind(code, slots / "slot0" / "task", readonly=True)
        assert child_sees_marker()
    finally:
        os.write(cmd, b"q")
        os.close(cmd)
        os.close(ans)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
