"""Names and ports for a pod that shares the machine with others: the end-to-end tests and the
benchmarks start pods of their own beside a real one (and beside each other), so every name a pod
gives the kernel (bridge, veths, cgroups) and every port it listens on must be its own.

:class:`PodNames` goes into :class:`easyfaas.pod.PodConfig` (``pod_name``, ``bridge_name``,
``bridge_ip``, ``veth_prefix``); :func:`easyfaas.pod_leaks.kernel_leaks` finds what a pod of these
names left behind. Stdlib only.
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class PodNames:
    """Names that cannot collide with a real pod or another test run on this machine."""

    tag: str

    @classmethod
    def new(cls) -> PodNames:
        return cls(secrets.token_hex(3))

    @property
    def pod_name(self) -> str:
        return f"t{self.tag}"

    @property
    def bridge(self) -> str:
        return f"et{self.tag}b"

    @property
    def veth_prefix(self) -> str:
        return f"e{self.tag}v"

    @property
    def bridge_ip(self) -> str:
        return f"10.214.{int(self.tag[:2], 16) % 250 + 1}.1/24"
