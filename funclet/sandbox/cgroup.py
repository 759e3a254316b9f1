"""Per-sandbox cgroups behind one interface for cgroup v1 (one hierarchy per controller) and v2.

The funclet creates one group per slot (``easyfaas-<pod>/<slot>``) under the cgroup that confines
the funclet itself, sets its limits, and hands ``procs_files`` to the sandbox init, which joins by
writing ``"0"`` into each file (never its pid: inside a pid namespace that would be 1).

v1 (this machine: memory, cpu, pids and cpuacct each mounted under ``<root>/<ctrl>``) and v2
(``<root>/cgroup.controllers`` exists) differ in file names and in how a group is killed; callers
only see :class:`SandboxCgroup`. A controller that the tree does not offer (the cgroup2 mount of
a hybrid host has no memory/pids/cpu) is reported by :class:`CgroupControllerMissing`, not by a
crash, so the rest of the sandbox still works.

Every call is a few small file writes; they are synchronous on purpose (run them in a worker
thread from async code when they may wait: ``kill``/``remove`` poll for up to ``KILL_TIMEOUT``).
"""

from __future__ import annotations

import abc
import errno
import os
import re
import signal
import time
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

V1_CONTROLLERS = ("memory", "cpu", "pids", "cpuacct")
V1_REQUIRED = ("memory", "cpu", "pids")
V2_CONTROLLERS = ("memory", "pids", "cpu")

# v1 reports "no limit" as PAGE_COUNTER_MAX * PAGE_SIZE (0x7FFFFFFFFFFFF000); anything this big is unlimited.
UNLIMITED_THRESHOLD = 1 << 62

KILL_TIMEOUT = 2.0
RMDIR_TIMEOUT = 2.0

_NAME_PART = re.compile(r"[A-Za-z0-9_.-]+")


class CgroupError(RuntimeError):
    """A cgroup operation failed (the message names the cgroup path)."""


class CgroupControllerMissing(CgroupError):
    """The cgroup tree does not offer a controller a limit or statistic needs."""


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _write(path: Path, value: str | int) -> None:
    # cgroupfs needs one write() per value; O_CREAT only matters for plain-file trees in tests.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _read_keyed(path: Path) -> dict[str, int]:
    """Parse a flat keyed file ("key value" per line) such as memory.events or cpu.stat."""
    out: dict[str, int] = {}
    for line in _read(path).splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def _read_procs(path: Path) -> list[int]:
    try:
        return [int(x) for x in _read(path).split()]
    except FileNotFoundError:
        return []


def _validate_name(name: str) -> list[str]:
    parts = name.split("/")
    for part in parts:
        if not _NAME_PART.fullmatch(part) or part in (".", ".."):
            raise ValueError(f"invalid cgroup name {name!r}: use /-separated parts of [A-Za-z0-9_.-]")
    return parts


def _kill_pids_until_empty(procs_files: list[Path], timeout: float) -> None:
    """SIGKILL every member until all procs files are empty (a member may fork while we kill)."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        pids = sorted({pid for f in procs_files for pid in _read_procs(f)})
        if not pids:
            return
        if time.monotonic() > deadline:
            raise CgroupError(f"processes {pids} survive SIGKILL in {procs_files[0].parent}")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _rmdir_retry(path: Path, timeout: float) -> bool:
    """rmdir a cgroup; EBUSY right after a kill is transient (exit not finished). True if removed."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupError(f"cannot remove cgroup {path}: {e.strerror}") from e
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _own_cgroup_paths(self_cgroup: str) -> dict[str, str]:
    """Map controller name (v1) or "" (v2) to this process's cgroup path, from /proc/self/cgroup."""
    out: dict[str, str] = {}
    for line in _read(Path(self_cgroup)).splitlines():
        hid, ctrls, path = line.split(":", 2)
        if hid == "0" and ctrls == "":
            out[""] = path
        for c in ctrls.split(","):
            if c:
                out[c] = path
    return out


class SandboxCgroup(abc.ABC):
    """One sandbox's cgroup (a directory per v1 hierarchy, or one v2 directory)."""

    name: str
    procs_files: list[str]

    @abc.abstractmethod
    def set_memory_limit(self, nbytes: int) -> None: ...

    @abc.abstractmethod
    def set_cpu_limit(self, millicpus: int, period_us: int = 100_000) -> None:
        """Quota = millicpus/1000 CPUs per period; millicpus <= 0 removes the limit."""

    @abc.abstractmethod
    def set_pids_limit(self, n: int) -> None:
        """At most n tasks; n <= 0 removes the limit."""

    @abc.abstractmethod
    def memory_usage(self) -> int: ...

    @abc.abstractmethod
    def memory_peak(self) -> int: ...

    @abc.abstractmethod
    def oom_kills(self) -> int: ...

    @abc.abstractmethod
    def cpu_usage_ns(self) -> int: ...

    @abc.abstractmethod
    def pids(self) -> list[int]: ...

    @abc.abstractmethod
    def kill(self) -> None: ...

    @abc.abstractmethod
    def remove(self) -> None: ...


class CgroupDriver(abc.ABC):
    version: int

    @abc.abstractmethod
    def create(self, name: str) -> SandboxCgroup:
        """Create (or reuse) the group ``name`` (e.g. "easyfaas-<pod>/<slot>") under the parent."""

    @abc.abstractmethod
    def capacity(self) -> tuple[int | None, int | None]:
        """(memory limit in bytes, milli-CPUs) that confine the parent; None where unlimited."""

    @abc.abstractmethod
    def cleanup(self, group_prefix: str) -> int:
        """Kill and remove every group under ``group_prefix``; returns how many groups were removed."""

    @abc.abstractmethod
    def missing_controllers(self) -> list[str]:
        """Controllers a sandbox group would need but this tree does not offer."""


def _cpu_quota(millicpus: int, period_us: int) -> int:
    # Same conversion as the original (runc): quota = milliCPU*period/1000, at least 1 ms.
    return max(1000, millicpus * period_us // 1000)


def _set_cpu_burst(path: Path, burst_us: int) -> None:
    """Let the group bank up to ``burst_us`` of quota it left unused (kernel >= 5.14; absent files are
    older kernels). A sandbox idles between calls and then needs a spike — a cold start, a call after
    a pause — which a plain quota cuts into throttled slices; the average stays within the quota."""
    if path.exists():
        try:
            _write(path, burst_us)
        except OSError as e:  # e.g. sysctl kernel.sched_cfs_bandwidth_slice rules it out
            log.debug("cgroup_cpu_burst_not_set", path=str(path), error=e.strerror)


# --------------------------------------------------------------------------------------------- v1


class V1SandboxCgroup(SandboxCgroup):
    def __init__(self, name: str, dirs: dict[str, Path]):
        self.name = name
        self.dirs = dirs
        unique: list[Path] = []
        for d in dirs.values():
            if d not in unique:
                unique.append(d)
        self._unique_dirs = unique
        self.procs_files = [str(d / "cgroup.procs") for d in unique]

    def __repr__(self) -> str:
        return f"V1SandboxCgroup({self.name!r})"

    def _dir(self, controller: str) -> Path:
        d = self.dirs.get(controller)
        if d is None:
            raise CgroupControllerMissing(f"cgroup v1 hierarchy {controller!r} is not mounted")
        return d

    def set_memory_limit(self, nbytes: int) -> None:
        mem = self._dir("memory")
        limit = mem / "memory.limit_in_bytes"
        memsw = mem / "memory.memsw.limit_in_bytes"
        if not memsw.exists():
            _write(limit, nbytes)
            return
        # The kernel keeps limit <= memsw.limit: raise memsw first when growing, last when shrinking.
        try:
            current = int(_read(limit))
        except (OSError, ValueError):
            current = 0
        if nbytes > current:
            self._try_memsw(memsw, nbytes)
            _write(limit, nbytes)
        else:
            _write(limit, nbytes)
            self._try_memsw(memsw, nbytes)

    @staticmethod
    def _try_memsw(path: Path, nbytes: int) -> None:
        try:
            _write(path, nbytes)
        except OSError as e:  # swap accounting off, or memsw below limit during a transition
            log.debug("cgroup_memsw_not_set", path=str(path), error=e.strerror)

    def set_cpu_limit(self, millicpus: int, period_us: int = 100_000) -> None:
        cpu = self._dir("cpu")
        burst = cpu / "cpu.cfs_burst_us"
        _set_cpu_burst(burst, 0)  # the kernel refuses a quota below the burst already set
        if millicpus <= 0:
            _write(cpu / "cpu.cfs_quota_us", -1)
            return
        quota = _cpu_quota(millicpus, period_us)
        _write(cpu / "cpu.cfs_period_us", period_us)
        _write(cpu / "cpu.cfs_quota_us", quota)
        _set_cpu_burst(burst, quota)

    def set_pids_limit(self, n: int) -> None:
        _write(self._dir("pids") / "pids.max", n if n > 0 else "max")

    def memory_usage(self) -> int:
        return int(_read(self._dir("memory") / "memory.usage_in_bytes"))

    def memory_peak(self) -> int:
        return int(_read(self._dir("memory") / "memory.max_usage_in_bytes"))

    def oom_kills(self) -> int:
        return _read_keyed(self._dir("memory") / "memory.oom_control").get("oom_kill", 0)

    def cpu_usage_ns(self) -> int:
        return int(_read(self._dir("cpuacct") / "cpuacct.usage"))

    def pids(self) -> list[int]:
        return sorted({pid for d in self._unique_dirs for pid in _read_procs(d / "cgroup.procs")})

    def kill(self) -> None:
        # v1 has no cgroup.kill; SIGKILL members until empty (bounded). Killing the sandbox's pid-ns
        # init first is cheaper, and the funclet does that; this catches anything left.
        _kill_pids_until_empty([d / "cgroup.procs" for d in self._unique_dirs], KILL_TIMEOUT)

    def remove(self) -> None:
        if not any(d.exists() for d in self._unique_dirs):
            return
        self.kill()
        for d in self._unique_dirs:
            _rmdir_retry(d, RMDIR_TIMEOUT)


class CgroupV1Driver(CgroupDriver):
    version = 1

    def __init__(self, root: str | Path = "/sys/fs/cgroup", parent: str | None = None, *,
                 self_cgroup: str = "/proc/self/cgroup",
                 controllers: tuple[str, ...] = V1_CONTROLLERS):
        self.root = Path(root)
        own = _own_cgroup_paths(self_cgroup) if parent is None else {}
        # controller -> the directory our groups go into, inside that controller's hierarchy
        self.parents: dict[str, Path] = {}
        for ctrl in controllers:
            mount = self.root / ctrl
            if not (mount / "cgroup.procs").exists():
                continue
            rel = parent if parent is not None else own.get(ctrl, "/")
            self.parents[ctrl] = mount / rel.lstrip("/")
        missing = self.missing_controllers()
        if missing:
            log.warning("cgroup_v1_controllers_missing", missing=missing, root=str(self.root))

    def missing_controllers(self) -> list[str]:
        return [c for c in V1_REQUIRED if c not in self.parents]

    def create(self, name: str) -> V1SandboxCgroup:
        _validate_name(name)
        dirs: dict[str, Path] = {}
        for ctrl, parent in self.parents.items():
            path = parent / name
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CgroupError(f"cannot create cgroup {path}: {e.strerror}") from e
            dirs[ctrl] = path
        return V1SandboxCgroup(name, dirs)

    def capacity(self) -> tuple[int | None, int | None]:
        mem: int | None = None
        if "memory" in self.parents:
            for d in self._ancestors("memory"):
                try:
                    value = int(_read(d / "memory.limit_in_bytes"))
                except (OSError, ValueError):
                    continue
                if value < UNLIMITED_THRESHOLD:
                    mem = value if mem is None else min(mem, value)
        cpu: int | None = None
        if "cpu" in self.parents:
            for d in self._ancestors("cpu"):
                try:
                    quota = int(_read(d / "cpu.cfs_quota_us"))
                    period = int(_read(d / "cpu.cfs_period_us"))
                except (OSError, ValueError):
                    continue
                if quota > 0 and period > 0:
                    milli = quota * 1000 // period
                    cpu = milli if cpu is None else min(cpu, milli)
        return mem, cpu

    def _ancestors(self, ctrl: str) -> list[Path]:
        mount = self.root / ctrl
        d = self.parents[ctrl]
        out = [d]
        while d != mount and mount in d.parents:
            d = d.parent
            out.append(d)
        return out

    def cleanup(self, group_prefix: str) -> int:
        _validate_name(group_prefix)
        removed: set[str] = set()
        for parent in self.parents.values():
            top = parent / group_prefix
            if not top.is_dir():
                continue
            for dirpath, _dirs, _files in os.walk(top, topdown=False):
                d = Path(dirpath)
                _kill_pids_until_empty([d / "cgroup.procs"], KILL_TIMEOUT)
                if _rmdir_retry(d, RMDIR_TIMEOUT):
                    removed.add(str(d.relative_to(parent)))
        if removed:
            log.info("cgroup_stale_removed", prefix=group_prefix, count=len(removed))
        return len(removed)


# --------------------------------------------------------------------------------------------- v2


class V2SandboxCgroup(SandboxCgroup):
    def __init__(self, name: str, path: Path, controllers: set[str]):
        self.name = name
        self.path = path
        self.controllers = controllers
        self.procs_files = [str(path / "cgroup.procs")]

    def __repr__(self) -> str:
        return f"V2SandboxCgroup({self.name!r})"

    def _need(self, controller: str) -> None:
        if controller not in self.controllers:
            raise CgroupControllerMissing(
                f"cgroup v2 controller {controller!r} is not enabled for {self.path} "
                f"(available: {' '.join(sorted(self.controllers)) or 'none'})")

    def set_memory_limit(self, nbytes: int) -> None:
        self._need("memory")
        _write(self.path / "memory.max", nbytes)
        swap = self.path / "memory.swap.max"
        if swap.exists():
            _write(swap, 0)
        # 0 (the kernel's default, written in case a parent's delegation changed it): the OOM killer
        # takes the one offending process, never the whole group with the sandbox's runner in it.
        group = self.path / "memory.oom.group"
        if group.exists():
            _write(group, 0)

    def set_cpu_limit(self, millicpus: int, period_us: int = 100_000) -> None:
        self._need("cpu")
        burst = self.path / "cpu.max.burst"
        _set_cpu_burst(burst, 0)  # the kernel refuses a quota below the burst already set
        quota = 0 if millicpus <= 0 else _cpu_quota(millicpus, period_us)
        _write(self.path / "cpu.max", f"{quota or 'max'} {period_us}")
        if quota:
            _set_cpu_burst(burst, quota)

    def set_pids_limit(self, n: int) -> None:
        self._need("pids")
        _write(self.path / "pids.max", n if n > 0 else "max")

    def memory_usage(self) -> int:
        self._need("memory")
        return int(_read(self.path / "memory.current"))

    def memory_peak(self) -> int:
        self._need("memory")
        peak = self.path / "memory.peak"  # kernel >= 5.19
        return int(_read(peak if peak.exists() else self.path / "memory.current"))

    def oom_kills(self) -> int:
        self._need("memory")
        return _read_keyed(self.path / "memory.events").get("oom_kill", 0)

    def cpu_usage_ns(self) -> int:
        # cpu.stat's usage_usec exists even without the cpu controller enabled.
        return _read_keyed(self.path / "cpu.stat").get("usage_usec", 0) * 1000

    def pids(self) -> list[int]:
        return sorted(_read_procs(self.path / "cgroup.procs"))

    def populated(self) -> bool:
        try:
            return _read_keyed(self.path / "cgroup.events").get("populated", 0) == 1
        except FileNotFoundError:
            return bool(self.pids())

    def kill(self) -> None:
        kill_file = self.path / "cgroup.kill"  # kernel >= 5.14
        if not kill_file.exists():
            _kill_pids_until_empty([self.path / "cgroup.procs"], KILL_TIMEOUT)
            return
        _write(kill_file, 1)
        deadline = time.monotonic() + KILL_TIMEOUT
        delay = 0.0005
        while self.populated():
            if time.monotonic() > deadline:
                raise CgroupError(f"cgroup {self.path} still populated after cgroup.kill")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def remove(self) -> None:
        if not self.path.exists():
            return
        self.kill()
        _rmdir_retry(self.path, RMDIR_TIMEOUT)


class CgroupV2Driver(CgroupDriver):
    version = 2

    def __init__(self, root: str | Path = "/sys/fs/cgroup", parent: str | None = None, *,
                 self_cgroup: str = "/proc/self/cgroup",
                 controllers: tuple[str, ...] = V2_CONTROLLERS):
        self.root = Path(root)
        rel = parent if parent is not None else _own_cgroup_paths(self_cgroup).get("", "/")
        self.parent = self.root / rel.lstrip("/")
        self.wanted = controllers
        available = self._controllers_of(self.parent)
        self.available = {c for c in controllers if c in available}
        missing = self.missing_controllers()
        if missing:
            log.warning("cgroup_v2_controllers_missing", missing=missing, parent=str(self.parent),
                        available=sorted(available))

    @staticmethod
    def _controllers_of(path: Path) -> set[str]:
        try:
            return set(_read(path / "cgroup.controllers").split())
        except OSError:
            return set()

    @staticmethod
    def _subtree_of(path: Path) -> set[str]:
        try:
            # The kernel lists plain names; strip "+" so a plain-file test tree reads the same.
            return {t.lstrip("+") for t in _read(path / "cgroup.subtree_control").split()}
        except OSError:
            return set()

    def missing_controllers(self) -> list[str]:
        return [c for c in self.wanted if c not in self.available]

    def _enable_subtree(self, path: Path, controllers: set[str]) -> set[str]:
        """Enable ``controllers`` for the children of ``path``; returns what the children get."""
        have = self._subtree_of(path)
        todo = sorted(controllers - have)
        if todo:
            try:
                _write(path / "cgroup.subtree_control", " ".join("+" + c for c in todo))
            except OSError as e:
                # EBUSY: ``path`` holds processes itself ("no internal processes" rule) — the
                # deployment must give the funclet a delegated subtree with its own leaf.
                log.warning("cgroup_v2_subtree_control_failed", path=str(path), controllers=todo,
                            error=e.strerror)
            have = self._subtree_of(path)
        return have

    def create(self, name: str) -> V2SandboxCgroup:
        parts = _validate_name(name)
        enabled = self._enable_subtree(self.parent, self.available) & self.available
        path = self.parent
        for i, part in enumerate(parts):
            path = path / part
            try:
                path.mkdir(exist_ok=True)
            except OSError as e:
                raise CgroupError(f"cannot create cgroup {path}: {e.strerror}") from e
            if i < len(parts) - 1:
                # Intermediate groups only hold children, never processes, so enabling is allowed.
                enabled = self._enable_subtree(path, enabled) & enabled
        return V2SandboxCgroup(name, path, enabled)

    def capacity(self) -> tuple[int | None, int | None]:
        mem: int | None = None
        cpu: int | None = None
        d = self.parent
        while True:
            try:
                raw = _read(d / "memory.max").strip()
                if raw != "max" and int(raw) < UNLIMITED_THRESHOLD:
                    mem = int(raw) if mem is None else min(mem, int(raw))
            except (OSError, ValueError):
                pass
            try:
                quota, period = _read(d / "cpu.max").split()
                if quota != "max" and int(period) > 0:
                    milli = int(quota) * 1000 // int(period)
                    cpu = milli if cpu is None else min(cpu, milli)
            except (OSError, ValueError):
                pass
            if d == self.root or self.root not in d.parents:
                break
            d = d.parent
        return mem, cpu

    def cleanup(self, group_prefix: str) -> int:
        _validate_name(group_prefix)
        top = self.parent / group_prefix
        removed = 0
        if not top.is_dir():
            return 0
        for dirpath, _dirs, _files in os.walk(top, topdown=False):
            group = V2SandboxCgroup(str(Path(dirpath).relative_to(self.parent)), Path(dirpath), set())
            group.kill()
            if _rmdir_retry(group.path, RMDIR_TIMEOUT):
                removed += 1
        if removed:
            log.info("cgroup_stale_removed", prefix=group_prefix, count=removed)
        return removed


def detect_driver(root: str | Path = "/sys/fs/cgroup", parent: str | None = None, *,
                  self_cgroup: str = "/proc/self/cgroup") -> CgroupDriver:
    """v2 if ``root`` is a cgroup2 tree (has cgroup.controllers), else v1 hierarchies under ``root``.

    ``parent`` is the path, inside each hierarchy, that our groups go under; by default the cgroup
    this process is in, so the pod nests under whatever confines the funclet.
    """
    root = Path(root)
    if (root / "cgroup.controllers").exists():
        return CgroupV2Driver(root, parent, self_cgroup=self_cgroup)
    return CgroupV1Driver(root, parent, self_cgroup=self_cgroup)
