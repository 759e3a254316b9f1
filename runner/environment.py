"""The environment of a runtime process, built in one place (docs/design.md, "Runtime process contract").

Two halves, one on each side of the control socket:

* :func:`runtime_env` — the funclet's: the function's ``Environment.Variables`` plus the platform's
  variables, sent as the ``env`` of the runner's ``start`` command;
* :func:`process_environment` — the runner's: that ``env`` plus the runtime configuration's ``Env``
  and the defaults every runtime may count on; nothing of the host's environment gets in.

Stdlib only (the runner and the zygote import it). The funclet passes its wire models
(``FunctionConfiguration``, ``RuntimeConfiguration``); only their attributes are read here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from runner.runtimes.lambda_environment import lambda_variables

if TYPE_CHECKING:
    from easyfaas.models import FunctionConfiguration, RuntimeConfiguration

TASK_DIR = "/var/task"
RUNTIME_DIR = "/var/runtime"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def runtime_env(cfg: FunctionConfiguration, runtime: RuntimeConfiguration) -> dict[str, str]:
    """The environment the funclet sends for a function's runtime: its variables plus the platform's.

    The platform's names win over the function's; the runtime configuration's ``Env`` gives way to
    both.
    """
    env = {**runtime.Env, **cfg.Environment.Variables}
    env.update({
        "EASYFAAS_HANDLER": cfg.Handler, "_HANDLER": cfg.Handler,
        "EASYFAAS_FUNCTION_NAME": cfg.FunctionName, "EASYFAAS_FUNCTION_VERSION": cfg.Version,
        "EASYFAAS_FUNCTION_BRN": cfg.FunctionArn, "EASYFAAS_MEMORY_SIZE": str(cfg.MemorySize),
        "EASYFAAS_TIMEOUT": str(cfg.Timeout), "EASYFAAS_RUNTIME": runtime.Name,
        "AWS_LAMBDA_FUNCTION_NAME": cfg.FunctionName, "AWS_LAMBDA_FUNCTION_VERSION": cfg.Version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(cfg.MemorySize), "LAMBDA_TASK_ROOT": TASK_DIR,
        "BCE_USER_CODE_ROOT": TASK_DIR,
    })
    # Further platform variables (the Lambda names a function may read) are added here, and only here.
    env.update(lambda_variables(function_name=cfg.FunctionName, function_version=cfg.Version,
                                memory_size_mb=cfg.MemorySize, handler=cfg.Handler, function_brn=cfg.FunctionArn,
                                user_variables=cfg.Environment.Variables))
    env.setdefault("EASYFAAS_RUNTIME_MODE", runtime.Env.get("EASYFAAS_RUNTIME_MODE", ""))
    return env


def process_environment(env: Mapping[str, Any], runtime: Mapping[str, Any]) -> dict[str, str]:
    """The runtime process's whole environment: ``env`` from the start command, plus defaults.

    ``runtime`` is the runtime configuration as the control message carries it (a dict).
    """
    result = {str(k): str(v) for k, v in env.items()}
    for key, value in (runtime.get("Env") or {}).items():
        result.setdefault(str(key), str(value))
    result.setdefault("PATH", DEFAULT_PATH)
    result.setdefault("HOME", "/tmp")
    result.setdefault("LANG", "C.UTF-8")
    result.setdefault("LAMBDA_TASK_ROOT", TASK_DIR)
    result.setdefault("LAMBDA_RUNTIME_DIR", RUNTIME_DIR)
    # Makes every node start ~100 ms slower, and names a host file the sandbox cannot see.
    result.pop("NODE_EXTRA_CA_CERTS", None)
    return result
