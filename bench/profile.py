"""Optional: a py-spy profile of the controller under warm load (``python -m bench --profile``).

py-spy samples the running controller from outside (no instrumentation, so the profile does not
change what it measures much); the collapsed stacks are reduced to the functions with the most
samples, by self time and by inclusive time, which is what docs/performance.md quotes.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

_PATH_RE = re.compile(r"\(/\S*?/(?:site-packages|lib/python3\.\d+|main)/")


def find_py_spy(explicit: str | None = None) -> str | None:
    return explicit if explicit and Path(explicit).exists() else shutil.which("py-spy")


def _frame(name: str) -> str:
    return _PATH_RE.sub("(", name)


def top_frames(collapsed: str, limit: int = 25) -> dict[str, Any]:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    pct = (lambda n: round(100 * n / total, 1)) if total else (lambda n: 0.0)
    return {"samples": total, "self": [[f, pct(n)] for f, n in own.most_common(limit)],
            "inclusive": [[f, pct(n)] for f, n in inclusive.most_common(limit)]}


def profile_pid(py_spy: str, pid: int, seconds: float, load: Callable[[], Any], rate: int = 250) -> dict[str, Any]:
    """Profile ``pid`` for ``seconds`` while ``load()`` runs; the top frames and what load returned."""
    with tempfile.TemporaryDirectory(prefix="efbench-prof-") as tmp:
        out = Path(tmp) / "profile.txt"
        proc = subprocess.Popen([py_spy, "record", "-p", str(pid), "-d", str(max(1, round(seconds))),
                                 "-r", str(rate), "-f", "raw", "-o", str(out), "--nonblocking"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            loaded = load()
        finally:
            _, err = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0 or not out.exists():
            return {"error": f"py-spy failed ({proc.returncode}): {err.strip()[-300:]}"}
        result = top_frames(out.read_text())
    result["load"] = loaded
    return result
