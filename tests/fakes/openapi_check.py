"""pytest plugin: every answer the test suite gets from a controller or stubs application is
checked against its OpenAPI document (easyfaas/openapi/check.py), in-process applications and the
pod's daemons alike, and the session fails at its end when one did not conform.

The check is on unless ``EASYFAAS_OPENAPI_CHECK=0``; a path given in that variable is used (and
kept) as the file of findings, else a temporary file is.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from easyfaas.openapi.check import ENV

_OWN_FILE = "_openapi_check_own_file"


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(ENV) == "0":
        return
    if not os.environ.get(ENV):
        fd, path = tempfile.mkstemp(prefix="efaas-openapi-", suffix=".jsonl")
        os.close(fd)
        os.environ[ENV] = path  # inherited by the daemons the tests start
        setattr(config, _OWN_FILE, path)


def pytest_unconfigure(config: pytest.Config) -> None:
    path = getattr(config, _OWN_FILE, None)
    if path:
        Path(path).unlink(missing_ok=True)
        os.environ.pop(ENV, None)


def findings() -> list[dict[str, object]]:
    """The non-conforming answers recorded so far."""
    path = os.environ.get(ENV, "")
    if path in ("", "0") or not os.path.exists(path):
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session", autouse=True)
def responses_conform_to_openapi() -> Iterator[None]:
    """After the whole session (the pod is stopped by then): no answer broke its document."""
    yield
    found = findings()
    assert not found, ("answers that do not conform to their OpenAPI document (easyfaas/openapi/):\n"
                       + "\n".join(json.dumps(f) for f in found[:20]))
