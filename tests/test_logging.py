"""Every daemon logs one JSON event per line, its own events and the libraries' alike."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import logging, structlog
from easyfaas.logging import setup_logging
setup_logging(level="info", fmt="json", daemon="probe")
structlog.contextvars.bind_contextvars(request_id="rid-1")
structlog.get_logger("probe").info("own_event", answer=42)
try:
    raise ValueError("boom\\nsecond line")
except ValueError:
    logging.getLogger("aiohttp.server").exception("Error handling request from %s", "127.0.0.1")
"""


def test_own_and_library_events_are_single_json_lines() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    own, library = (json.loads(line) for line in lines)
    assert own["event"] == "own_event" and own["answer"] == 42 and own["request_id"] == "rid-1"
    assert own["daemon"] == "probe" and own["level"] == "info"
    assert library["event"] == "Error handling request from 127.0.0.1"
    assert library["logger"] == "aiohttp.server" and library["level"] == "error"
    assert library["request_id"] == "rid-1" and library["daemon"] == "probe"
    assert "ValueError: boom" in library["exception"]
