"""Waiting until a deployed function's code image is ready.

No pod API says "the image of this code is built". What can be observed is the path new code takes:
stubs appends each stored code to its code-changes feed (``GET /v1/code-changes``); the controller's
prefetcher follows the feed and has the funclet build the code image, counting what it did in
``GET /v1/resource`` → ``CodePrefetch {Prepared, Pending, Failed, LastError}``.

So a deployment is **ready** when (1) its change (function BRN and CodeSha256) is in the feed, and
(2) the prefetcher has nothing pending and its Prepared+Failed count has moved past the value read
before the upload — or, when it does not move, nothing has been pending for :data:`SETTLE` seconds,
which means the prefetcher already knew this code (the same CodeSha256 as an earlier deploy: the
image exists). A Failed count that moved with a LastError naming the function means the image could
not be built. A pod without prefetching (no ``CodePrefetch``) builds images at the first
invocation: there, ready means stored. Concurrent deployments by others only make the wait end a
little early or late, never wrong about failures of this function.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from cli.client import CONTROLLER, REGISTRY, Client, raise_for_error
from cli.exits import CliError, ExitCode
from cli.progress import QuietReporter, Reporter

POLL_INTERVAL = 0.2
SETTLE = 2.0
DEFAULT_TIMEOUT = 120.0


@dataclass
class Baseline:
    """What the pod looked like before an upload."""

    feed_seq: int | None       # None: stubs has no code-changes feed
    handled: int | None        # the prefetcher's Prepared+Failed; None: no prefetcher
    failed: int = 0


@dataclass
class Readiness:
    ready: bool
    how: str  # "image built", "image already built", "stored (the pod builds images at first invocation)"

    def to_dict(self) -> dict[str, Any]:
        return {"Ready": self.ready, "How": self.how}


def _prefetch_stats(client: Client) -> dict[str, Any] | None:
    resource = client.call(CONTROLLER, "GET", "/v1/resource", what="reading the controller's resource")
    stats = resource.get("CodePrefetch") if isinstance(resource, dict) else None
    return stats if isinstance(stats, dict) else None


def baseline(client: Client) -> Baseline:
    """Read before the upload, so the wait recognises what the upload caused."""
    resp = client.send(REGISTRY, "GET", "/v1/code-changes", query={"after": -1})
    feed_seq = None if resp.status == 404 else raise_for_error(resp, "reading the code-changes feed").json()["Seq"]
    stats = _prefetch_stats(client)
    if stats is None:
        return Baseline(feed_seq, None)
    return Baseline(feed_seq, int(stats.get("Prepared", 0)) + int(stats.get("Failed", 0)), int(stats.get("Failed", 0)))


def _change_in_feed(client: Client, after: int, arn: str, sha: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        wait = max(0.0, min(5.0, deadline - time.monotonic()))
        batch = client.call(REGISTRY, "GET", "/v1/code-changes", query={"after": after, "wait": f"{wait:.1f}"},
                            what="reading the code-changes feed", timeout=wait + 10)
        for change in batch.get("Changes") or []:
            if change.get("FunctionBrn") == arn and change.get("CodeSha256") == sha:
                return True
        if batch.get("Lost"):  # stubs restarted or the feed overflowed: read what it still holds
            after = 0
        else:
            after = batch.get("Seq", after)
    return False


def wait_ready(client: Client, before: Baseline, record: dict[str, Any], *, timeout: float = DEFAULT_TIMEOUT,
               reporter: Reporter | None = None) -> Readiness:
    """Wait until ``record``'s code image is ready (see the module docstring); raises when it failed."""
    reporter = reporter or QuietReporter()
    cfg = record.get("Configuration") or {}
    arn, sha = cfg.get("FunctionArn", ""), cfg.get("CodeSha256", "")
    deadline = time.monotonic() + timeout
    reporter.start("waiting for the code image")
    if before.feed_seq is not None and not _change_in_feed(client, before.feed_seq, arn, sha, deadline):
        raise CliError(f"{arn}: its code did not appear in the code-changes feed within {timeout:g}s",
                       ExitCode.UNAVAILABLE)
    if before.handled is None:
        reporter.finish()
        return Readiness(True, "stored (the pod builds the code image at the first invocation)")
    idle_since: float | None = None
    while time.monotonic() < deadline:
        stats = _prefetch_stats(client) or {}
        handled = int(stats.get("Prepared", 0)) + int(stats.get("Failed", 0))
        failed = int(stats.get("Failed", 0))
        pending = int(stats.get("Pending", 0))
        last_error = str(stats.get("LastError") or "")
        if failed > before.failed and last_error.startswith(f"{arn}:"):
            raise CliError(f"the pod could not build the code image of {arn}: {last_error[len(arn) + 1:].strip()}",
                           ExitCode.REFUSED, {"Error": {"FunctionArn": arn, "LastError": last_error}})
        if pending == 0:
            if handled > before.handled:
                reporter.finish()
                return Readiness(True, "code image built")
            now = time.monotonic()
            idle_since = idle_since if idle_since is not None else now
            if now - idle_since >= SETTLE:
                reporter.finish()
                return Readiness(True, "code image already built (same code as before)")
        else:
            idle_since = None
        time.sleep(POLL_INTERVAL)
    raise CliError(f"{arn}: the code image was not ready within {timeout:g}s", ExitCode.UNAVAILABLE)
