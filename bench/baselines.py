"""Baselines measured in the same run as the pod, so that every figure also has a ratio.

* a bare aiohttp JSON echo server (``bench/echo_server.py``), driven by the same wrk settings:
  the yardstick of the warm path and of the control plane's memory;
* a bare interpreter: ``python -I -S -c pass`` and ``node -e 0`` (NODE_EXTRA_CA_CERTS unset) start
  times, and the USS of an idle one: what a cold start and a sandbox would cost without the zygote.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

import psutil

from bench.stats import median, percentile
from easyfaas.pod_names import free_port

MiB = 1 << 20


@contextmanager
def echo_server(*, uvloop: bool = False) -> Iterator[tuple[str, int]]:
    """(base URL, pid) of a running bare aiohttp echo server; stopped on exit."""
    port = free_port()
    args = [sys.executable, "-m", "bench.echo_server", str(port)] + (["--uvloop"] if uvloop else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "ready":
            raise RuntimeError(f"the echo server did not start (exit status {proc.poll()})")
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _node_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "NODE_EXTRA_CA_CERTS"}


def _commands() -> dict[str, tuple[list[str], list[str], dict[str, str] | None]]:
    """name → (start-time argv, idle argv, env)."""
    python = os.path.realpath(sys.executable)
    cmds: dict[str, tuple[list[str], list[str], dict[str, str] | None]] = {
        "python": ([python, "-I", "-S", "-c", "pass"],
                   [python, "-I", "-S", "-c", "import sys; sys.stdin.read()"], None)}
    node = shutil.which("node")
    if node:
        cmds["node"] = ([node, "-e", "0"], [node, "-e", "process.stdin.resume()"], _node_env())
    return cmds


def interpreters(runs: int) -> dict[str, Any]:
    """Start time (p50/p99 ms over ``runs``) and idle USS of a bare Python and Node.js process."""
    result: dict[str, Any] = {}
    for name, (start_argv, idle_argv, env) in _commands().items():
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run(start_argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
            times.append((time.perf_counter() - t0) * 1000)
        idle = subprocess.Popen(idle_argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            mem = psutil.Process(idle.pid).memory_full_info()
        finally:
            if idle.stdin:
                idle.stdin.close()
            idle.kill()
            idle.wait()
        result[name] = {"start_p50_ms": round(median(times), 2), "start_p99_ms": round(percentile(times, 99), 2),
                        "idle_uss_mib": round(mem.uss / MiB, 2), "idle_rss_mib": round(mem.rss / MiB, 2)}
    return result


def process_rss_mib(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / MiB, 1)
