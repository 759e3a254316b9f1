"""The deployment files are checked by real validators: the compose spec's JSON schema, the
Kubernetes API schemas, and systemd's own unit verifier. (No Docker engine or API server runs here.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
REPO = DEPLOY.parent


def test_compose_file_matches_the_compose_spec() -> None:
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(DEPLOY / "docker-compose.yaml")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    services = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())["services"]
    assert services["funclet"]["privileged"] is True
    assert {"runtime", "funclet", "registry", "controller"} <= set(services)


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    import kubernetes_validate

    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "easyfaas-pod.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    broken = dict(docs[0], spec={**docs[0]["spec"], "replicas": "one"})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30", strict=True)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_units_verify(tmp_path: Path) -> None:
    # Units name /opt/easyfaas; point them at this checkout so the verifier can check the commands.
    for unit in (DEPLOY / "systemd").iterdir():
        text = unit.read_text().replace("/opt/easyfaas/.venv/bin/python", sys.executable)
        text = text.replace("/opt/easyfaas", str(REPO))
        (tmp_path / unit.name).write_text(text)
    units = sorted(str(p) for p in tmp_path.iterdir())
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    # The verifier exits 0 on unknown keys and bad values; what it says about our units is the verdict.
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if str(tmp_path) in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr
