"""Fetches a function's code zip from where the registry says it is (a local file or an HTTP URL).

An HTTP location is fetched through the outbound guard when one is given (easyfaas/outbound.py):
its host's addresses are checked and the connection made to a checked one; redirects are not
followed (they would skip the check).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from easyfaas.errors import InvalidParameterValue, ServiceError
from easyfaas.models import CodeLocation
from easyfaas.outbound import OutboundGuard, guarded_session


async def load_code(code: CodeLocation, *, max_size: int, session: aiohttp.ClientSession | None = None,
                    guard: OutboundGuard | None = None) -> bytes:
    location = code.Location
    if not location:
        raise InvalidParameterValue("code location was empty")
    kind = (code.RepositoryType or "").lower()
    if location.startswith(("http://", "https://")) or kind in ("http", "bos"):
        if guard is not None and guard.enabled:
            await guard.check_url(location, "code location")
            session = None  # a session of the guard's, whose resolver checks what it connects to
        return await _load_http(location, max_size=max_size, session=session, guard=guard)
    path = Path(location.removeprefix("file://"))
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ServiceError(f"code {location} cannot be read: {exc.strerror}") from None
    if size > max_size:
        raise InvalidParameterValue(f"code {location} is {size} bytes, over the {max_size} limit")
    return await asyncio.to_thread(path.read_bytes)


async def _load_http(url: str, *, max_size: int, session: aiohttp.ClientSession | None,
                     guard: OutboundGuard | None = None) -> bytes:
    own = session is None
    if session is None:
        timeout = aiohttp.ClientTimeout(total=30)
        session = guarded_session(guard, timeout=timeout) if guard is not None and guard.enabled else \
            aiohttp.ClientSession(timeout=timeout)
    try:
        async with session.get(url, allow_redirects=guard is None or not guard.enabled) as resp:
            if resp.status != 200:
                raise ServiceError(f"code download from {url} failed with HTTP {resp.status}")
            data = bytearray()
            async for chunk in resp.content.iter_chunked(1 << 16):
                data += chunk
                if len(data) > max_size:
                    raise InvalidParameterValue(f"code at {url} exceeds {max_size} bytes")
            return bytes(data)
    except aiohttp.ClientError as exc:
        raise ServiceError(f"code download from {url} failed: {exc}") from None
    finally:
        if own:
            await session.close()
