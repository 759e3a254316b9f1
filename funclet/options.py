"""The funclet's options: the original's flag names where they exist, new ones for what it lacked."""

from __future__ import annotations

from typing import Sequence

from easyfaas.config import Option, Settings, parse_bool, parse_duration, parse_options, parse_size
from easyfaas.outbound import OUTBOUND_OPTIONS

OPTIONS = [
    Option("api-sock", str, "/var/run/faas/.funcletapi.sock", "unix socket of the funclet API"),
    Option("container-num", int, 10, "sandboxes pre-created in the pool: its idle size"),
    Option("max-sandboxes", int, 0,
           "the pool grows on the controller's request up to this many sandboxes (0: --container-num, a fixed pool)"),
    Option("runner-ping-interval", parse_duration, "2s", "how often idle runners are pinged (0: never)"),
    Option("max-runner-defunct", parse_duration, "10s",
           "a runner silent for this long (no answer to pings) gets its sandbox rebuilt"),
    Option("pod-name", str, "funclet", "names sandboxes <pod-name>-c<i> (env MY_POD_NAME overrides)"),
    Option("state-dir", str, "/var/faas", "where code images, slot mountpoints and the rootfs live"),
    Option("run-dir", str, "/var/run/faas", "where the per-sandbox invoke sockets are bound"),
    Option("runtime-path", str, "/var/faas/runtime", "language runtimes prepared by `runner prepare`"),
    Option("rootfs-path", str, "/var/faas/runner/rootfs", "sandbox root skeleton prepared by `runner prepare`"),
    Option("cgroup-root-path", str, "/sys/fs/cgroup", "where cgroup hierarchies are mounted"),
    Option("cgroup-parent", str, "", "cgroup under which sandboxes are created (default: the funclet's own)"),
    Option("total-memory", str, "", "capacity when the funclet's memory cgroup is unlimited (e.g. 8G)"),
    Option("total-cpu", float, 0.0, "capacity in cores when the cpu cgroup is unlimited (0 = number of CPUs)"),
    Option("reserved-memory", parse_size, "100M", "memory kept back from sandboxes"),
    Option("reserved-cpu", float, 0.1, "cores kept back from sandboxes"),
    Option("runner-memory", parse_size, "128M", "memory limit of an idle sandbox (the pool's BaseMemory)"),
    Option("runner-cpu-limits", float, 0.5, "cores per sandbox (cfs quota)"),
    Option("runner-pids", int, 256, "process limit per sandbox"),
    Option("tmp-size", parse_size, "64M", "size cap of each sandbox's /tmp (and /dev/shm)"),
    Option("sandbox-uid-base", int, 20000, "user code of sandbox i runs as uid/gid base+i"),
    Option("network", str, "bridge", "bridge (veth per sandbox on an isolated bridge port) or none"),
    Option("bridge-name", str, "efbr0", "bridge device"),
    Option("bridge-ip", str, "172.33.0.1/24", "bridge address; sandboxes get addresses from its subnet"),
    Option("veth-prefix", str, "efv", "host-side veth name prefix"),
    Option("warmup-timeout", parse_duration, "30s", "how long a warmup may take (code image build included)"),
    Option("runner-timeout", parse_duration, "10s", "how long a runner may take to answer a command"),
    Option("python", str, "", "interpreter for the zygote (default: this one)"),
    Option("max-code-size", parse_size, "250M", "largest unpacked code accepted"),
    Option("standby-runtimes", str, "nodejs",
           "runtimes kept pre-started in idle sandboxes, comma-separated (those whose runtime.yaml says Standby)"),
    Option("standby-sandboxes", int, 2,
           "idle sandboxes each standby runtime is kept pre-started in (at most half the pool; 0: none)"),
    Option("max-code-images", int, 256,
           "code images kept built and mounted (least recently used idle ones are evicted beyond it)"),
    Option("metrics-port", int, 0,
           "also serve GET /metrics, /healthz and /readyz on this TCP port of 127.0.0.1 (0: the API socket only)"),
    Option("preflight-only", parse_bool, False, "check the host and exit"),
    Option("outbound-guard", parse_bool, False,
           "refuse remote code locations that are loopback, link-local or this host's (easyfaas/outbound.py); "
           "the pod turns it on when its API keys are required"),
    *OUTBOUND_OPTIONS,
]


def parse_funclet_options(argv: Sequence[str] | None = None) -> Settings:
    return parse_options("funclet", OPTIONS, argv)
