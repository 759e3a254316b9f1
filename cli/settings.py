"""Where the CLI finds the pod and who it is: flags > environment > profile file > defaults.

The profile file (``~/.config/easyfaas/config.yaml``, or ``$XDG_CONFIG_HOME/easyfaas/config.yaml``,
or ``--config`` / ``EASYFAAS_CONFIG``) holds named profiles::

    default: local            # the profile used without --profile / EASYFAAS_PROFILE
    profiles:
      local:
        url: http://127.0.0.1:8001
        registry_url: http://127.0.0.1:8002
        account: df391b08c64c426a81645468c75163a5
      edge:
        url: http://10.0.0.7:8001
        registry_url: http://10.0.0.7:8002
        key: s3cret

The profile is chosen by ``--profile``, else ``EASYFAAS_PROFILE``, else the file's ``default``, else
a profile named ``default`` if there is one; naming a profile the file lacks is a usage error.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from cli.exits import UsageError

DEFAULT_URL = "http://127.0.0.1:8001"
DEFAULT_REGISTRY_URL = "http://127.0.0.1:8002"

#: profile key -> environment variable
ENVIRONMENT = {
    "url": "EASYFAAS_URL",
    "registry_url": "EASYFAAS_REGISTRY_URL",
    "key": "EASYFAAS_KEY",
    "account": "EASYFAAS_ACCOUNT",
}
PROFILE_KEYS = frozenset(ENVIRONMENT)
OUTPUTS = ("text", "json")


@dataclass(frozen=True)
class Settings:
    url: str = DEFAULT_URL                    # the controller: invocations, async records
    registry_url: str = DEFAULT_REGISTRY_URL  # stubs: functions, versions, triggers
    key: str = ""                             # sent as Authorization: Bearer <key>
    account: str = ""                         # sent as X-easyfaas-Account-Id
    output: str = "text"
    profile: str = ""                         # the profile the values came from, if any


def config_path(environ: Mapping[str, str]) -> Path:
    """The profile file's default location."""
    if environ.get("EASYFAAS_CONFIG"):
        return Path(environ["EASYFAAS_CONFIG"])
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".config")
    return Path(base) / "easyfaas" / "config.yaml"


def read_profiles(path: Path) -> tuple[dict[str, dict[str, str]], str]:
    """(profiles by name, the file's default profile name); a missing file has none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}, ""
    except OSError as exc:
        raise UsageError(f"profile file {path}: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"profile file {path}: not valid YAML: {exc}".replace("\n", " ")) from None
    if doc is None:
        return {}, ""
    if not isinstance(doc, dict):
        raise UsageError(f"profile file {path}: expected a mapping with 'profiles', got {type(doc).__name__}")
    unknown = set(doc) - {"default", "profiles"}
    if unknown:
        first = sorted(map(str, unknown))[0]
        raise UsageError(f"profile file {path}: unknown key {first!r} (expected default, profiles)")
    default = doc.get("default") or ""
    if not isinstance(default, str):
        raise UsageError(f"profile file {path}: default: expected a profile name")
    raw = doc.get("profiles") or {}
    if not isinstance(raw, dict):
        raise UsageError(f"profile file {path}: profiles: expected a mapping of name to settings")
    profiles: dict[str, dict[str, str]] = {}
    for name, values in raw.items():
        values = values or {}
        if not isinstance(values, dict):
            raise UsageError(f"profile file {path}: profiles.{name}: expected a mapping")
        for key, value in values.items():
            if key not in PROFILE_KEYS:
                raise UsageError(f"profile file {path}: profiles.{name}.{key}: unknown setting "
                                 f"(known: {', '.join(sorted(PROFILE_KEYS))})")
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise UsageError(f"profile file {path}: profiles.{name}.{key}: expected a string")
        profiles[str(name)] = {key: str(value) for key, value in values.items()}
    return profiles, default


def resolve(flags: Mapping[str, Any], environ: Mapping[str, str], *, config: Path | None = None,
            profile: str = "", output: str = "text") -> Settings:
    """The settings from ``flags`` (None/"" = not given) over ``environ`` over the chosen profile."""
    if output not in OUTPUTS:
        raise UsageError(f"--output: expected one of {', '.join(OUTPUTS)}, got {output!r}")
    path = config or config_path(environ)
    profiles, file_default = read_profiles(path)
    chosen = profile or environ.get("EASYFAAS_PROFILE", "") or file_default
    if chosen and chosen not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise UsageError(f"profile {chosen!r} not found in {path} (profiles: {known})")
    if not chosen and "default" in profiles:
        chosen = "default"
    values: dict[str, str] = dict(profiles.get(chosen, {}))
    for key, var in ENVIRONMENT.items():
        if environ.get(var):
            values[key] = environ[var]
        if flags.get(key):
            values[key] = str(flags[key])
    settings = Settings(output=output, profile=chosen, **values)
    for key in ("url", "registry_url"):
        value = getattr(settings, key)
        try:
            parts = urllib.parse.urlsplit(value)
            parts.port  # noqa: B018 - raises for a port that is not a number
        except ValueError as exc:
            raise UsageError(f"{key}: invalid URL {value!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{key}: expected an http:// or https:// URL, got {value!r}")
    return settings
