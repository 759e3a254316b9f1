"""Daemon configuration: flags (the original's names), environment variables and a YAML file.

Precedence, lowest first: the option's default, the YAML file given by ``--config``, environment
variables (``EASYFAAS_<PROG>_<NAME>`` or ``EASYFAAS_<NAME>``), command-line flags. As in the Go
original, ``_`` and ``-`` are interchangeable in flag names. Every daemon declares its options as a
list of :class:`Option`; nothing else reads ``os.environ`` for configuration.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(value: str | int) -> int:
    """'128M', '1.5G', '4096', 4096 → bytes (binary units, as the original's flags)."""
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"not a size: {value!r} (use e.g. 512K, 128M, 2G)")
    unit = (m.group(2) or "").lower()[:1]
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def parse_duration(value: str | int | float) -> float:
    """'5s', '250ms', '1m', '5' (seconds) → seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (use e.g. 250ms, 5s, 1m)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2) or ""]


def parse_bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass(frozen=True)
class Option:
    name: str
    type: Callable[[Any], Any]
    default: Any
    help: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")


class Settings:
    """Parsed options; attribute names are the option names with '-' replaced by '_'."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"Settings({self.__dict__!r})"


COMMON_OPTIONS = [
    Option("config", str, "", "YAML file with option values (keys are option names)"),
    Option("log-level", str, "info", "debug, info, warning or error"),
    Option("log-format", str, "json", "json (one event per line) or console"),
    # accepted for compatibility with the original's glog flags; logs always go to stderr
    Option("logtostderr", parse_bool, True, "compatibility flag (logs always go to stderr)"),
    Option("alsologtostderr", parse_bool, False, "compatibility flag"),
    Option("log-dir", str, "", "compatibility flag (ignored)"),
    Option("v", int, 0, "compatibility verbosity flag (ignored)"),
]


def _normalize_argv(argv: Sequence[str]) -> list[str]:
    out = []
    for arg in argv:
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            arg = "--" + name.replace("_", "-") + (eq + value if eq else "")
        out.append(arg)
    return out


def _load_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as exc:
        raise SystemExit(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SystemExit(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"config file {path} must be a mapping of option names to values")
    return {str(k).replace("_", "-"): v for k, v in data.items()}


def parse_options(prog: str, options: Sequence[Option], argv: Sequence[str] | None = None,
                  environ: dict[str, str] | None = None, *, description: str | None = None) -> Settings:
    """Parse a daemon's options; exits with a clear message on bad values. ``description`` heads ``--help``."""
    environ = os.environ if environ is None else environ
    env_prog = prog.upper().replace("-", "_")
    argv = list(sys.argv[1:] if argv is None else argv)
    all_options = [*options, *[o for o in COMMON_OPTIONS if o.name not in {x.name for x in options}]]
    by_name = {o.name: o for o in all_options}

    parser = argparse.ArgumentParser(prog=f"easyfaas-{prog}", allow_abbrev=False, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for opt in all_options:
        flags = [f"--{opt.name}", *(f"--{a}" for a in opt.aliases)]
        if opt.name == "v":
            flags = ["-v", "--v"]
        extra: dict[str, Any] = {}
        if opt.type is parse_bool:
            extra = {"nargs": "?", "const": "true"}  # `--flag` alone means true, as with pflag
        parser.add_argument(*flags, dest=opt.attr, default=None, help=f"{opt.help} (default: {opt.default})",
                            **extra)
    args = parser.parse_args(_normalize_argv(argv))

    values: dict[str, Any] = {o.attr: o.default for o in all_options}
    config_path = args.config or environ.get(f"EASYFAAS_{env_prog}_CONFIG") or environ.get("EASYFAAS_CONFIG")
    if config_path:
        for key, raw in _load_yaml(config_path).items():
            if key not in by_name:
                raise SystemExit(f"config file {config_path}: unknown option {key!r}")
            values[by_name[key].attr] = raw
    for opt in all_options:
        env_key = opt.attr.upper()
        for candidate in (f"EASYFAAS_{env_prog}_{env_key}", f"EASYFAAS_{env_key}"):
            if candidate in environ:
                values[opt.attr] = environ[candidate]
                break
        cli = getattr(args, opt.attr)
        if cli is not None:
            values[opt.attr] = cli
    for opt in all_options:
        raw = values[opt.attr]
        if raw is None:
            continue
        try:
            values[opt.attr] = opt.type(raw)
        except (TypeError, ValueError) as exc:
            parser.error(f"--{opt.name}: {exc}")
    return Settings(values)
