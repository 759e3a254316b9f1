"""The real thing, as root: zygote → sandbox init (PID 1) → language runtimes inside a sandbox.

The test plays the funclet with the host and sandboxes of tests/sandbox_harness.py: it makes the
slots dir a shared mount, starts the zygote with ``zygote_command``, spawns sandboxes with a
SandboxSpec (in a real v1 memory cgroup when the host has one), bind-mounts code and runtimes onto a
slot from the host side after the sandbox is ready (so they can only arrive by propagation), and
drives the runner over its control socket.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import textwrap
import time
from typing import Any

import pytest

from easyfaas import syscalls as sc
from runner import control
from tests.fakes.waiting import wait_until
from tests.sandbox_harness import REPO, UID, VENV_PYTHON, Host, unmount_all_under

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root")


PROBE = """
    import os, pwd, socket

    def handler(event, context):
        out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "pid": os.getpid(),
               "ppid": os.getppid(), "hostname": socket.gethostname(), "user": pwd.getpwuid(os.getuid()).pw_name,
               "root": sorted(os.listdir("/")), "dev": sorted(os.listdir("/dev")),
               "repo_visible": os.path.exists("/work/main") or os.path.exists("/var/faas"),
               "interfaces": [name for _, name in socket.if_nameindex()], "cwd": os.getcwd()}
        try:
            open("/etc/shadow").read()
            out["shadow"] = "readable"
        except OSError as exc:
            out["shadow"] = type(exc).__name__
        for name, path in (("task_write", "/var/task/new-file"), ("runtime_write", "/var/runtime/x"),
                           ("etc_write", "/etc/x"), ("root_write", "/x")):
            try:
                open(path, "w").close()
                out[name] = "written"
            except OSError as exc:
                out[name] = exc.errno
        with open("/tmp/scratch", "w") as f:
            f.write("scratch")
        out["tmp_read"] = open("/tmp/scratch").read()
        with open("/dev/shm/segment", "w") as f:
            f.write("x")
        status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
        out["caps"] = {k: status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
        out["no_new_privs"] = status["NoNewPrivs"].strip()
        out["fds"] = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
        out["visible_pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        return out
"""


def test_spawn_start_invoke_reset_in_a_real_sandbox(host: Host, spawn: Any, code_dirs: Any) -> None:
    box, first, ready_ms = spawn()
    assert first == {"op": "ready"}
    print(f"\nspawn → ready: {ready_ms:.1f} ms")
    pid = box.pid

    # Namespaces, seen from the host.
    for ns in ("mnt", "pid", "uts", "ipc", "net"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    assert os.readlink(f"/proc/{pid}/ns/user") == os.readlink("/proc/self/ns/user")
    with open(f"/proc/{pid}/status") as f:
        nspid = next(line for line in f if line.startswith("NSpid:")).split()
    assert nspid[-1] == "1"  # PID 1 inside, the host pid outside
    if box.spec.cgroup_procs:
        with open(box.spec.cgroup_procs[0]) as f:
            assert str(pid) in f.read().split()
    # The root is a read-only tmpfs, even for root.
    with pytest.raises(OSError) as excinfo:
        open(f"/proc/{pid}/root/written-by-host", "w")
    assert excinfo.value.errno == errno.EROFS
    with open(f"/proc/{pid}/mountinfo") as f:
        root_line = next(line for line in f if line.split()[4] == "/")
    assert root_line.split()[5].startswith("ro")
    assert not os.listdir(f"/proc/{pid}/root/var/task")

    # Code and runtime arrive after "ready", from the host side, by mount propagation.
    code = code_dirs({"index.py": PROBE})
    box.mount_task(code)
    box.mount_runtime("python3")
    assert os.path.exists(f"/proc/{pid}/root/var/task/index.py")
    assert os.path.exists(f"/proc/{pid}/root/var/runtime/bootstrap.py")

    reply, start_ms = box.start("python3", "index.handler")
    assert reply["op"] == "started" and reply["ok"] is True, reply
    print(f"start → started (python, fork): {start_ms:.1f} ms")
    runtime_pid_inside = reply["pid"]
    assert box.request({"op": "ping"}, {"pong"}) == {"op": "pong", "runtime_pid": runtime_pid_inside, "standby": False,
                                                        "spare": False}

    began = time.monotonic()
    response = box.invoke()
    print(f"first invoke (python): {(time.monotonic() - began) * 1000:.1f} ms")
    assert response["ok"] is True, response
    out = json.loads(response["result"])
    assert out["uid"] == UID and out["gid"] == UID and out["groups"] == []
    assert out["user"] == "sandbox"
    assert out["pid"] != 1 and out["ppid"] == 1
    assert out["hostname"] == box.spec.id
    assert out["shadow"] in ("FileNotFoundError", "PermissionError")
    assert out["task_write"] in (errno.EROFS, errno.EACCES)
    assert out["runtime_write"] in (errno.EROFS, errno.EACCES)
    assert out["etc_write"] in (errno.EROFS, errno.EACCES)
    assert out["root_write"] == errno.EROFS
    assert out["tmp_read"] == "scratch"
    assert out["caps"] == {k: "0000000000000000" for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    assert out["no_new_privs"] == "1"
    assert out["repo_visible"] is False
    assert {"usr", "etc", "proc", "dev", "tmp", "var"} <= set(out["root"])
    assert "work" not in out["root"] and "home" not in out["root"]
    assert set(out["dev"]) == {"null", "zero", "full", "random", "urandom", "tty", "fd", "stdin", "stdout",
                               "stderr", "shm"}
    assert out["interfaces"] == ["lo"]
    assert out["cwd"] == "/var/task"
    assert max(out["fds"]) < 10  # stdio, listener, a few of its own: nothing leaked from the runner
    assert 1 not in out["visible_pids"] and out["pid"] in out["visible_pids"]  # hidepid: PID 1 is root's

    # The runtime got its own IPC namespace; the runner keeps its own.
    runtime_host_pids = [p for p in box.processes() if p != pid]
    assert len(runtime_host_pids) == 1
    assert os.readlink(f"/proc/{runtime_host_pids[0]}/ns/ipc") != os.readlink(f"/proc/{pid}/ns/ipc")

    busy = box.request({"op": "start", "runtime": host.runtime("python3"), "env": {}}, {"started"})
    assert busy["ok"] is False and busy["error"]["errorType"] == "Runtime.Busy"

    # Reset: every process but PID 1 dies (daemons too), /tmp and /dev/shm are fresh, and a new
    # spare Python runtime waits for the next start.
    before_reset = set(box.processes())
    assert box.request({"op": "reset"}, {"reset_done"}) == {"op": "reset_done"}
    assert _after_reset(box) and not (set(box.processes()) - {pid}) & before_reset
    assert os.listdir(f"/proc/{pid}/root/tmp") == []
    assert os.listdir(f"/proc/{pid}/root/dev/shm") == []
    assert box.request({"op": "ping"}, {"pong"})["runtime_pid"] == 0
    assert not [e for e in box.events if e["op"] == "exited"]  # a reset is not a crash


def _after_reset(box: Any) -> bool:
    """Only the runner and its one spare runtime are left (the spare as the sandbox's user)."""
    _spare_ready(box)
    return box.request({"op": "ping"}, {"pong"})["spare"] is True


def _spare_ready(box: Any) -> None:
    deadline = time.monotonic() + 5
    while not (others := [p for p in box.processes() if p != box.pid]) and time.monotonic() < deadline:
        time.sleep(0.01)  # it is forked right after the runner's answer
    assert len(others) == 1, others
    while True:  # and then sets itself up
        with open(f"/proc/{others[0]}/status") as f:
            status = f.read()
        # it drops to its uid, then sets no_new_privs, then installs its seccomp filter
        if (f"Uid:\t{UID}\t{UID}\t{UID}" in status and "Seccomp:\t2" in status) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert f"Uid:\t{UID}\t{UID}\t{UID}" in status and "NoNewPrivs:\t1" in status
    assert "Seccomp:\t2" in status


DAEMON = """
    import os, time

    def handler(event, context):
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv("/bin/sleep", ["sleep", "300"])
            os._exit(0)
        os.wait()
        open("/tmp/left-behind", "w").close()
        time.sleep(0.05)
        return "daemon started"
"""


def test_reset_kills_double_forked_daemons(host: Host, spawn: Any, code_dirs: Any) -> None:
    box, first, _ = spawn()
    assert first["op"] == "ready"
    box.mount_task(code_dirs({"index.py": DAEMON}))
    box.mount_runtime("python3")
    assert box.start("python3", "index.handler")[0]["ok"] is True
    assert box.invoke()["result"] == "daemon started"
    procs = box.processes()
    assert len(procs) == 3  # runner, runtime, the sleeping daemon
    daemon = [p for p in procs if open(f"/proc/{p}/comm").read().strip() == "sleep"]
    assert daemon, procs
    with open(f"/proc/{daemon[0]}/status") as f:
        assert "PPid:\t0" not in f.read()  # it was re-parented to the sandbox's init, not the host's
    assert os.listdir(f"/proc/{box.pid}/root/tmp") == ["left-behind"]
    assert box.request({"op": "reset"}, {"reset_done"})["op"] == "reset_done"
    assert _after_reset(box) and daemon[0] not in box.processes()
    assert os.listdir(f"/proc/{box.pid}/root/tmp") == []
    # The sandbox is reusable after a reset.
    assert box.start("python3", "index.handler")[0]["ok"] is True


def test_nodejs_runtime_is_execed_in_the_sandbox(host: Host, spawn: Any, code_dirs: Any) -> None:
    if not (host.runtime_dir / "nodejs" / "runtime.yaml").exists():
        pytest.skip("node is not installed")
    box, first, _ = spawn()
    assert first["op"] == "ready"
    box.mount_task(code_dirs({"index.js": """
        const fs = require('fs');
        exports.handler = (event, context, callback) => {
          fs.writeFileSync('/tmp/node-was-here', 'x');
          callback(null, { uid: process.getuid(), pid: process.pid, version: process.version,
                           extraCerts: process.env.NODE_EXTRA_CA_CERTS || null, home: process.env.HOME,
                           request: context.awsRequestId });
        };
    """}))
    box.mount_runtime("nodejs")
    reply, start_ms = box.start("nodejs", "index.handler")
    assert reply["ok"] is True, reply
    print(f"\nstart → started (node, exec): {start_ms:.1f} ms")
    out = json.loads(box.invoke(id="node-1")["result"])
    assert out["uid"] == UID and out["pid"] != 1
    assert out["version"].startswith("v")
    assert out["extraCerts"] is None and out["home"] == "/tmp"
    assert out["request"] == "node-1"
    runtime = [p for p in box.processes() if p != box.pid]
    with open(f"/proc/{runtime[0]}/status") as f:
        status = f.read()
    assert "NoNewPrivs:\t1" in status and "CapEff:\t0000000000000000" in status


def test_nodejs_standby_is_prestarted_then_handed_its_function(host: Host, spawn: Any, code_dirs: Any) -> None:
    if not (host.runtime_dir / "nodejs" / "runtime.yaml").exists():
        pytest.skip("node is not installed")
    box, first, _ = spawn()
    assert first["op"] == "ready"
    node = host.runtime("nodejs")
    assert node.get("Standby") is True
    box.mount_runtime("nodejs")  # the runtime is there before any function is
    pre = box.request({"op": "prestart", "runtime": node}, {"prestarted"})
    assert pre["ok"] is True and pre["pid"] > 1, pre
    assert box.request({"op": "ping"}, {"pong"}) == {"op": "pong", "runtime_pid": pre["pid"], "standby": True,
                                                        "spare": False}
    assert box.request({"op": "prestart", "runtime": node}, {"prestarted"})["ok"] is False  # one at a time

    box.mount_task(code_dirs({"index.js": """
        exports.handler = async () => ({ pid: process.pid, cwd: process.cwd(), mine: process.env.MINE || null,
                                         standbyFd: process.env.EASYFAAS_STANDBY_FD || null,
                                         name: process.env.AWS_LAMBDA_FUNCTION_NAME || null });
    """}))
    time.sleep(0.2)  # let node reach its wait for the assignment (it works either way)
    reply, start_ms = box.start("nodejs", "index.handler", MINE="yes")
    assert reply["ok"] is True and reply["pid"] == pre["pid"], reply  # the same process, not a new one
    print(f"\nstart → started (node, standby): {start_ms:.1f} ms")
    out = json.loads(box.invoke(id="sb-1")["result"])
    assert out == {"pid": out["pid"], "cwd": "/var/task", "mine": "yes", "standbyFd": None, "name": None}
    assert box.request({"op": "ping"}, {"pong"})["standby"] is False

    # A start of another runtime replaces the standby quietly (no "exited" for it).
    box.request({"op": "reset"}, {"reset_done"})
    pre = box.request({"op": "prestart", "runtime": node}, {"prestarted"})
    assert pre["ok"] is True
    sc.umount(str(box.slot / "runtime"), sc.MNT_DETACH)
    box.mount_runtime("python3")
    box.mount_task(code_dirs({"index.py": "import os\ndef handler(e, c):\n    return os.getpid()\n"}))
    reply, _ = box.start("python3", "index.handler")
    assert reply["ok"] is True and reply["pid"] != pre["pid"], reply
    assert pre["pid"] not in _inner_pids(box)
    assert box.invoke()["result"] == str(reply["pid"])
    assert not [e for e in box.events if e["op"] == "exited"]

    # Variables read at process start get a freshly exec'd runtime.
    box.request({"op": "reset"}, {"reset_done"})
    for sub in ("runtime", "task"):
        sc.umount(str(box.slot / sub), sc.MNT_DETACH)
    box.mount_runtime("nodejs")
    box.mount_task(code_dirs({"index.js": "exports.handler = async () => process.execArgv;\n"}))
    pre = box.request({"op": "prestart", "runtime": node}, {"prestarted"})
    reply, _ = box.start("nodejs", "index.handler", NODE_OPTIONS="--max-old-space-size=64")
    assert reply["ok"] is True and reply["pid"] != pre["pid"], reply

    # A standby that dies is reported as such; a runtime without Standby cannot be pre-started.
    box.request({"op": "reset"}, {"reset_done"})
    pre = box.request({"op": "prestart", "runtime": node}, {"prestarted"})
    (standby,) = [p for p in box.processes() if p != box.pid]
    os.kill(standby, signal.SIGKILL)
    exited = box.wait_for({"exited"})
    assert exited["standby"] is True and exited["signal"] == signal.SIGKILL
    assert box.request({"op": "ping"}, {"pong"}) == {"op": "pong", "runtime_pid": 0, "standby": False,
                                                        "spare": False}
    refused = box.request({"op": "prestart", "runtime": host.runtime("python3")}, {"prestarted"})
    assert refused["ok"] is False and "cannot be pre-started" in refused["error"]


PROVIDED_BOOTSTRAP = """
    #!{python} -IS
    import http.client, json, os
    host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
    conn = http.client.HTTPConnection(host, int(port))
    base = "/2018-06-01/runtime/invocation/"
    while True:
        conn.request("GET", base + "next")
        reply = conn.getresponse()
        event = reply.read()
        request_id = reply.getheader("Lambda-Runtime-Aws-Request-Id")
        body = json.dumps({{"server": os.getppid(), "event": json.loads(event)}}).encode()
        conn.request("POST", base + request_id + "/response", body=body)
        conn.getresponse().read()
"""


def test_provided_runtime_api_server_is_the_standby_runtime(host: Host, spawn: Any, code_dirs: Any) -> None:
    """The Runtime API server of a `provided` function is the sandbox's standby runtime (the
    forked Python bootstrap, there before any function is assigned); a bootstrap that fails its
    init fails the start cleanly, and a reset leaves nothing of either behind."""
    box, first, _ = spawn()
    assert first["op"] == "ready"
    _spare_ready(box)
    (standby,) = _inner_pids(box) - {1}
    assert box.request({"op": "ping"}, {"pong"})["spare"] is True

    python = os.path.realpath(VENV_PYTHON)
    box.mount_task(code_dirs({"bootstrap": PROVIDED_BOOTSTRAP.format(python=python)}))
    box.mount_runtime("provided")
    reply, start_ms = box.start("provided", "index.handler")
    assert reply["ok"] is True and reply["pid"] == standby, reply  # the same process, not a new one
    print(f"\nstart → started (provided, standby server + bootstrap): {start_ms:.1f} ms")
    response = box.invoke({"n": 1}, request_id="req-standby-1")
    assert response["ok"] is True, response
    assert json.loads(response["result"]) == {"server": standby, "event": {"n": 1}}
    assert len(_inner_pids(box)) == 3  # the runner, the server, the bootstrap

    before_reset = set(box.processes())
    box.request({"op": "reset"}, {"reset_done"})
    assert _after_reset(box) and not (set(box.processes()) - {box.pid}) & before_reset

    # A bootstrap that exits during its init: the start fails with Lambda's error type.
    (standby,) = _inner_pids(box) - {1}
    sc.umount(str(box.slot / "task"), sc.MNT_DETACH)
    box.mount_task(code_dirs({"bootstrap": "#!/bin/sh\necho 'no runtime here' >&2\nexit 3\n"}))
    reply, _ = box.start("provided", "index.handler")
    assert reply["ok"] is False and reply["pid"] == standby, reply
    assert reply["error"]["errorType"] == "Runtime.ExitError"
    assert "exit status 3" in reply["error"]["errorMessage"]
    assert "no runtime here" in reply["error"]["errorMessage"]
    failed = box.invoke(request_id="req-standby-2")
    assert failed["ok"] is False and failed["fatal"] is True
    assert failed["error"]["errorType"] == "Runtime.ExitError"
    before_reset = set(box.processes())
    box.request({"op": "reset"}, {"reset_done"})
    assert _after_reset(box) and not (set(box.processes()) - {box.pid}) & before_reset


def _inner_pids(box: Any) -> set[int]:
    """Pids of the sandbox's processes as its own pid namespace numbers them."""
    inner = set()
    for host_pid in box.processes():
        with open(f"/proc/{host_pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    inner.add(int(line.split()[-1]))
    return inner


def test_exec_runtime_runs_a_shell_script(host: Host, spawn: Any, code_dirs: Any) -> None:
    box, first, _ = spawn(cgroup=False)
    assert first["op"] == "ready"
    box.mount_task(code_dirs({"run.sh": """
        #!/bin/sh
        echo "uid $(id -u)" >&2
        tr a-z A-Z
    """}))
    box.mount_runtime("exec")
    reply, _ = box.start("exec", "run.sh")
    assert reply["ok"] is True, reply
    response = box.invoke("shout this")
    assert response["result"] == "SHOUT THIS"
    assert response["logs"] == f"uid {UID}\n"


def test_init_errors_are_relayed_as_started_failures(host: Host, spawn: Any, code_dirs: Any) -> None:
    box, first, _ = spawn(cgroup=False)
    assert first["op"] == "ready"
    box.mount_task(code_dirs({"index.py": "import not_a_module\n"}))
    box.mount_runtime("python3")
    reply, _ = box.start("python3", "index.handler")
    assert reply["ok"] is False
    assert reply["error"]["errorType"] == "Runtime.ImportModuleError"
    response = box.invoke()
    assert response["fatal"] is True
    # A runtime that cannot even be exec'd.
    box.request({"op": "reset"}, {"reset_done"})
    broken = dict(host.runtime("nodejs") if (host.runtime_dir / "nodejs").exists() else host.runtime("python3"))
    broken.update({"Launch": "exec", "Bin": "/usr/bin/definitely-not-here"})
    reply = box.request({"op": "start", "runtime": broken, "env": {}}, {"started"})
    assert reply["ok"] is False and reply["error"]["errorType"] == "Runtime.ExecError"
    exited = box.wait_for({"exited"})
    assert exited["code"] == 127


def test_runtime_death_is_reported_as_exited(host: Host, spawn: Any, code_dirs: Any) -> None:
    box, first, _ = spawn(cgroup=False)
    assert first["op"] == "ready"
    box.mount_task(code_dirs({"index.py": "def handler(e, c):\n    return 'ok'\n"}))
    box.mount_runtime("python3")
    assert box.start("python3", "index.handler")[0]["ok"] is True
    runtime = [p for p in box.processes() if p != box.pid]
    os.kill(runtime[0], signal.SIGKILL)
    exited = box.wait_for({"exited"})
    assert exited["signal"] == signal.SIGKILL and exited["code"] is None
    assert box.request({"op": "ping"}, {"pong"})["runtime_pid"] == 0


def test_build_failure_is_reported(host: Host, spawn: Any) -> None:
    box, first, _ = spawn(cgroup=False, binds=[{"src": "/no/such/dir", "dst": "/opt/missing"}])
    assert first["op"] == "failed"
    assert "/no/such/dir" in first["error"]
    with pytest.raises(EOFError):
        box.wait_for({"never"}, timeout=5)  # the runner exits after reporting


def test_zygote_rejects_a_bad_spec(host: Host) -> None:
    r, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        control.send_message(host.zygote_sock, {"op": "spawn", "spec": {"id": "x"}}, [r.fileno(), w.fileno()])
        reply, _ = control.recv_message(host.zygote_sock)
        assert reply["op"] == "spawned" and reply["pid"] == 0 and "bad sandbox spec" in reply["error"]
    finally:
        r.close()
        w.close()


def test_killing_the_runner_kills_the_whole_sandbox(host: Host, spawn: Any, code_dirs: Any) -> None:
    box, first, _ = spawn()
    assert first["op"] == "ready"
    box.mount_task(code_dirs({"index.py": DAEMON}))
    box.mount_runtime("python3")
    assert box.start("python3", "index.handler")[0]["ok"] is True
    box.invoke()
    assert len(box.processes()) == 3
    os.kill(box.pid, signal.SIGKILL)
    with pytest.raises(EOFError):
        box.wait_for({"never"}, timeout=5)
    wait_until(lambda: not box.processes(), what="every process of the sandbox to die")
    assert host.zygote.poll() is None  # the zygote lives on


def test_closing_the_control_socket_ends_the_sandbox(host: Host, spawn: Any, code_dirs: Any) -> None:
    box, first, _ = spawn(cgroup=False)
    assert first["op"] == "ready"
    box.mount_task(code_dirs({"index.py": DAEMON}))
    box.mount_runtime("python3")
    assert box.start("python3", "index.handler")[0]["ok"] is True
    box.invoke()
    assert len(box.processes()) == 3
    box.ctl.shutdown(socket.SHUT_RDWR)  # what a funclet that forgets a sandbox amounts to
    wait_until(lambda: not box.processes(), what="the sandbox to end")


def test_spawn_and_start_timings(host: Host, spawn: Any, code_dirs: Any) -> None:
    ready, py_start, node_start = [], [], []
    py_code = code_dirs({"index.py": "def handler(e, c):\n    return 'ok'\n"})
    js_code = code_dirs({"index.js": "exports.handler = async () => 'ok';\n"})
    has_node = (host.runtime_dir / "nodejs" / "runtime.yaml").exists()
    for i in range(5):
        box, first, ms = spawn(cgroup=True)
        assert first["op"] == "ready"
        ready.append(ms)
        box.mount_task(py_code)
        box.mount_runtime("python3")
        _spare_ready(box)  # as in a pool, where a sandbox idles a while before its first function
        reply, ms = box.start("python3", "index.handler")
        assert reply["ok"] is True
        py_start.append(ms)
        if has_node:
            box.request({"op": "reset"}, {"reset_done"})
            unmount_all_under(str(box.slot / "task"))
            unmount_all_under(str(box.slot / "runtime"))
            box.mount_task(js_code)
            box.mount_runtime("nodejs")
            reply, ms = box.start("nodejs", "index.handler")
            assert reply["ok"] is True
            node_start.append(ms)

    def median(values: list[float]) -> str:
        return f"{sorted(values)[len(values) // 2]:.1f} ms" if values else "n/a"

    print(f"\nmedian of 5: spawn → ready {median(ready)}, start → started python {median(py_start)}, "
          f"node {median(node_start)}")
    assert sorted(ready)[2] < 1000 and sorted(py_start)[2] < 1000


def test_zygote_dies_with_its_parent(host: Host) -> None:
    """PR_SET_PDEATHSIG: a zygote whose funclet died must not linger."""
    script = textwrap.dedent(f"""
        import os, socket, subprocess, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from runner.control import zygote_command
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        proc = subprocess.Popen(zygote_command({str(VENV_PYTHON)!r}, {str(REPO)!r}, theirs.fileno()),
                                pass_fds=(theirs.fileno(),))
        print(proc.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([str(VENV_PYTHON), "-I", "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        zygote_pid = int(parent.stdout.readline())
        time.sleep(0.3)  # let it set PR_SET_PDEATHSIG
        assert os.path.exists(f"/proc/{zygote_pid}")
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()

    def gone() -> bool:
        try:
            with open(f"/proc/{zygote_pid}/stat") as f:
                return f.read().split(")")[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    wait_until(gone, what="the orphaned zygote to die")
