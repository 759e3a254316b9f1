"""Hostile functions: real functions, deployed to a real pod and invoked, that attack their sandbox.

Every attempt must be contained. One Python function carries the attacks as named probes (one
sandbox, reused by every test, evicted and rebuilt as the pool needs); each probe reports, per
attempt, either the errno that stopped it or ``ok:...`` when it got through. Probes that would
change the probing process (namespaces, ptrace) run in a forked child; probes that succeed undo
themselves (a key is revoked, a written file removed, a hostname set back).

Safety: the hostile handler refuses to run unless it is confined (not root, a sandbox hostname of
this pod, the host's /work and /sys/fs/cgroup invisible), and every probe is only sent after the test
checked from the host, via /proc, that the function's runtime is inside the sandbox's namespaces
and cgroups (``confinement``). Network probes only target this test's own pod: its ports, its bridge address, listeners
the test opens itself, and a second sandbox of the same pod.

The last sections build sandboxes without the pod where a probe must be precise (reset against
nasty daemons), and test the seccomp filter and the bridge firewall on their own.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import secrets
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from easyfaas.function_code import b64zip
from easyfaas.pod import Pod
from funclet.sandbox.firewall import BridgeFirewall, list_tables
from runner import seccomp
from tests.fakes.waiting import wait_until
from tests.pod_harness import PodClient, unique
from tests.egress_harness import outside  # noqa: F401 - fixture

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(platform.machine() != "x86_64",
                                                   reason="the probes use x86_64 system call numbers")]

HOSTILE_PY = r'''
import ctypes, errno, json, os, signal, socket, stat, struct, subprocess, sys, threading, time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {"keyctl": 250, "add_key": 248, "syslog": 103, "perf_event_open": 298, "userfaultfd": 323,
      "io_uring_setup": 425, "clone3": 435, "clone": 56, "finit_module": 313, "bpf": 321,
      "open_by_handle_at": 304, "name_to_handle_at": 303, "pidfd_open": 434, "pidfd_getfd": 438,
      "ptrace": 101, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
      "chroot": 161, "sethostname": 170, "fsopen": 430, "open_tree": 428}
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000


def sys_call(name, *args):
    argv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ret = libc.syscall(NR[name], *argv)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def attempt(fn, *args):
    """The errno name that stopped fn, or 'ok' / 'ok:<what it got>' when it went through."""
    try:
        got = fn(*args)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else f"{type(exc).__name__}:{exc}"
    except Exception as exc:
        return f"{type(exc).__name__}:{str(exc)[:120]}"
    return "ok" if got is None else f"ok:{str(got)[:300]}"


def in_child(fn, *args):
    """attempt() in a forked child: namespaces, ptrace and the like must not touch the runtime."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.write(w, attempt(fn, *args).encode()[:4000])
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return data.decode()


def guard(expected_host):
    """Refuse to attack anything unless this is the sandbox the test says it is."""
    if os.getuid() == 0 or os.geteuid() == 0:
        raise SystemExit("refusing to probe: running as root")
    if not socket.gethostname().startswith(expected_host):
        raise SystemExit(f"refusing to probe: hostname {socket.gethostname()} is not {expected_host}*")
    if os.path.exists("/work") or os.path.exists("/sys/fs/cgroup"):
        raise SystemExit("refusing to probe: the host's filesystem is visible")


def status_fields():
    lines = open("/proc/self/status").read().splitlines()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {k: fields[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")}


def read(path, size=200):
    with open(path, "rb") as f:
        return f.read(size)


def write_then_remove(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    os.unlink(path)  # it went through: leave nothing behind


# ---- probes -------------------------------------------------------------------------------------

def p_whoami(a):
    return {"uid": os.getuid(), "pid": os.getpid(), "ppid": os.getppid(), "hostname": socket.gethostname(),
            "status": status_fields()}


def p_files(a):
    out = {}
    targets = ["/etc/shadow", "/etc/gshadow", "/root/.bashrc", "/root/.ssh", "/home", "/boot", "/var/log", "/sys/kernel",
               "/proc/1/root/etc/passwd", "/proc/1/cwd", "/proc/1/environ", "/proc/1/mem",
               "/var/task/../../../etc/shadow", "/proc/self/root/../../etc/shadow", "/proc/kmsg", "/dev/kmsg",
               "/dev/mem", "/dev/sda", "/dev/vda"] + list(a["host_paths"])
    for path in targets:
        out[f"read {path}"] = attempt(lambda p=path: os.listdir(p) if os.path.isdir(p) else read(p))
    for i, path in enumerate(a["host_paths"] + ["/etc/shadow"]):
        link = f"/tmp/link{i}"
        os.symlink(path, link)
        out[f"symlink {path}"] = attempt(lambda p=link: os.listdir(p) if os.path.isdir(p) else read(p))
        os.unlink(link)
    # /proc/<pid>/root and cwd of every process this user can see
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        for what in ("root", "cwd"):
            try:
                target = os.readlink(f"/proc/{pid}/{what}")
            except OSError:
                continue
            out[f"/proc/{pid}/{what}"] = target
    # Every mount's source as the sandbox sees it: nothing may name a host path that opens.
    leaked = []
    for line in open("/proc/self/mountinfo"):
        fields = line.split()
        root, point = fields[3], fields[4]
        if root not in ("/",) and os.path.exists(root) and not point.startswith(root):
            leaked.append(root)
    out["mount roots that open"] = leaked
    out["fds"] = {fd: attempt(os.readlink, f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    handle = ctypes.create_string_buffer(8 + 128)
    struct.pack_into("II", handle, 0, 128, 0)
    mount_id = ctypes.c_int()
    out["name_to_handle_at"] = attempt(sys_call, "name_to_handle_at", -100, b"/var/task", handle,
                                       ctypes.byref(mount_id), 0)
    out["open_by_handle_at"] = attempt(lambda: os.close(sys_call("open_by_handle_at", os.open("/", os.O_RDONLY),
                                                                  handle, os.O_RDONLY)))
    out["chroot"] = in_child(sys_call, "chroot", b"/tmp")
    return out


def p_writes(a):
    out = {}
    import sysconfig
    for path in ["/var/task/x", "/var/runtime/x", "/etc/x", "/usr/x", "/usr/bin/x", "/x", "/dev/x", "/proc/x",
                 "/var/x", os.path.join(sysconfig.get_paths()["stdlib"], "x.py"), "/dev/shm/../x"]:
        out[path] = attempt(write_then_remove, path)
    for path in ["/var/task/index.py", "/etc/passwd", "/etc/hosts", "/usr/bin/env"]:
        out[f"append {path}"] = attempt(lambda p=path: os.close(os.open(p, os.O_WRONLY | os.O_APPEND)))
    current = open("/proc/sys/kernel/hostname").read().strip()
    out["/proc/sys/kernel/hostname"] = attempt(lambda: open("/proc/sys/kernel/hostname", "w").write(current))
    out["/proc/sys/vm/drop_caches"] = attempt(lambda: os.close(os.open("/proc/sys/vm/drop_caches", os.O_WRONLY)))
    out["/proc/sys/kernel/core_pattern"] = attempt(
        lambda: os.close(os.open("/proc/sys/kernel/core_pattern", os.O_WRONLY)))
    out["mknod"] = attempt(lambda: (os.mknod("/tmp/null", stat.S_IFCHR | 0o666, os.makedev(1, 3)),
                                    os.unlink("/tmp/null")))
    out["chmod /var/task"] = attempt(os.chmod, "/var/task", 0o777)
    out["remount /"] = attempt(sys_call, "mount", None, b"/", None, 32 | 4096, None)  # MS_REMOUNT|MS_BIND
    return out


def fill(path, cap):
    written = 0
    chunk = b"x" * (1 << 20)
    err = "none"
    try:
        with open(path, "wb") as f:
            while written < cap:
                f.write(chunk)
                f.flush()
                written += len(chunk)
    except OSError as exc:
        err = errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        os.unlink(path)
    return {"written": written, "error": err}


def p_fill(a):
    return {d: fill(f"{d}/fill", a["cap"]) for d in ("/tmp", "/dev/shm")}


def p_procs(a):
    out = {}
    mine = os.getuid()
    seen = {}
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            uid = int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("Uid:")).split()[1])
        except (OSError, StopIteration):
            continue
        seen[pid] = uid
    out["foreign uids visible"] = sorted({u for u in seen.values() if u != mine})
    out["pid count"] = len(seen)
    out["kill 1"] = attempt(os.kill, 1, 0)
    out["ptrace attach 1"] = in_child(sys_call, "ptrace", 16, 1, 0, 0)  # PTRACE_ATTACH
    out["ptrace traceme"] = in_child(sys_call, "ptrace", 0, 0, 0, 0)
    out["pidfd_getfd 1"] = attempt(lambda: sys_call("pidfd_getfd", sys_call("pidfd_open", 1, 0), 0, 0))
    out["/proc/1/environ"] = attempt(read, "/proc/1/environ")
    out["/proc/1/cmdline"] = attempt(read, "/proc/1/cmdline")
    found = []
    token = a["token"].encode()
    for pid in seen:
        for what in ("environ", "cmdline"):
            try:
                if token in read(f"/proc/{pid}/{what}", 1 << 20):
                    found.append(f"{pid}/{what}")
            except OSError:
                pass
    out["secret found"] = found
    out["my pidns"] = attempt(os.readlink, "/proc/self/ns/pid")
    return out


def p_privileges(a):
    out = {"status": status_fields()}
    out["unshare user"] = in_child(sys_call, "unshare", CLONE_NEWUSER)
    out["unshare user+mount, mount tmpfs"] = in_child(lambda: (
        sys_call("unshare", CLONE_NEWUSER | CLONE_NEWNS),
        sys_call("mount", b"none", b"/tmp", b"tmpfs", 0, None),
        sys_call("umount2", b"/tmp", 2)))
    out["unshare user+uts, sethostname"] = in_child(lambda: (
        sys_call("unshare", CLONE_NEWUSER | CLONE_NEWUTS),
        sys_call("sethostname", b"pwned-by-sandbox", 16)))
    out["unshare user+net"] = in_child(sys_call, "unshare", CLONE_NEWUSER | CLONE_NEWNET)
    out["unshare net"] = in_child(sys_call, "unshare", CLONE_NEWNET)
    out["unshare mount"] = in_child(sys_call, "unshare", CLONE_NEWNS)
    out["unshare pid"] = in_child(sys_call, "unshare", CLONE_NEWPID)

    def clone_newuser():
        pid = sys_call("clone", CLONE_NEWUSER | signal.SIGCHLD, 0, 0, 0, 0)
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return pid
    out["clone newuser"] = in_child(clone_newuser)
    out["clone3"] = attempt(sys_call, "clone3", None, 0)
    out["unshare utility"] = subprocess.run(["/usr/bin/unshare", "-U", "-r", "id", "-u"], capture_output=True,
                                            text=True).stdout.strip() or "failed"
    out["setns"] = in_child(lambda: sys_call("setns", os.open("/proc/self/ns/uts", os.O_RDONLY), 0))
    out["mount tmpfs"] = in_child(sys_call, "mount", b"none", b"/tmp", b"tmpfs", 0, None)
    out["umount /var/task"] = in_child(sys_call, "umount2", b"/var/task", 2)
    out["pivot_root"] = in_child(sys_call, "pivot_root", b"/tmp", b"/tmp")
    out["fsopen"] = in_child(sys_call, "fsopen", b"tmpfs", 0)
    out["open_tree"] = in_child(sys_call, "open_tree", -100, b"/", 1)  # OPEN_TREE_CLONE
    name = socket.gethostname()
    out["sethostname"] = attempt(lambda: (sys_call("sethostname", b"pwned", 5),
                                          sys_call("sethostname", name.encode(), len(name))))

    def add_key():
        key = sys_call("add_key", b"user", b"efprobe", b"secret", 6, -4)  # KEY_SPEC_USER_KEYRING
        sys_call("keyctl", 3, key, 0, 0, 0)  # KEYCTL_REVOKE: leave nothing for the next function
        return key
    out["add_key"] = attempt(add_key)
    out["keyctl session"] = attempt(sys_call, "keyctl", 0, -3, 0, 0, 0)  # KEYCTL_GET_KEYRING_ID session
    out["finit_module"] = attempt(sys_call, "finit_module", os.open("/dev/null", os.O_RDONLY), b"", 0)
    out["syslog size"] = attempt(sys_call, "syslog", 10, None, 0)  # SYSLOG_ACTION_SIZE_BUFFER
    buf = ctypes.create_string_buffer(4096)
    out["syslog read"] = attempt(lambda: buf.raw[:sys_call("syslog", 3, buf, 4096)][:40])
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("IIIQ", attr, 0, 1, 128, 0, 0)  # PERF_TYPE_SOFTWARE, size, CPU_CLOCK
    struct.pack_into("Q", attr, 40, 1 << 5 | 1 << 6)  # exclude_kernel | exclude_hv
    out["perf_event_open"] = attempt(lambda: os.close(sys_call("perf_event_open", attr, 0, -1, -1, 0)))
    out["userfaultfd"] = attempt(lambda: os.close(sys_call("userfaultfd", 1)))  # UFFD_USER_MODE_ONLY
    params = ctypes.create_string_buffer(120)
    out["io_uring_setup"] = attempt(lambda: os.close(sys_call("io_uring_setup", 1, params)))
    bpf_attr = ctypes.create_string_buffer(72)
    struct.pack_into("IIII", bpf_attr, 0, 2, 4, 4, 1)  # BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry
    out["bpf map"] = attempt(lambda: os.close(sys_call("bpf", 0, bpf_attr, 72)))
    for label, family, kind, proto in (("raw ip", 2, socket.SOCK_RAW, 1), ("packet", 17, socket.SOCK_RAW, 0),
                                       ("vsock", 40, socket.SOCK_STREAM, 0), ("alg", 38, socket.SOCK_SEQPACKET, 0),
                                       ("netlink audit", 16, socket.SOCK_RAW, 9)):
        out[f"socket {label}"] = attempt(lambda: socket.socket(family, kind, proto).close())
    suid = subprocess.run(["/usr/bin/mount", "-t", "tmpfs", "none", "/tmp"], capture_output=True, text=True)
    out["setuid mount"] = f"exit {suid.returncode}: {suid.stderr.strip()[:80]}"
    out["usr nosuid"] = bool(os.statvfs("/usr").f_flag & os.ST_NOSUID)
    return out


def p_memhog(a):
    hog = []
    for _ in range(a["mb"] // 8):
        block = bytearray(8 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        hog.append(block)
    return f"allocated {len(hog) * 8} MiB"


def p_forks(a):
    """Start processes until the kernel says no (exec'd sleeps: forked Pythons would hit memory first)."""
    children = []
    error = "none"
    while len(children) < a["max"]:
        try:
            children.append(subprocess.Popen(["/bin/sleep", "60"]))
        except OSError as exc:
            error = errno.errorcode.get(exc.errno, str(exc.errno))
            break
    for child in children:
        child.kill()
        child.wait()
    return {"started": len(children), "error": error}


def _live_processes():
    """Processes that are not zombies (an exited task no longer counts against pids.max)."""
    live = 0
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    live += f.read().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                pass
    return live


def p_forkbomb(a):
    open("/tmp/bomb", "w").close()
    bomb = subprocess.Popen(["/bin/sh", "-c", "f() { [ -e /tmp/bomb ] && { f | f & }; }; f"],
                            stderr=subprocess.DEVNULL)
    peak = 0
    deadline = time.monotonic() + a["seconds"]
    while time.monotonic() < deadline:
        peak = max(peak, _live_processes())
        time.sleep(0.05)
    os.unlink("/tmp/bomb")
    bomb.wait()
    return {"peak processes": peak}


def p_membomb(a):
    """Many small shells holding a few MiB each: once the (bigger) runtime is gone, the largest
    process left in the cgroup, and so the OOM killer's next choice, would be the runner."""
    script = f"x=$(head -c {a['mb'] << 20} /dev/zero | tr '\\0' a); sleep 60"
    children = [subprocess.Popen(["/bin/sh", "-c", script], stderr=subprocess.DEVNULL)
                for _ in range(a["children"])]
    time.sleep(a["seconds"])
    for child in children:
        child.kill()
        child.wait()
    return "survived"


def p_oom_score(a):
    out = {"adj": int(read("/proc/self/oom_score_adj"))}
    for value in ("0", "-1000"):
        out[value] = attempt(write_value, "/proc/self/oom_score_adj", value)
    write_value("/proc/self/oom_score_adj", str(out["adj"]))  # raising back is always allowed
    return out


def write_value(path, value):
    with open(path, "w") as f:
        f.write(value)


def p_fds(a):
    fds = []
    error = "none"
    try:
        while len(fds) < 1 << 20:
            fds.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as exc:
        error = errno.errorcode.get(exc.errno, str(exc.errno))
    for fd in fds:
        os.close(fd)
    return {"opened": len(fds), "error": error}


def p_spin(a):
    children = []
    began = time.monotonic()
    for _ in range(a["procs"]):
        pid = os.fork()
        if pid == 0:
            end = time.monotonic() + a["seconds"]
            while time.monotonic() < end:
                pass
            os._exit(0)
        children.append(pid)
    cpu = 0.0
    for pid in children:
        _, _, usage = os.wait4(pid, 0)
        cpu += usage.ru_utime + usage.ru_stime
    return {"cpu": cpu, "wall": time.monotonic() - began}


def p_daemons(a):
    pids = []
    r, w = os.pipe()
    # a double-forked daemon in its own session
    if os.fork() == 0:
        os.setsid()
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/sleep", ["sleep", "300"])
        os.write(w, f"{pid}\n".encode())
        os._exit(0)
    # one that ignores every catchable signal, in its own process group
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)
        while True:
            time.sleep(1)
    pids.append(pid)
    # one that is stopped
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGSTOP)
        os._exit(0)
    pids.append(pid)
    pids.append(int(os.read(r, 64).split()[0]))
    os.close(r)
    os.close(w)
    return {"pids": pids}


def p_reach(a):
    """TCP and UDP towards every target; 'ok' means it got through."""
    out = {}
    for label, family, addr in a["targets"]:
        def connect(family=family, addr=tuple(addr)):
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(a.get("timeout", 1.0))
                s.connect(addr)
        out[f"tcp {label}"] = attempt(connect)
        def datagram(family=family, addr=tuple(addr)):
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.sendto(b"efprobe", addr)
        out[f"udp {label}"] = attempt(datagram)
    for path in a["unix"]:
        def unix(path=path):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1.0)
                s.connect(path)
        out[f"unix {path}"] = attempt(unix)
    return out


def p_netinfo(a):
    v6 = [line.split() for line in open("/proc/net/if_inet6")] if os.path.exists("/proc/net/if_inet6") else []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((a["gateway"], 9))
        address = s.getsockname()[0]
    return {"address": address, "ipv6": [f[5] + " " + f[0] for f in v6 if f[5] != "lo"]}


def p_spoof(a):
    out = {}
    fake, gateway, port = a["fake"], a["gateway"], a["port"]
    def bind_other():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((fake, 0))
    out["bind foreign address"] = attempt(bind_other)
    def freebind():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND
            s.bind((fake, 0))
            s.sendto(b"spoofed", (gateway, port))
    out["freebind send"] = attempt(freebind)
    def transparent():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
    out["ip transparent"] = attempt(transparent)
    def freebind6():
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IPV6, 78, 1)  # IPV6_FREEBIND
            s.bind(("fe80::bad:1", 0, 0, socket.if_nametoindex("eth0")))
            s.sendto(b"spoofed", ("ff02::1", port, 0, socket.if_nametoindex("eth0")))
    out["freebind6 send"] = attempt(freebind6)
    def set_address():
        import fcntl
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = struct.pack("16sH2s4s8x", b"eth0", socket.AF_INET, b"\0\0", socket.inet_aton(fake))
            fcntl.ioctl(s, 0x8916, req)  # SIOCSIFADDR
    out["SIOCSIFADDR"] = attempt(set_address)
    def raw_packet():
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP) as s:
            s.sendto(b"\0" * 8, (gateway, 0))
    out["raw send"] = attempt(raw_packet)
    return out


PEER_HITS = []


def p_listen(a):
    def tcp():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", a["port"]))
            s.listen(8)
            while True:
                conn, peer = s.accept()
                PEER_HITS.append(f"tcp {peer[0]}")
                conn.close()
    def udp():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("0.0.0.0", a["port"]))
            while True:
                _, peer = s.recvfrom(64)
                PEER_HITS.append(f"udp {peer[0]}")
    for target in (tcp, udp):
        threading.Thread(target=target, daemon=True).start()
    time.sleep(0.1)
    return p_netinfo(a)


def p_hits(a):
    return {"hits": list(PEER_HITS)}


def p_garbage_reply(a):
    """Write a bogus frame on every connection of the invoke channel, then answer normally."""
    payload = struct.pack(">I", 9) + b"{not json" if a["kind"] == "json" else struct.pack(">I", 0xFFFFFFF0)
    sent = 0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd <= 4 or not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            s = socket.socket(fileno=fd)
            try:
                if s.family == socket.AF_UNIX and s.type == socket.SOCK_STREAM:
                    s.getpeername()  # the listener is not connected: OSError
                    s.send(payload)
                    sent += 1
            finally:
                s.detach()
        except OSError:
            pass
    return {"sent": sent}


PROBES = {name[2:]: fn for name, fn in dict(globals()).items() if name.startswith("p_")}


def handler(event, context):
    guard(os.environ["SEC_EXPECTED_HOST_PREFIX"])
    return PROBES[event["probe"]](event.get("args") or {})
'''

NODE_PROBE = r'''
const fs = require('fs');
const { spawnSync } = require('child_process');
exports.handler = async (event) => {
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  const field = (k) => (status.match(new RegExp('^' + k + ':\\s*(\\S+)', 'm')) || [])[1];
  const unshare = spawnSync('/usr/bin/unshare', ['-U', '-r', 'id', '-u'], { encoding: 'utf8' });
  // the thread pool, timers and child processes all work under the filter
  const data = await fs.promises.readFile('/var/task/index.js', 'utf8');
  return { seccomp: field('Seccomp'), noNewPrivs: field('NoNewPrivs'), uid: process.getuid(),
           unshare: { status: unshare.status, stdout: unshare.stdout.trim(), stderr: unshare.stderr.trim() },
           read: data.length > 0 };
};
'''

EXEC_PROBE = """#!/bin/sh
grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status | tr -d '\\t' | tr '\\n' ' '
if /usr/bin/unshare -U -r true 2>/dev/null; then echo "unshare:ok"; else echo "unshare:refused"; fi
"""

QUICK_PY = "def handler(event, context):\n    return 'quick'\n"
EGRESS_PY = """
import errno, socket

def handler(event, context):
    out = {}
    for address, port in event["tcp"]:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.5)
            try:
                sock.connect((address, port))
                out[f"tcp {address}:{port}"] = "ok"
            except OSError as exc:
                out[f"tcp {address}:{port}"] = errno.errorcode.get(exc.errno, "timeout")
    for address, port, token in event["udp"]:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(token.encode(), (address, port))
                out[f"udp {address}:{port}"] = "sent"
            except OSError as exc:
                out[f"udp {address}:{port}"] = errno.errorcode.get(exc.errno, str(exc.errno))
    return out
"""
SECRET_PY = "import os\ndef handler(event, context):\n    return os.environ.get('EF_SECRET', '')[:4]\n"

# What "stopped" looks like for a read, write or system call.
READ_REFUSED = {"ENOENT", "EACCES", "EPERM", "ENOTDIR", "ESRCH", "ELOOP"}
WRITE_REFUSED = {"EROFS", "EACCES", "EPERM", "ENOENT"}


@pytest.fixture(scope="module")
def client(pod: Pod) -> PodClient:
    return PodClient(pod)


def own_ns(kind: str) -> str:
    return os.readlink(f"/proc/self/ns/{kind}")


def confinement(client: PodClient, slot_id: str) -> dict[str, Any]:
    """Checks from the host that the slot's processes are sandboxed; returns what it saw.

    The hostile handler is only sent once this passed for the slot it runs in.
    """
    status, info = client.funclet("GET", f"/v1/funclet/container/{slot_id}")
    assert status == 200, info
    runner = info["HostPid"]
    assert runner > 0
    for ns in ("pid", "mnt", "net", "uts", "ipc"):
        assert os.readlink(f"/proc/{runner}/ns/{ns}") != own_ns(ns), f"the sandbox shares the host's {ns} namespace"
    cgroups = Path(f"/proc/{runner}/cgroup").read_text()
    group = f"easyfaas-{client.names.pod_name}/{slot_id}"
    limits = {}
    for line in cgroups.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller, limit_file in (("memory", "memory.limit_in_bytes"), ("pids", "pids.max"),
                                       ("cpu", "cpu.cfs_quota_us")):
            if controller in controllers.split(","):
                assert path.endswith(group), f"the sandbox is not in its {controller} cgroup: {path}"
                limits[controller] = Path(f"/sys/fs/cgroup/{controllers}{path}/{limit_file}").read_text().strip()
    assert set(limits) == {"memory", "pids", "cpu"}, limits
    assert limits["pids"] != "max" and int(limits["pids"]) <= 1024
    assert 0 < int(limits["cpu"]) and int(limits["memory"]) < psutil.virtual_memory().total
    runtimes = []
    for proc in psutil.Process(runner).children():
        try:  # a child of an earlier probe may be exiting right now
            uids = proc.uids()
            status_text = Path(f"/proc/{proc.pid}/status").read_text()
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            continue
        assert uids.real != 0 and uids.effective != 0
        assert "NoNewPrivs:\t1" in status_text and "CapEff:\t0000000000000000" in status_text
        runtimes.append(proc.pid)
    return {"runner": runner, "runtimes": runtimes, "limits": limits, "pidns": os.readlink(f"/proc/{runner}/ns/pid")}


class Function:
    """A deployed function whose probes are only sent once its sandbox checked out."""

    def __init__(self, client: PodClient, name: str) -> None:
        self.client = client
        self.name = name

    def slot(self) -> dict[str, Any]:
        slot = self.client.slot_of(self.name)
        if slot is None:
            status, _, body = self.client.invoke(self.name, {"probe": "whoami"})
            assert status == 200, body
            slot = self.client.slot_of(self.name)
        assert slot is not None, f"{self.name} has no warm slot"
        return slot

    def confined(self) -> tuple[dict[str, Any], dict[str, Any]]:
        slot = self.slot()
        return slot, confinement(self.client, slot["RuntimeID"])

    def raw(self, probe: str, timeout: float = 60, **args: Any) -> tuple[int, dict[str, str], bytes]:
        self.confined()
        return self.client.invoke(self.name, {"probe": probe, "args": args}, timeout=timeout)

    def probe(self, probe: str, **args: Any) -> Any:
        status, _, body = self.raw(probe, **args)
        assert status == 200, body
        return json.loads(body)


@pytest.fixture(scope="module")
def hostile(client: PodClient) -> Function:
    name = unique("hostile")
    client.deploy(name, "python3", {"index.py": HOSTILE_PY},
                  env={"SEC_EXPECTED_HOST_PREFIX": f"{client.names.pod_name}-c"})
    return Function(client, name)


@pytest.fixture(scope="module")
def quick(client: PodClient) -> str:
    name = unique("quick")
    client.deploy(name, "python3", {"index.py": QUICK_PY})
    return name


def assert_all_refused(results: dict[str, str], allowed: set[str]) -> None:
    through = {k: v for k, v in results.items() if v not in allowed}
    assert not through, f"attempts that were not refused: {through}"


# ---- the sandbox is in place ---------------------------------------------------------------------

def test_hostile_function_runs_confined(hostile: Function) -> None:
    slot, seen = hostile.confined()
    me = hostile.probe("whoami")
    assert me["uid"] >= 1000 and me["ppid"] == 1
    assert me["hostname"] == slot["RuntimeID"]
    assert me["status"]["NoNewPrivs"] == "1" and me["status"]["Seccomp"] == "2"
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(me["status"][caps], 16) == 0, me["status"]
    # The runtime the handler ran in is one of the runner's children, in the sandbox's pid namespace.
    assert all(os.readlink(f"/proc/{pid}/ns/pid") == seen["pidns"] for pid in seen["runtimes"])


# ---- files ---------------------------------------------------------------------------------------

def test_host_files_are_out_of_reach(hostile: Function, client: PodClient) -> None:
    state = client.config.state_dir
    other = unique("victim")
    client.deploy(other, "python3", {"index.py": SECRET_PY})
    assert client.invoke(other)[0] == 200
    host_paths = [str(state), str(state / "funcData"), str(state / "images"), str(state / "slots"),
                  str(client.config.run_dir), str(client.config.funclet_sock), str(Path(__file__).parent.parent),
                  str(Path(sys.prefix)), "/var/faas", "/var/run/faas"]
    out = hostile.probe("files", host_paths=host_paths)
    reads = {k: v for k, v in out.items() if k.startswith(("read ", "symlink "))}
    assert_all_refused(reads, READ_REFUSED)
    # Only its own processes are visible, and they all live in the sandbox root.
    assert {k: v for k, v in out.items() if k.startswith("/proc/") and k.endswith("/root")} == \
        {k: "/" for k in out if k.startswith("/proc/") and k.endswith("/root")}
    assert out["mount roots that open"] == []
    fd_targets = set(out["fds"].values())
    # (the epoll instance is the Python runtime's own: its main thread serves its connections with it)
    assert all(t.startswith(("ok:socket:", "ok:pipe:", "ok:anon_inode:[eventpoll]", "ok:/dev/null", "ok:/proc/",
                             "ENOENT")) for t in fd_targets), \
        fd_targets
    assert out["open_by_handle_at"] in ("EPERM", "EBADF") and out["chroot"] == "EPERM"


def test_writes_outside_tmp_fail_and_tmp_is_capped(hostile: Function, client: PodClient) -> None:
    out = hostile.probe("writes")
    assert_all_refused(out, WRITE_REFUSED)
    cap = 64 << 20  # --tmp-size default: the pod fixture does not change it
    filled = hostile.probe("fill", cap=4 * cap)
    for where, result in filled.items():
        assert result["error"] == "ENOSPC", (where, result)
        assert result["written"] <= cap, (where, result)


# ---- processes -----------------------------------------------------------------------------------

def test_other_processes_are_invisible_and_untouchable(hostile: Function, client: PodClient) -> None:
    token = secrets.token_hex(16)
    holder = unique("secret")
    client.deploy(holder, "python3", {"index.py": SECRET_PY}, env={"EF_SECRET": token})
    status, _, body = client.invoke(holder)
    assert (status, body) == (200, token[:4].encode())
    out = hostile.probe("procs", token=token)
    assert out["foreign uids visible"] == [] and out["pid count"] <= 3
    assert out["secret found"] == []
    assert out["kill 1"] == "EPERM"
    assert out["ptrace attach 1"] in ("EPERM", "ESRCH") and out["ptrace traceme"] == "EPERM"
    assert out["pidfd_getfd 1"] in ("EPERM", "ESRCH", "ENOENT")
    assert out["/proc/1/environ"] in ("ENOENT", "EACCES") and out["/proc/1/cmdline"] in ("ENOENT", "EACCES")


# ---- privileges ----------------------------------------------------------------------------------

def test_privileges_cannot_be_regained(hostile: Function) -> None:
    hostname = socket.gethostname()
    out = hostile.probe("privileges")
    assert socket.gethostname() == hostname
    assert out["status"]["NoNewPrivs"] == "1" and out["status"]["Seccomp"] == "2"
    assert out["usr nosuid"] is True
    assert out["setuid mount"].startswith("exit ") and not out["setuid mount"].startswith("exit 0")
    assert out["unshare utility"] == "failed"
    assert out["clone3"] == "ENOSYS" and out["io_uring_setup"] == "ENOSYS"
    for label in ("socket raw ip", "socket packet", "socket vsock", "socket alg", "socket netlink audit"):
        assert out.pop(label) in ("EPERM", "EAFNOSUPPORT", "EPROTONOSUPPORT"), label
    for label in ("status", "usr nosuid", "setuid mount", "unshare utility", "clone3", "io_uring_setup"):
        out.pop(label)
    assert_all_refused(out, {"EPERM"})


# ---- resources -----------------------------------------------------------------------------------

def test_memory_hog_dies_alone(hostile: Function, client: PodClient, quick: str) -> None:
    assert client.invoke(quick)[0] == 200
    status, headers, body = hostile.raw("memhog", mb=1024)
    assert status == 500, body
    assert headers.get("X-easyfaas-Function-Error") == "Unhandled"
    error = json.loads(body)
    assert error["errorType"] and error["errorMessage"] and "Traceback" not in body.decode()
    # The caller was told; the next request gets a fresh runtime; the neighbour did not notice.
    assert hostile.probe("whoami")["uid"] >= 1000
    assert client.invoke(quick)[:3:2] == (200, b"quick")
    assert all(p.poll() is None for p in client.pod.procs.values())


def test_forks_stop_at_the_pids_limit(hostile: Function, client: PodClient, quick: str) -> None:
    _, seen = hostile.confined()
    limit = int(seen["limits"]["pids"])
    out = hostile.probe("forks", max=4 * limit)
    assert out["error"] == "EAGAIN" and out["started"] < limit, out


def sandbox_info(client: PodClient, slot_id: str) -> dict[str, Any]:
    status, info = client.funclet("GET", f"/v1/funclet/container/{slot_id}")
    assert status == 200, info
    return info


def assert_runner_survived(hostile: Function, client: PodClient, slot_id: str, before: dict[str, Any], *,
                           reset: bool) -> None:
    """The sandbox kept its runner (PID 1) and, if its runtime died, was reset, not rebuilt; it serves again."""
    if reset:  # the controller cools a sandbox whose runtime exited down: a reset gives it a new epoch
        wait_until(lambda: sandbox_info(client, slot_id)["Epoch"] > before["Epoch"], timeout=30,
                   what="the sandbox's reset")
    after = sandbox_info(client, slot_id)
    assert after["HostPid"] == before["HostPid"], f"the runner was replaced: {before} -> {after}"
    assert psutil.pid_exists(before["HostPid"])
    assert after["State"] != "dead"
    assert hostile.probe("whoami")["uid"] >= 1000
    assert sandbox_info(client, slot_id)["HostPid"] == before["HostPid"]


def _have_cap_sys_resource() -> bool:
    caps = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("CapEff:"))
    return bool(int(caps.split()[1], 16) & (1 << 24))


def test_runner_is_the_oom_killers_last_choice(hostile: Function, client: PodClient) -> None:
    slot, seen = hostile.confined()
    privileged = _have_cap_sys_resource()  # lowering below 0, and a floor for the runtime, need it
    runner_adj = int(Path(f"/proc/{seen['runner']}/oom_score_adj").read_text())
    assert runner_adj == (-1000 if privileged else int(Path("/proc/self/oom_score_adj").read_text())), runner_adj
    out = hostile.probe("oom_score")
    # The runtime (and all it forks) goes first; it can never get below the runner.
    assert out["adj"] == 1000 and out["-1000"] == "EACCES", out
    assert out["0"] == ("EACCES" if privileged else "ok"), out
    for pid in hostile.confined()[1]["runtimes"]:
        assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "1000"


def test_fork_bomb_is_contained(hostile: Function, client: PodClient, quick: str) -> None:
    slot, seen = hostile.confined()
    limit = int(seen["limits"]["pids"])
    before = sandbox_info(client, slot["RuntimeID"])
    began = time.monotonic()
    status, _, body = hostile.raw("forkbomb", seconds=2)
    if status == 200:
        assert json.loads(body)["peak processes"] <= limit
    else:  # the shells filled the memory limit and the OOM killer took the runtime among them
        assert status == 500 and json.loads(body)["errorType"] == "Runtime.OutOfMemory", body
    assert time.monotonic() - began < 9
    assert client.invoke(quick)[:3:2] == (200, b"quick")
    # Whatever is left of the bomb is inside the sandbox's pid namespace and within its limit (a
    # host-wide count would also count what the rest of the machine starts meanwhile).
    assert sum(1 for pid in psutil.pids() if _pidns(pid) == seen["pidns"]) <= limit
    assert_runner_survived(hostile, client, slot["RuntimeID"], before, reset=status != 200)


def test_memory_bomb_kills_the_function_not_its_runner(hostile: Function, client: PodClient, quick: str) -> None:
    slot, seen = hostile.confined()
    before = sandbox_info(client, slot["RuntimeID"])
    # 40 processes of 6 MiB in 128 MiB: each smaller than the runner, together far over the limit.
    status, headers, body = hostile.raw("membomb", children=40, mb=6, seconds=4)
    after = sandbox_info(client, slot["RuntimeID"])
    assert after["OOMKills"] > before["OOMKills"], after
    if status == 500:
        assert json.loads(body)["errorType"] == "Runtime.OutOfMemory", body
        assert headers.get("X-easyfaas-Function-Error") == "Unhandled"
    else:  # only children were killed: the function itself answered
        assert (status, body) == (200, b"survived"), body
    assert client.invoke(quick)[:3:2] == (200, b"quick")
    assert_runner_survived(hostile, client, slot["RuntimeID"], before, reset=status != 200)


def test_file_descriptors_are_capped(hostile: Function) -> None:
    out = hostile.probe("fds")
    assert out["error"] == "EMFILE" and 900 < out["opened"] <= 1024, out
    assert hostile.probe("whoami")["uid"] >= 1000


def test_cpu_spin_is_capped_and_neighbours_keep_their_latency(hostile: Function, client: PodClient,
                                                              quick: str) -> None:
    _, seen = hostile.confined()
    quota_us = int(seen["limits"]["cpu"])
    cores = quota_us / 100_000  # cfs period 100 ms
    for _ in range(3):
        client.invoke(quick)
    baseline = []
    for _ in range(10):
        began = time.monotonic()
        assert client.invoke(quick)[0] == 200
        baseline.append(time.monotonic() - began)
    result: dict[str, Any] = {}
    spinner = threading.Thread(target=lambda: result.update(hostile.probe("spin", procs=4, seconds=3)))
    spinner.start()
    time.sleep(0.3)
    during = []
    while spinner.is_alive():
        began = time.monotonic()
        assert client.invoke(quick)[0] == 200
        during.append(time.monotonic() - began)
        time.sleep(0.05)
    spinner.join()
    assert result["cpu"] <= result["wall"] * cores * 1.2 + 0.2, (result, cores)
    assert len(during) >= 10
    assert statistics.median(during) < statistics.median(baseline) + 0.05, (baseline, during)


# ---- lifetime ------------------------------------------------------------------------------------

def test_daemons_do_not_outlive_their_sandbox(hostile: Function, client: PodClient) -> None:
    slot, seen = hostile.confined()
    out = hostile.probe("daemons")
    assert len(out["pids"]) == 3
    in_sandbox = [p for p in psutil.pids() if _pidns(p) == seen["pidns"]]
    assert len(in_sandbox) >= 5  # runner, runtime, the three daemons
    client.invalidate(slot["RuntimeID"])
    wait_until(lambda: not [p for p in psutil.pids() if _pidns(p) == seen["pidns"]], timeout=20,
               what="every process of the invalidated sandbox to be gone")


def _pidns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


# ---- network -------------------------------------------------------------------------------------

@pytest.fixture
def host_listeners() -> Iterator[dict[str, Any]]:
    """TCP and UDP listeners on every host address (IPv4 and IPv6), as a careless host service has."""
    tcp4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp4.bind(("0.0.0.0", 0))
    port = tcp4.getsockname()[1]
    udp4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp4.bind(("0.0.0.0", port))
    tcp6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    tcp6.bind(("::", port))
    socks = [tcp4, udp4, tcp6]
    for s in (tcp4, tcp6):
        s.listen(8)
    for s in socks:
        s.setblocking(False)
    try:
        yield {"port": port, "sockets": socks}
    finally:
        for s in socks:
            s.close()


def _received(socks: list[socket.socket]) -> list[str]:
    got = []
    for s in socks:
        try:
            if s.type == socket.SOCK_STREAM:
                conn, peer = s.accept()
                conn.close()
            else:
                _, peer = s.recvfrom(64)
            got.append(f"{s.family.name}/{s.type.name} from {peer[0]}")
        except (BlockingIOError, OSError):
            pass
    return got


def _link_local(ifname: str) -> str | None:
    for line in Path("/proc/net/if_inet6").read_text().splitlines():
        fields = line.split()
        if fields[5] == ifname and fields[0].startswith("fe80"):
            raw = fields[0]
            return ":".join(raw[i:i + 4] for i in range(0, 32, 4))
    return None


def test_host_services_and_control_sockets_are_out_of_reach(hostile: Function, client: PodClient,
                                                            host_listeners: dict[str, Any]) -> None:
    config = client.config
    port = host_listeners["port"]
    gateway = client.gateway
    targets = [["controller on its own loopback", socket.AF_INET, ["127.0.0.1", config.controller_port]],
               ["stubs on its own loopback", socket.AF_INET, ["127.0.0.1", config.stubs_port]],
               ["controller via the bridge", socket.AF_INET, [gateway, config.controller_port]],
               ["stubs via the bridge", socket.AF_INET, [gateway, config.stubs_port]],
               ["host service via the bridge", socket.AF_INET, [gateway, port]]]
    bridge_ll = _link_local(client.names.bridge)
    if bridge_ll:
        targets.append(["host service via the bridge's IPv6 link-local address", socket.AF_INET6,
                        [bridge_ll, port, 0, 2]])
    unix = [str(config.funclet_sock), str(config.run_dir / "slots"), "/var/run/faas/.funcletapi.sock"]
    out = hostile.probe("reach", targets=targets, unix=unix)
    time.sleep(0.2)
    assert _received(host_listeners["sockets"]) == []
    refused = {k: v for k, v in out.items() if k.startswith("tcp ") or k.startswith("unix ")}
    assert_all_refused(refused, {"ECONNREFUSED", "ENOENT", "EHOSTUNREACH", "ENETUNREACH", "TimeoutError:timed out",
                                 "EACCES", "EPERM", "EINVAL"})
    info = hostile.probe("netinfo", gateway=gateway)
    assert info["ipv6"] == [], "the sandbox has IPv6 addresses besides loopback"
    assert bridge_ll is None, "the bridge has an IPv6 link-local address sandboxes could reach"


@pytest.fixture(scope="module")
def peer(client: PodClient) -> Function:
    name = unique("peer")
    client.deploy(name, "python3", {"index.py": HOSTILE_PY},
                  env={"SEC_EXPECTED_HOST_PREFIX": f"{client.names.pod_name}-c"})
    return Function(client, name)


def test_sandboxes_cannot_reach_each_other(hostile: Function, peer: Function, client: PodClient) -> None:
    port = 9999
    info = peer.probe("listen", port=port, gateway=client.gateway)
    me = hostile.probe("netinfo", gateway=client.gateway)
    assert info["address"] != me["address"]
    out = hostile.probe("reach", targets=[["peer sandbox", socket.AF_INET, [info["address"], port]]], unix=[],
                        timeout=2.0)
    assert out["tcp peer sandbox"] in ("EHOSTUNREACH", "TimeoutError:timed out", "ECONNREFUSED", "ENETUNREACH"), out
    # Layer 2 says why: the peer's address never resolves (the isolated port drops the ARP request).
    # Waiting for that also frees the packets queued on the neighbour entry, which keep the
    # sandbox's socket, and so its network namespace, alive a few seconds after it is gone.
    _, seen = hostile.confined()
    wait_until(lambda: _neighbour_state(seen["runner"], info["address"]) == "FAILED", timeout=10,
               what="the peer's address to fail to resolve")
    assert peer.probe("hits") == {"hits": []}


def _neighbour_state(pid: int, address: str) -> str:
    from tests.sandbox_harness import netns_iproute

    with netns_iproute(pid) as ipr:
        for entry in ipr.get_neighbours(family=socket.AF_INET):
            if entry.get("NDA_DST") == address:
                state = entry["state"]
                return "FAILED" if state & 0x20 else "INCOMPLETE" if state & 0x01 else f"{state:#x}"
    return "none"


def test_address_spoofing_is_refused_and_nothing_spoofed_leaves(hostile: Function, client: PodClient,
                                                                host_listeners: dict[str, Any]) -> None:
    slot, _ = hostile.confined()
    me = hostile.probe("netinfo", gateway=client.gateway)
    veth = client.veth(slot["RuntimeID"])
    fake = client.gateway.rsplit(".", 1)[0] + ".250"
    # Protocol 0 until bound: a packet socket of ETH_P_ALL would queue every interface's frames
    # (the host's own loopback traffic) between socket() and bind().
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as capture:
        capture.bind((veth, 0x0003))  # ETH_P_ALL, on the sandbox's host-side veth only
        capture.setblocking(False)
        out = hostile.probe("spoof", fake=fake, gateway=client.gateway, port=host_listeners["port"])
        time.sleep(0.3)
        frames = []
        while select.select([capture], [], [], 0)[0]:
            frame, addr = capture.recvfrom(65535)
            if addr[2] != socket.PACKET_OUTGOING:  # sent by the sandbox, i.e. received on the host end
                frames.append(frame)
    assert out["bind foreign address"] == "EADDRNOTAVAIL"
    assert out["freebind send"] != "ok"
    assert out["ip transparent"] == "EPERM" and out["SIOCSIFADDR"] == "EPERM" and out["raw send"] == "EPERM"
    assert out["freebind6 send"] != "ok"
    sources = {}
    for frame in frames:
        ethertype = struct.unpack("!H", frame[12:14])[0]
        if ethertype == 0x0800:
            sources[socket.inet_ntoa(frame[26:30])] = frame[:64].hex()
        elif ethertype == 0x86DD:
            sources[socket.inet_ntop(socket.AF_INET6, frame[22:38])] = frame[:64].hex()
    foreign = {src: head for src, head in sources.items() if src != me["address"]}
    assert not foreign, f"frames left the sandbox with foreign sources: {foreign}"
    assert _received(host_listeners["sockets"]) == []


# ---- a hostile runtime channel -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["json", "huge"])
def test_garbage_on_the_runtime_channel_is_a_clean_error(hostile: Function, client: PodClient, quick: str,
                                                         kind: str) -> None:
    began = time.monotonic()
    status, headers, body = hostile.raw("garbage_reply", kind=kind, timeout=30)
    assert time.monotonic() - began < 9, "the controller waited for the function's timeout"
    assert status == 500, body
    assert headers.get("X-easyfaas-Function-Error") == "Unhandled"
    assert "Traceback" not in body.decode() and json.loads(body)["errorMessage"]
    assert hostile.probe("whoami")["uid"] >= 1000
    assert client.invoke(quick)[:3:2] == (200, b"quick")


# ---- other runtimes run under the same filter ----------------------------------------------------

def test_nodejs_runs_under_the_filter(client: PodClient) -> None:
    if not (client.config.runtime_dir / "nodejs").exists():
        pytest.skip("node is not installed")
    name = unique("nodeprobe")
    client.deploy(name, "nodejs", {"index.js": NODE_PROBE})
    status, _, body = client.invoke(name)
    assert status == 200, body
    out = json.loads(body)
    assert out["seccomp"] == "2" and out["noNewPrivs"] == "1" and out["uid"] >= 1000 and out["read"] is True
    assert out["unshare"]["status"] != 0 and out["unshare"]["stdout"] != "0"


def test_exec_functions_run_under_the_filter(client: PodClient) -> None:
    name = unique("execprobe")
    client.deploy(name, "exec", {"run.sh": EXEC_PROBE}, handler="run.sh", executable=("run.sh",))
    status, _, body = client.invoke(name)
    assert status == 200, body
    text = body.decode()
    assert "Seccomp:2" in text and "NoNewPrivs:1" in text and "unshare:refused" in text, text


# ---- reset against nasty daemons, in a sandbox built without the pod -----------------------------

def test_reset_leaves_nothing_of_the_previous_function(host: Any, spawn: Any, code_dirs: Any) -> None:
    box, first, _ = spawn()
    assert first["op"] == "ready"
    box.mount_task(code_dirs({"index.py": HOSTILE_PY}))
    box.mount_runtime("python3")
    reply, _ = box.start("python3", "index.handler", SEC_EXPECTED_HOST_PREFIX="sbx-")
    assert reply["ok"] is True, reply
    runtime = [p for p in box.processes() if p != box.pid]
    assert runtime and all(psutil.Process(p).uids().real != 0 for p in runtime)
    response = box.invoke({"probe": "daemons"})
    assert response["ok"] is True, response
    assert len(box.processes()) >= 5  # runner, runtime, a double-forked daemon, a signal-ignorer, a stopped one
    wait_until(lambda: psutil.STATUS_STOPPED in {psutil.Process(p).status() for p in box.processes()},
               what="the self-stopped daemon to be stopped")
    before = set(box.processes()) - {box.pid}
    assert box.request({"op": "reset"}, {"reset_done"}) == {"op": "reset_done"}
    # Nothing of the function is left: only the runner and the fresh spare runtime it forked after.
    assert not (set(box.processes()) & before) and len(box.processes()) <= 2
    assert box.request({"op": "ping"}, {"pong"})["spare"] is True
    assert os.listdir(f"/proc/{box.pid}/root/tmp") == [] and os.listdir(f"/proc/{box.pid}/root/dev/shm") == []


# ---- the seccomp filter on its own ---------------------------------------------------------------

FILTER_CHECKS = r'''
import ctypes, json, os, socket, subprocess, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def call(nr, *args):
    ret = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    return 0 if ret >= 0 else ctypes.get_errno()

def sock(family, kind, proto=0):
    try:
        socket.socket(family, kind, proto).close()
        return 0
    except OSError as exc:
        return exc.errno

out = {"unshare user": call(272, 0x10000000), "unshare net": call(272, 0x40000000),
       "unshare files": call(272, 0x400), "unshare time": call(272, 0x80),
       "clone newuser": call(56, 0x10000000 | 17, 0, 0, 0, 0), "clone3": call(435, 0, 0),
       "setns": call(308, -1, 0), "keyctl": call(250, 0, -3, 0, 0, 0), "mount": call(165, 0, 0, 0, 0, 0),
       "ptrace": call(101, 0, 0, 0, 0), "io_uring_setup": call(425, 0, 0), "bpf": call(321, 0, 0, 0),
       "inet": sock(2, 1), "inet6": sock(10, 2), "unix": sock(1, 1), "netlink route": sock(16, 3, 0),
       "netlink audit": sock(16, 3, 9), "vsock": sock(40, 1), "packet": sock(17, 3), "alg": sock(38, 5)}
thread_result = []
t = threading.Thread(target=lambda: thread_result.append(os.getpid()))
t.start(); t.join()
out["thread"] = thread_result == [os.getpid()]
out["exec"] = subprocess.run(["/bin/sh", "-c", "grep Seccomp: /proc/self/status"], capture_output=True,
                             text=True).stdout.split()
out["exec unshare"] = subprocess.run(["/usr/bin/unshare", "-U", "true"], capture_output=True).returncode
print(json.dumps(out))
'''


def _run_filtered(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter that installed the filter first (it only ever restricts)."""
    preamble = ("import sys; sys.path.insert(0, {repo!r})\nfrom easyfaas import syscalls\nfrom runner import seccomp\n"
                "syscalls.set_no_new_privs()\nseccomp.install_filter()\n").format(repo=str(Path(__file__).parent.parent))
    return subprocess.run([sys.executable, "-I", "-c", preamble + code], capture_output=True, text=True, timeout=60)


def test_filter_refuses_what_it_should_and_programs_still_run() -> None:
    done = _run_filtered(FILTER_CHECKS)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out.pop("thread") is True
    assert out.pop("exec") == ["Seccomp:", "2"]
    assert out.pop("exec unshare") != 0
    expected = {"unshare user": errno.EPERM, "unshare net": errno.EPERM, "unshare files": 0,
                "unshare time": errno.EPERM, "clone newuser": errno.EPERM, "clone3": errno.ENOSYS,
                "setns": errno.EPERM, "keyctl": errno.EPERM, "mount": errno.EPERM, "ptrace": errno.EPERM,
                "io_uring_setup": errno.ENOSYS, "bpf": errno.EPERM, "inet": 0, "inet6": 0, "unix": 0,
                "netlink route": 0, "netlink audit": errno.EPROTONOSUPPORT, "vsock": errno.EAFNOSUPPORT,
                "packet": errno.EAFNOSUPPORT, "alg": errno.EAFNOSUPPORT}
    assert out == expected


def test_filter_kills_system_calls_of_another_abi() -> None:
    # An x32 system call number (getpid | __X32_SYSCALL_BIT): a filter written for x86_64 numbers must
    # not let another numbering through.
    done = _run_filtered("import ctypes\nctypes.CDLL(None).syscall(0x40000000 | 39)\nprint('survived')\n")
    assert done.returncode == -signal.SIGSYS and "survived" not in done.stdout


def test_node_runs_under_the_filter() -> None:
    if not Path("/usr/bin/node").exists():
        pytest.skip("node is not installed")
    script = ("const fs = require('fs'); fs.promises.readFile('/proc/self/status', 'utf8').then(s => "
              "console.log(/Seccomp:\\s*(\\d)/.exec(s)[1]));")
    done = _run_filtered(f"import subprocess\nprint(subprocess.run(['/usr/bin/node', '-e', {script!r}], "
                         "capture_output=True, text=True, timeout=30).stdout.strip())\n")
    assert done.returncode == 0 and done.stdout.strip() == "2", (done.stdout, done.stderr)


def test_filter_tables_are_consistent() -> None:
    for arch in seccomp.ARCHES.values():
        numbers = arch.numbers
        assert len(set(numbers.values())) == len(numbers), "two system calls share a number"
        program = seccomp.build_filter(arch)
        assert len(program) % 8 == 0 and len(program) // 8 < 4096
        for name in (*seccomp.UNSUPPORTED, "clone", "unshare", "socket", "setns", "mount", "keyctl", "ptrace"):
            assert name in numbers, (arch, name)
    assert seccomp.X86_64.numbers["keyctl"] == 250 and seccomp.AARCH64.numbers["keyctl"] == 219


def _libseccomp() -> Any:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("seccomp")
    if name is None:
        pytest.skip("libseccomp is not installed (Debian: libseccomp2)")
    lib = ctypes.CDLL(name)
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name_arch.restype = ctypes.c_int
    return lib


def test_filter_tables_agree_with_libseccomp() -> None:
    """Every number of both tables (aarch64 included, which no machine here runs) is libseccomp's,
    and no call the filter refuses exists on an architecture whose table lacks it."""
    lib = _libseccomp()
    names = (*seccomp.DENIED, *seccomp.UNSUPPORTED, "clone", "unshare", "socket")
    for arch in seccomp.ARCHES.values():  # libseccomp's architecture tokens are the AUDIT_ARCH values
        newer = []
        for name in names:
            theirs = lib.seccomp_syscall_resolve_name_arch(arch.audit_arch, name.encode())
            ours = arch.numbers.get(name)
            if theirs >= 0:
                assert ours == theirs, (hex(arch.audit_arch), name, ours, theirs)
            elif theirs == -1 and ours is not None:
                newer.append(name)  # newer than this libseccomp (its table lags the kernel's)
            else:  # a pseudo-number: libseccomp knows the call does not exist on this architecture
                assert ours is None, (hex(arch.audit_arch), name, ours)
        assert set(newer) <= set(seccomp._COMMON_NEW), newer


# ---- the bridge firewall on its own --------------------------------------------------------------

def test_firewall_table_lives_exactly_as_long_as_its_owner() -> None:
    bridge = f"efs{secrets.token_hex(3)}"
    firewall = BridgeFirewall(bridge, "10.218.3.1/24")
    firewall.setup()
    try:
        assert firewall.table in list_tables()
        rival = BridgeFirewall(bridge, "10.218.3.1/24")
        with pytest.raises(OSError):
            rival.setup()  # one firewall per bridge
        assert firewall.dropped() == {"input": 0, "forward": 0}
    finally:
        firewall.teardown()
    assert firewall.table not in list_tables()
    # A funclet that dies without tearing down: its socket closes and the kernel deletes the table.
    crashed = BridgeFirewall(bridge, "10.218.3.1/24")
    crashed.setup()
    assert crashed.table in list_tables()
    assert crashed._nft is not None
    crashed._nft.close()
    assert crashed.table not in list_tables()


def test_bridge_firewall_drops_sandbox_to_host_traffic() -> None:
    from funclet.sandbox.network import BridgeNetwork
    from tests.sandbox_harness import sandbox_process, socket_in_netns
    from tests.sandbox_harness import udp_probe as _probe

    tag = secrets.token_hex(3)
    net = BridgeNetwork(bridge=f"t{tag}fw", cidr=f"10.217.{secrets.randbelow(250) + 1}.1/24", veth_prefix=f"t{tag}f")
    net.setup()
    try:
        assert net.firewall is not None and net.firewall.table in list_tables()
        assert _link_local(net.bridge) is None
        with sandbox_process() as pid:
            nic = net.attach(pid, 0)
            with socket_in_netns(pid) as sandbox_tx, socket_in_netns(pid) as sandbox_rx, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as host_rx, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as host_tx:
                host_rx.bind(("0.0.0.0", 0))
                sandbox_rx.bind((nic.address, 0))
                assert not _probe(sandbox_tx, host_rx, net.gateway)  # to a wildcard listener: dropped
                assert _probe(host_tx, sandbox_rx, nic.address)  # the host may still talk to the sandbox
            assert net.firewall.dropped()["input"] >= 1
            net.detach(nic, delete_link=True)
    finally:
        net.teardown()
        net.close()
    assert f"easyfaas_t{tag}fw" not in list_tables()


# ---- egress policies through the pod -------------------------------------------------------------

def test_egress_policies_are_validated_naming_the_field(client: PodClient) -> None:
    name = unique("egressbad")
    body = {"Runtime": "python3", "Code": b64zip({"index.py": QUICK_PY}),
            "Network": {"Egress": ["10.1.2.3:1883", "10.1.2.3"]}}
    status, raw = client.stubs("POST", f"/v1/functions/{name}", body)
    error = json.loads(raw)
    assert status == 400 and error["Cause"].startswith("Network.Egress[1]: "), raw
    assert set(error) == {"Code", "Cause", "Message", "Status", "Type"}
    assert client.stubs("GET", f"/v1/functions/{name}")[0] == 404  # nothing was created
    # The default is "none", and it is said so.
    client.deploy(name, "python3", {"index.py": QUICK_PY})
    status, raw = client.stubs("GET", f"/v1/functions/{name}")
    assert status == 200 and json.loads(raw)["Configuration"]["Network"] == {"Egress": "none"}, raw
    status, raw = client.stubs("PUT", f"/v1/functions/{name}", {"Network": {"Egress": "everything"}})
    assert status == 400 and json.loads(raw)["Cause"].startswith("Network.Egress: "), raw


def _egress_rules(client: PodClient, veth: str) -> int:
    from funclet.sandbox.nftables import NFPROTO_INET, NftSocket, list_rules

    nft = NftSocket()
    try:
        return sum(1 for rule in list_rules(nft, NFPROTO_INET, f"easyfaas_{client.names.bridge}")
                   if rule.chain == "egress" and rule.tag == veth)
    finally:
        nft.close()


def test_a_function_reaches_what_its_policy_allows_and_nothing_else(client: PodClient, outside: Any) -> None:
    p1, p2 = outside.ports
    name = unique("egress")
    client.deploy(name, "python3", {"index.py": EGRESS_PY},
                  network={"Egress": [f"{outside.address}:{p1}", f"[{outside.address6}]:{p1}"]})
    targets = [[outside.address, p1], [outside.address, p2], [outside.other_address, p1],
               [outside.address6, p1], [client.gateway, client.config.controller_port],
               [outside.host_address, client.config.stubs_port]]
    tokens = {f"{a}:{p}": secrets.token_hex(4) for a, p in targets}

    def run() -> dict[str, str]:
        event = {"tcp": targets, "udp": [[a, p, tokens[f"{a}:{p}"]] for a, p in targets]}
        status, _, body = client.invoke(name, event)
        assert status == 200, body
        return json.loads(body)

    def received(address: str, port: int) -> bool:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        receiver = outside.udp.get((family, port))
        if receiver is None:
            return False
        receiver.settimeout(0.5)
        try:
            while True:
                data, peer = receiver.recvfrom(64)
                if data == tokens[f"{address}:{port}"].encode():
                    assert peer[0] == outside.host_address  # masqueraded
                    return True
        except socket.timeout:
            return False

    out = run()
    assert out[f"tcp {outside.address}:{p1}"] == "ok", out
    outside.tcp[(socket.AF_INET, p1)].settimeout(5)
    outside.tcp[(socket.AF_INET, p1)].accept()[0].close()
    for refused in (f"{outside.address}:{p2}", f"{outside.other_address}:{p1}", f"{outside.address6}:{p1}",
                    f"{client.gateway}:{client.config.controller_port}",
                    f"{outside.host_address}:{client.config.stubs_port}"):
        assert out[f"tcp {refused}"] != "ok", (refused, out)
    # IPv6 is refused at the source: the sandbox has no IPv6 address or route at all.
    assert out[f"tcp {outside.address6}:{p1}"] in ("ENETUNREACH", "EADDRNOTAVAIL"), out
    assert received(outside.address, p1)
    assert not any(received(a, p) for a, p in targets[1:4])
    slot = client.slot_of(name)
    assert slot is not None
    veth = client.veth(slot["RuntimeID"])
    assert _egress_rules(client, veth) == 2  # TCP and UDP to the one IPv4 entry
    # The policy goes with the function: once its sandbox is taken back, its rules are gone.
    client.invalidate(slot["RuntimeID"])
    wait_until(lambda: _egress_rules(client, veth) == 0, timeout=30, what="the sandbox's egress rules to go")
    status, raw = client.stubs("PUT", f"/v1/functions/{name}", {"Network": {"Egress": "none"}})
    assert status == 200, raw
    out = run()
    assert out[f"tcp {outside.address}:{p1}"] != "ok", out
    assert not received(outside.address, p1)
