"""Schedule expressions and the ``cron`` trigger's Config: parsing, validation, next due times.

Accepted ``Schedule`` forms:

* standard 5-field cron, ``*/5 * * * *`` (and croniter's ``@hourly``-style macros);
* EventBridge's ``cron(Minutes Hours Day-of-month Month Day-of-week Year)``: one of the day
  fields must be ``?``; day-of-week counts 1-7 from Sunday (translated to croniter's 0-6);
  ``L``, ``W`` and ``#`` as croniter takes them;
* ``rate(N minute|minutes|hour|hours|day|days)`` (singular only for 1, as EventBridge);
* ``@every <duration>`` (``30s``, ``1h30m``; at least 1 s).

Cron forms are evaluated by croniter in ``Timezone``; rates and ``@every`` count whole intervals
from an anchor (the trigger's creation or last change), so every controller computes the same due
times. Due times are whole seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from eventsources.source import ConfigError

CRON_TRIGGER_TYPE = "cron"
CATCH_UP = ("none", "last")
_FIELDS = frozenset({"Schedule", "Timezone", "Input", "Enabled", "CatchUp"})
_RATE_RE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_RATE_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
_EVERY_RE = re.compile(r"^@every\s+((?:\d+(?:h|ms|m|s))+)$")
_EVERY_PART_RE = re.compile(r"(\d+)(h|ms|m|s)")
_EVERY_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_EB_CRON_RE = re.compile(r"^cron\((.*)\)$")
_YEAR_PART_RE = re.compile(r"^(\*|\d{4})(?:-(\d{4}))?(?:/(\d+))?$")


class ScheduleError(ValueError):
    pass


def _eb_dow(field: str) -> str:
    """An EventBridge day-of-week field (1-7 from Sunday) in croniter's terms (0-6 from Sunday)."""
    if field == "?":
        return "*"
    if field == "L":
        return "6"  # the last day of the week: Saturday

    def number(text: str) -> str:
        if not (text.isascii() and text.isdigit()):
            return text  # SUN-SAT, *
        n = int(text)
        if not 1 <= n <= 7:
            raise ScheduleError(f"day-of-week {n} is out of range 1-7")
        return str(n - 1)

    parts = []
    for part in field.split(","):
        if re.fullmatch(r"\d+L", part):  # the last <weekday> of the month
            parts.append("L" + number(part[:-1]))
        elif "#" in part:
            day, _, nth = part.partition("#")
            parts.append(f"{number(day)}#{nth}")
        else:
            step = ""
            if "/" in part:
                part, _, s = part.partition("/")
                step = "/" + s
            parts.append("-".join(number(p) for p in part.split("-")) + step)
    return ",".join(parts)


def _eb_year(field: str) -> str:
    """The Year field checked (1970-2199, ``, - * /``); croniter takes it as its 7th field."""
    for part in field.split(","):
        m = _YEAR_PART_RE.match(part)
        if not m:
            raise ScheduleError(f"year field {field!r}: expected years 1970-2199 with , - * /")
        for year in (m.group(1), m.group(2)):
            if year and year != "*" and not 1970 <= int(year) <= 2199:
                raise ScheduleError(f"year {year} is out of range 1970-2199")
    return field


def eventbridge_to_croniter(body: str) -> str:
    """``0/5 * * * ? *`` (the inside of EventBridge's ``cron(...)``) → a croniter expression."""
    fields = body.split()
    if len(fields) != 6:
        raise ScheduleError(f"cron(...) takes 6 fields (Minutes Hours Day-of-month Month Day-of-week Year), "
                            f"got {len(fields)}")
    minute, hour, dom, month, dow, year = fields
    if (dom == "?") == (dow == "?"):
        raise ScheduleError("cron(...): exactly one of Day-of-month and Day-of-week must be '?'")
    if "?" in (minute, hour, month, year):
        raise ScheduleError("cron(...): '?' is only allowed in Day-of-month or Day-of-week")
    dom = "*" if dom == "?" else dom
    # croniter's 6th field is seconds (always 0 here), its 7th the year.
    return f"{minute} {hour} {dom} {month} {_eb_dow(dow)} 0 {_eb_year(year)}"


def _every_seconds(spec: str) -> float:
    total = sum(int(n) * _EVERY_UNITS[u] for n, u in _EVERY_PART_RE.findall(spec))
    if total < 1:
        raise ScheduleError(f"@every {spec}: the interval must be at least 1s")
    return float(int(total))  # sub-second parts are truncated: due times are whole seconds


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: either a cron expression (croniter's) or a fixed interval."""

    text: str
    cron: str | None = None
    interval: float | None = None
    tz: ZoneInfo = ZoneInfo("UTC")

    def next_after(self, after: datetime, anchor: datetime | None = None) -> datetime:
        """The first due time strictly after ``after`` (aware, UTC); intervals count from ``anchor``."""
        if self.interval is not None:
            start = (anchor or datetime(1970, 1, 1, tzinfo=timezone.utc)).replace(microsecond=0)
            if after < start:
                return start
            elapsed = (after - start).total_seconds()
            steps = int(elapsed // self.interval) + 1
            return (start + timedelta(seconds=steps * self.interval)).astimezone(timezone.utc)
        assert self.cron is not None
        from croniter import croniter  # here, not at the top: see parse_schedule

        it = croniter(self.cron, after.astimezone(self.tz).replace(microsecond=0))
        due: datetime = it.get_next(datetime)
        if due <= after:  # croniter starts at the whole second of ``after``
            due = it.get_next(datetime)
        return due.astimezone(timezone.utc)

    def latest_at_or_before(self, now: datetime, after: datetime, anchor: datetime | None = None) -> datetime | None:
        """The most recent due time in (``after``, ``now``], None if there is none."""
        if self.interval is not None:
            first = self.next_after(after, anchor)
            if first > now:
                return None
            start = (anchor or datetime(1970, 1, 1, tzinfo=timezone.utc)).replace(microsecond=0)
            steps = int((now - start).total_seconds() // self.interval)
            return (start + timedelta(seconds=steps * self.interval)).astimezone(timezone.utc)
        assert self.cron is not None
        from croniter import CroniterError, croniter  # here, not at the top: see parse_schedule

        it = croniter(self.cron, now.astimezone(self.tz) + timedelta(microseconds=1))
        try:
            due: datetime = it.get_prev(datetime)
        except CroniterError:
            return None
        due = due.astimezone(timezone.utc)
        return due if after < due <= now else None


def parse_schedule(text: Any, tz_name: str = "UTC") -> Schedule:
    """The schedule ``text`` means in time zone ``tz_name``; ScheduleError says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ScheduleError("expected a schedule expression: 5-field cron, cron(...), rate(...) or @every <duration>")
    text = text.strip()
    tz = parse_timezone(tz_name)
    m = _RATE_RE.match(text)
    if m:
        value, unit = int(m.group(1)), m.group(2)
        if value < 1:
            raise ScheduleError(f"{text}: the value must be a positive integer")
        if (value == 1) != (not unit.endswith("s")):
            raise ScheduleError(f"{text}: use the singular unit for 1 and the plural for more (rate(1 hour), "
                                "rate(5 hours))")
        return Schedule(text, interval=float(value * _RATE_SECONDS[unit.rstrip("s")]), tz=tz)
    if text.startswith("rate("):
        raise ScheduleError(f"{text}: expected rate(<positive integer> minute(s)|hour(s)|day(s))")
    if text.startswith("@every"):
        m = _EVERY_RE.match(text)
        if not m:
            raise ScheduleError(f"{text}: expected @every <duration> such as 30s, 5m or 1h30m")
        return Schedule(text, interval=_every_seconds(m.group(1)), tz=tz)
    m = _EB_CRON_RE.match(text)
    expression = eventbridge_to_croniter(m.group(1)) if m else text
    if not m and len(text.split()) != 5 and not text.startswith("@"):
        raise ScheduleError(f"{text!r}: expected 5 cron fields (minute hour day-of-month month day-of-week), "
                            "cron(...), rate(...) or @every <duration>")
    # croniter is imported on the first cron expression, not with this module: the controller and
    # stubs import this module whether or not the pod has a cron trigger, and croniter (with
    # dateutil) costs each of them over 1 MiB of resident memory.
    from croniter import CroniterError, croniter

    try:
        croniter(expression, datetime(2024, 1, 1, tzinfo=tz)).get_next(datetime)
    except (CroniterError, ValueError, KeyError) as exc:
        raise ScheduleError(f"{text!r} is not a valid cron expression: {exc}") from None
    return Schedule(text, cron=expression, tz=tz)


def parse_timezone(name: Any) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ScheduleError("expected an IANA time zone name such as UTC or Europe/Berlin")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"{name!r} is not a known IANA time zone") from None


@dataclass(frozen=True)
class CronConfig:
    schedule: Schedule
    timezone: str
    input: Any
    enabled: bool
    catch_up: str

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"Schedule": self.schedule.text, "Timezone": self.timezone, "Enabled": self.enabled,
                                "CatchUp": self.catch_up}
        if self.input is not None:
            body["Input"] = self.input
        return body


def parse_cron_config(config: Any) -> CronConfig:
    """A ``cron`` trigger's Config, checked field by field (ConfigError names the field)."""
    if not isinstance(config, dict):
        raise ConfigError("Config", "expected an object with Schedule, Timezone, Input, Enabled, CatchUp")
    unknown = sorted(set(config) - _FIELDS)
    if unknown:
        raise ConfigError(f"Config.{unknown[0]}", "unknown field; known: CatchUp, Enabled, Input, Schedule, Timezone")
    tz_name = config.get("Timezone", "UTC")
    try:
        parse_timezone(tz_name)
    except ScheduleError as exc:
        raise ConfigError("Config.Timezone", str(exc)) from None
    try:
        schedule = parse_schedule(config.get("Schedule"), tz_name)
    except ScheduleError as exc:
        raise ConfigError("Config.Schedule", str(exc)) from None
    enabled = config.get("Enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("Config.Enabled", "expected true or false")
    catch_up = config.get("CatchUp", "none")
    if catch_up not in CATCH_UP:
        raise ConfigError("Config.CatchUp", f"{catch_up!r} is not one of none, last")
    return CronConfig(schedule, tz_name, config.get("Input"), enabled, catch_up)


def validate_cron_config(config: Any) -> dict[str, Any]:
    """The normalised Config stubs stores (the trigger registry's validator of ``cron``)."""
    return parse_cron_config(config).to_dict()
