"""The function groups: which sandboxes serve which function, under which policy and limit.

A :class:`FunctionGroup` (see :mod:`controller.pool.records`) is keyed by the function's identity
(its configuration); :class:`FunctionGroups` keeps them, remembers which identity is current for a
BRN (an older configuration's group is *superseded*), shares one :class:`ConcurrencyLimit` among
every version of a function with a reserved concurrency, and applies the operator's
``--function-scaling`` overrides. Bookkeeping only: it never changes a sandbox.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterator

from controller.pool.records import ConcurrencyLimit, FunctionGroup, Phase
from controller.scaling import FunctionPolicy
from easyfaas.brn import function_of
from easyfaas.models import FunctionRecord


class FunctionGroups:
    """The groups by identity; ``get`` is the warm path's one dict lookup."""

    def __init__(self, *, scale_min_ttl: float = 3600.0, scaling: dict[str, dict[str, Any]] | None = None) -> None:
        self.scale_min_ttl = scale_min_ttl
        self.scaling = scaling or {}
        self.by_identity: dict[str, FunctionGroup] = {}  # never rebound: ``get`` is its bound method
        self.get = self.by_identity.get
        self._identity_of_brn: dict[str, str] = {}
        self.limits: dict[str, ConcurrencyLimit] = {}

    def __iter__(self) -> Iterator[FunctionGroup]:
        return iter(list(self.by_identity.values()))

    def policy_for(self, brn: str, record: FunctionRecord | None = None,
                   policy: FunctionPolicy | None = None) -> FunctionPolicy:
        """A function's effective policy: its record's (or ``policy``), then the operator's overrides."""
        base = policy if policy is not None else (FunctionPolicy.of(record) if record is not None else None)
        if base is None:
            group = self.by_identity.get(self._identity_of_brn.get(brn, ""))
            base = group.policy if group is not None else FunctionPolicy()
        if self.scaling:
            unqualified, name = function_of(brn)
            knobs = self.scaling.get(brn) or self.scaling.get(unqualified) or self.scaling.get(name)
            if knobs:
                base = dataclasses.replace(base, **knobs)
        return base

    def for_request(self, identity: str, brn: str, quota: int, memory_mb: int,
                    policy: FunctionPolicy) -> FunctionGroup:
        """The group a request of ``identity`` joins, brought up to date with the request's knobs."""
        group = self.by_identity.get(identity)
        if group is None:
            group = self.by_identity[identity] = FunctionGroup(identity, brn)
        group.quota, group.memory_mb, group.last_used = quota, memory_mb, time.monotonic()
        if group.policy != policy or (policy.reserved_concurrency is not None) != (group.limit is not None):
            group.policy = policy
            self._apply_limit(group)
        if brn:
            previous = self._identity_of_brn.get(brn)
            if previous != identity:
                # A new configuration of the same function version: the old one's sandboxes are no
                # longer worth keeping warm.
                old = self.by_identity.get(previous or "")
                if old is not None:
                    old.superseded = True
                self._identity_of_brn[brn] = identity
        return group

    def for_binding(self, identity: str, brn: str, quota: int, memory_mb: int) -> FunctionGroup:
        """The group a sandbox bound to ``identity`` joins (made, with these knobs, if none is)."""
        group = self.by_identity.get(identity)
        if group is None:
            group = self.by_identity[identity] = FunctionGroup(identity, brn)
            group.quota, group.memory_mb = max(1, quota), memory_mb
        return group

    def _apply_limit(self, group: FunctionGroup) -> None:
        cap = group.policy.reserved_concurrency
        if cap is None:
            group.limit = None
            return
        limit = self.limits.get(group.fkey)
        if limit is None:
            limit = self.limits[group.fkey] = ConcurrencyLimit(cap)
        limit.cap = cap
        for other in self.by_identity.values():
            if other.fkey == group.fkey and other.policy.reserved_concurrency is not None:
                other.limit = limit
        group.limit = limit

    def keep(self, group: FunctionGroup, now: float) -> int:
        """How many warm sandboxes ``group`` is owed now (0 once superseded or long unused)."""
        if not group.policy.min_warm or group.superseded or now - group.last_used > self.scale_min_ttl:
            return 0
        return group.policy.min_warm

    @staticmethod
    def warm_count(group: FunctionGroup) -> int:
        return sum(1 for sandbox in group.sandboxes if sandbox.phase in (Phase.WARM, Phase.WARMUP))

    def kept_warm(self, group: FunctionGroup, now: float) -> bool:
        """True when ``group`` has no more warm sandboxes than it is owed (none may go)."""
        keep = self.keep(group, now)
        return bool(keep) and self.warm_count(group) <= keep

    def drop_if_unused(self, group: FunctionGroup) -> None:
        """Forget a group with no sandbox, no waiter and no scale.min owed."""
        if (not group.sandboxes and not group.waiters and not self.keep(group, time.monotonic())
                and self.by_identity.get(group.identity) is group):
            del self.by_identity[group.identity]
            if self._identity_of_brn.get(group.brn) == group.identity:
                del self._identity_of_brn[group.brn]
