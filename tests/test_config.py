"""Configuration: defaults < YAML file < environment < flags; the original's flag spellings."""

from __future__ import annotations

from pathlib import Path

import pytest

from easyfaas.config import Option, parse_bool, parse_duration, parse_options, parse_size

OPTIONS = [
    Option("port", int, 8080, "TCP port"),
    Option("max-runtime-idle", parse_duration, "60s", "idle time"),
    Option("runner-memory", parse_size, "128M", "memory"),
    Option("concurrent-mode", parse_bool, True, "mode"),
]


def test_defaults_are_parsed_by_their_type() -> None:
    opts = parse_options("controller", OPTIONS, [], environ={})
    assert (opts.port, opts.max_runtime_idle, opts.runner_memory, opts.concurrent_mode) == (8080, 60.0, 128 << 20, True)
    assert opts.log_level == "info" and opts.log_format == "json"


def test_precedence_file_env_flag(tmp_path: Path) -> None:
    cfg = tmp_path / "pod.yaml"
    cfg.write_text("port: 9000\nmax_runtime_idle: 5s\nrunner-memory: 256M\n")
    env = {"EASYFAAS_CONTROLLER_PORT": "9100", "EASYFAAS_RUNNER_MEMORY": "1G"}
    opts = parse_options("controller", OPTIONS, ["--config", str(cfg), "--port=9200"], environ=env)
    assert opts.port == 9200                      # flag beats env and file
    assert opts.runner_memory == 1 << 30          # env beats file
    assert opts.max_runtime_idle == 5.0           # file beats default
    opts = parse_options("controller", OPTIONS, ["--config", str(cfg)], environ=env)
    assert opts.port == 9100


def test_underscores_and_dashes_are_interchangeable_and_glog_flags_accepted() -> None:
    opts = parse_options("controller", OPTIONS, ["--max_runtime_idle", "250ms", "--logtostderr=true", "-v10",
                                                 "--concurrent_mode=false"], environ={})
    assert opts.max_runtime_idle == 0.25 and opts.concurrent_mode is False and opts.v == 10


@pytest.mark.parametrize("argv,fragment", [
    (["--port", "eighty"], "--port"),
    (["--runner-memory", "lots"], "not a size"),
    (["--max-runtime-idle", "soon"], "not a duration"),
    (["--no-such-flag"], "unrecognized"),
])
def test_bad_values_exit_with_a_message(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_options("controller", OPTIONS, argv, environ={})
    assert exc.value.code == 2
    assert fragment in capsys.readouterr().err


def test_bad_config_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: [unclosed\n")
    with pytest.raises(SystemExit, match="not valid YAML"):
        parse_options("controller", OPTIONS, ["--config", str(bad)], environ={})
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("prot: 1\n")
    with pytest.raises(SystemExit, match="unknown option 'prot'"):
        parse_options("controller", OPTIONS, ["--config", str(unknown)], environ={})
    with pytest.raises(SystemExit, match="cannot read"):
        parse_options("controller", OPTIONS, ["--config", str(tmp_path / "missing.yaml")], environ={})


@pytest.mark.parametrize("text,value", [("512", 512), ("4K", 4096), ("128M", 128 << 20), ("1.5G", 3 << 29),
                                        ("2Gi", 2 << 30), ("64MB", 64 << 20)])
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text,value", [("5", 5.0), ("5s", 5.0), ("250ms", 0.25), ("2m", 120.0), ("1h", 3600.0)])
def test_durations(text: str, value: float) -> None:
    assert parse_duration(text) == value


def test_booleans() -> None:
    assert parse_bool("yes") is True and parse_bool("0") is False
    with pytest.raises(ValueError):
        parse_bool("maybe")


def test_a_bare_boolean_flag_means_true() -> None:
    opts = parse_options("controller", OPTIONS, ["--concurrent-mode"], environ={"EASYFAAS_CONCURRENT_MODE": "0"})
    assert opts.concurrent_mode is True
