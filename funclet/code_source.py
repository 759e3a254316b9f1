"""Fetches a function's code zip from where the registry says it is (a local file or an HTTP URL)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from easyfaas.errors import InvalidParameterValue, ServiceError
from easyfaas.models import CodeLocation


async def load_code(code: CodeLocation, *, max_size: int, session: aiohttp.ClientSession | None = None) -> bytes:
    location = code.Location
    if not location:
        raise InvalidParameterValue("code location was empty")
    kind = (code.RepositoryType or "").lower()
    if location.startswith(("http://", "https://")) or kind in ("http", "bos"):
        return await _load_http(location, max_size=max_size, session=session)
    path = Path(location.removeprefix("file://"))
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ServiceError(f"code {location} cannot be read: {exc.strerror}") from None
    if size > max_size:
        raise InvalidParameterValue(f"code {location} is {size} bytes, over the {max_size} limit")
    return await asyncio.to_thread(path.read_bytes)


async def _load_http(url: str, *, max_size: int, session: aiohttp.ClientSession | None) -> bytes:
    own = session is None
    session = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        async with session.get(url) as resp:
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
