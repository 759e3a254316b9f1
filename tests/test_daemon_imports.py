"""What the daemons have imported once their modules are loaded: the libraries an idle daemon
does not use stay out of its memory until they are needed (easyfaas/daemon_imports.py,
easyfaas/metrics.py, funclet/sandbox/netlink.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Loaded at first use only (a scrape, a request that needs them) or never by a daemon.
NOT_AT_START = ("pyroute2", "psutil", "rich", "unittest", "yaml", "prometheus_client.exposition",
                "prometheus_client.metrics", "prometheus_client.gc_collector")


def modules_after_import(module: str, then: str = "") -> set[str]:
    """``sys.modules`` of a fresh interpreter that imported ``module`` as its daemon does, then ran ``then``."""
    code = ("import json, sys\n"
            "from easyfaas.daemon_imports import keep_terminal_libraries_out\n"
            "keep_terminal_libraries_out()\n"
            f"import {module}\n"
            f"{then}\n"
            "print(json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True,
                         timeout=60)
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize("module", ["funclet.app", "easyfaas.all_in_one", "controller.app", "stubs.daemon",
                                    "httptrigger.app"])
def test_a_daemon_does_not_load_what_it_uses_only_later(module: str) -> None:
    loaded = modules_after_import(module)
    assert "prometheus_client.registry" in loaded  # the metrics are there, without the exposition
    early = sorted(m for m in loaded if m in NOT_AT_START or m.split(".")[0] in NOT_AT_START[:5])
    assert early == []


def test_the_funclet_does_not_load_what_the_zygote_preloads_for_sandboxes() -> None:
    loaded = modules_after_import("funclet.app")
    assert "runner.control" in loaded
    assert not {"runner.zygote", "runner.init", "runner.supervisor", "runner.runtimes.python.bootstrap"} & loaded


def test_the_exposition_format_is_loaded_by_the_first_scrape() -> None:
    scrape = ("import asyncio\n"
              "from aiohttp import web\n"
              "from aiohttp.test_utils import make_mocked_request\n"
              "from easyfaas.metrics import METRICS_REGISTRY, TriggerMetrics, add_observability_routes, metrics, "
              "new_registry\n"
              "app = web.Application()\n"
              "registry = new_registry()\n"
              "TriggerMetrics(registry).fired('http', 'f')\n"
              "add_observability_routes(app, registry)\n"
              "before = 'prometheus_client.exposition' in sys.modules\n"
              "response = asyncio.run(metrics(make_mocked_request('GET', '/metrics', app=app)))\n"
              "assert not before, 'exposition loaded before the scrape'\n"
              "assert b'easyfaas_trigger_firings_total{function=\"f\",trigger=\"http\"} 1.0' in response.body\n"
              "assert response.headers['Content-Type'].startswith('text/plain; version=0.0.4')\n")
    assert "prometheus_client.exposition" in modules_after_import("easyfaas.metrics", scrape)


def test_the_whole_package_is_still_there_for_whoever_asks() -> None:
    loaded = modules_after_import("easyfaas.metrics", "from prometheus_client import Counter, CollectorRegistry\n"
                                  "import prometheus_client.registry as r\n"
                                  "assert CollectorRegistry is r.CollectorRegistry\n")
    assert "prometheus_client.metrics" in loaded


def test_the_runtimes_runner_prepare_writes_are_read_without_a_yaml_parser(tmp_path: Path) -> None:
    read = ("from runner.prepare import PythonInfo, write_runtimes\n"
            "from easyfaas.runtimes import RuntimeCatalog\n"
            f"write_runtimes(__import__('pathlib').Path({str(tmp_path)!r}), "
            "PythonInfo(sys.executable, sys.base_prefix, sys.version_info[:2]), None)\n"
            f"catalog = RuntimeCatalog.load({str(tmp_path)!r})\n"
            "assert {'python3', 'exec', 'provided'} <= set(catalog.names()), catalog.names()\n")
    assert "yaml" not in modules_after_import("easyfaas.runtimes", read)
