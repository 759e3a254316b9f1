"""The gateway is on by default: every way of running a pod gives the controller a gateway port
that its own option parser accepts (compose, Kubernetes, systemd, ``make run``)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from controller.options import OPTIONS, parse_controller_options
from easyfaas.config import parse_options

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


def _controller_args(command: list[str]) -> list[str]:
    assert command[:3] == ["python", "-m", "controller"] or command[1:3] == ["-m", "controller"], command
    return command[3:]


def test_compose_kubernetes_and_systemd_serve_the_gateway() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    k8s = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "easyfaas-pod.yaml").read_text()))
    container = next(c for c in k8s[0]["spec"]["template"]["spec"]["containers"] if c["name"] == "controller")
    unit = (DEPLOY / "systemd" / "easyfaas-controller.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    for args in (_controller_args(compose["services"]["controller"]["command"]),
                 _controller_args(container["command"]),
                 _controller_args(shlex.split(exec_start.removeprefix("ExecStart=")))):
        assert parse_controller_options(args).gateway_port == 8080, args
    assert {"containerPort": 8080, "name": "gateway"} in container["ports"]
    assert {"name": "gateway", "port": 80, "targetPort": "gateway"} in k8s[1]["spec"]["ports"]
    assert parse_controller_options(["--gateway-host", "0.0.0.0", "--gateway-port", "8080", "--port", "8001"])


def test_make_run_serves_it_on_8080_unless_told_otherwise() -> None:
    script = (REPO / "scripts" / "run-pod").read_text()
    assert 'EASYFAAS_CONTROLLER_GATEWAY_PORT="${EASYFAAS_CONTROLLER_GATEWAY_PORT-8080}"' in script
    env = {"EASYFAAS_CONTROLLER_GATEWAY_PORT": "8080"}
    assert parse_options("controller", OPTIONS, ["--port", "8001"], environ=env).gateway_port == 8080
    assert parse_options("controller", OPTIONS, ["--port", "8001"], environ={"EASYFAAS_CONTROLLER_GATEWAY_PORT": ""}
                         ).gateway_port == 0


def test_gateway_port_checks() -> None:
    assert parse_controller_options(["--port", "8001"]).gateway_port == 0  # off unless asked for
    assert parse_controller_options(["--port", "8001", "--http-enhanced"]).gateway_port == 8080
    for bad in (["--port", "8001", "--gateway-port", "8001"], ["--port", "8001", "--gateway-port", "70000"]):
        with pytest.raises(SystemExit):
            parse_controller_options(bad)
