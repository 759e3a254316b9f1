"""The client side of stubs' trigger change feed (``GET /v1/trigger-changes?after=&wait=``, a long
poll): one loop that reads batch after batch and hands each to a reader, used by every daemon that
acts on triggers (the HTTP gateway's route table, the event sources' supervisor).

The first read (``after`` < 0) and any read after the reader fell behind carry every trigger in
``Triggers``. When stubs restarted (a new ``BootID``) without sending them, the loop reads again from
the start. A stubs without the feed (HTTP 404) is asked again less often; any other failure is
retried after ``retry_delay``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import structlog

from easyfaas.models import ModelError
from easyfaas.triggers import TriggerChanges

log = structlog.get_logger(__name__)

POLL_WAIT = 30.0
RETRY_DELAY = 1.0
MISSING_RETRY_FACTOR = 5  # a stubs without the feed is asked again after this many retry delays


async def follow_trigger_changes(session: aiohttp.ClientSession, url: str,
                                 apply: Callable[[TriggerChanges], Awaitable[None]], *,
                                 poll_wait: float = POLL_WAIT, retry_delay: float = RETRY_DELAY) -> None:
    """Read the feed at ``url`` forever and ``await apply(batch)`` for each batch; cancel to stop."""
    after, boot = -1, ""
    timeout = aiohttp.ClientTimeout(total=poll_wait + 10)
    while True:
        try:
            params = {"after": str(after), "wait": str(poll_wait if after >= 0 else 0)}
            async with session.get(url, params=params, timeout=timeout) as resp:
                if resp.status == 404:
                    log.warning("trigger_feed_missing", url=url)
                    await asyncio.sleep(retry_delay * MISSING_RETRY_FACTOR)
                    continue
                resp.raise_for_status()
                batch = TriggerChanges.from_dict(await resp.json())
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, ModelError) as exc:
            log.info("trigger_feed_unavailable", url=url, error=str(exc) or type(exc).__name__)
            await asyncio.sleep(retry_delay)
            continue
        if boot and batch.BootID != boot and batch.Triggers is None:
            after, boot = -1, ""  # stubs restarted: read everything again
            continue
        await apply(batch)
        after, boot = batch.Seq, batch.BootID
