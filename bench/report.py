"""The budget (targets of the performance issue) and the table `make bench` prints.

The table is Markdown, so the latest one can be pasted into docs as it is. Each row has the
measured figure, the baseline measured in the same run, their ratio, the target, and whether the
target is met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class Row:
    figure: str
    value: str
    baseline: str
    ratio: str
    target: str
    met: bool | None  # None: no target for this figure


def _f(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        text = f"{value:,.{digits}f}"
    else:
        text = f"{value:,}"
    return f"{text} {unit}".strip()


def _x(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}×"


def rows(r: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    w, base = r.get("warm"), r.get("baselines", {})
    interp = base.get("interpreters", {})
    if w:
        c1, c64, many = w["c1"], w["c64"], w["many"]
        out.append(Row("warm invoke c=1, p50", _f(c1["p50_ms"], "ms", 3), f"echo {_f(c1['echo_p50_ms'], 'ms', 3)}",
                       _x(c1["ratio_p50"]), "≤ 0.5 ms and ≤ 2×",
                       c1["p50_ms"] <= 0.5 and c1["ratio_p50"] <= 2.0))
        out.append(Row("warm invoke c=1, p99", _f(c1["p99_ms"], "ms", 3), f"echo {_f(c1['echo_p99_ms'], 'ms', 3)}",
                       _x(c1["ratio_p99"]), "", None))
        out.append(Row(f"warm throughput c=64 ({c64['sandboxes']} sandboxes)", _f(c64["rps"], "req/s", 0),
                       f"echo {_f(c64['echo_rps'], 'req/s', 0)}", _x(c64["ratio_rps"]), "≥ 0.75×",
                       c64["ratio_rps"] >= 0.75))
        if "echo_uvloop_rps" in c64:
            out.append(Row("… against the echo on uvloop: c=1 p50 / c=64 req/s",
                           f"{_f(c1['p50_ms'], 'ms', 3)} / {_f(c64['rps'], 'req/s', 0)}",
                           f"echo {_f(c1['echo_uvloop_p50_ms'], 'ms', 3)} / {_f(c64['echo_uvloop_rps'], 'req/s', 0)}",
                           f"{_x(c1['ratio_p50_uvloop'])} / {_x(c64['ratio_rps_uvloop'])}", "", None))
        out.append(Row("warm c=64 latency p50 / p99", f"{_f(c64['p50_ms'], 'ms', 1)} / {_f(c64['p99_ms'], 'ms', 1)}",
                       f"echo {_f(c64['echo_p50_ms'], '', 1)} / {_f(c64['echo_p99_ms'], 'ms', 1)}", "", "", None))
        out.append(Row(f"{many['functions']} functions round-robin, c=64", _f(many["rps"], "req/s", 0),
                       f"1 function {_f(many['one_function_rps'], 'req/s', 0)}", _x(many["ratio_vs_one"]),
                       "≥ 0.5×", many["ratio_vs_one"] >= 0.5))
    for key, label, p50_target, p99_target in (("cold_python", "Python", 10.0, 30.0),
                                               ("cold_python_shared", "Python, shared code image", None, None),
                                               ("cold_node", "Node.js", 25.0, None)):
        c = r.get(key)
        if not c:
            continue
        lang = "node" if key == "cold_node" else "python"
        start = interp.get(lang, {}).get("start_p50_ms")
        ratio = c["p50_ms"] / start if start else None
        evict = f", {c['evictions']} evictions" if c.get("evictions") else ""
        out.append(Row(f"cold start {label}, p50 (n={c['n']}{evict})", _f(c["p50_ms"], "ms"),
                       f"bare {lang} start {_f(start, 'ms', 1)}", _x(ratio),
                       f"≤ {p50_target:g} ms" if p50_target else "",
                       c["p50_ms"] <= p50_target if p50_target else None))
        out.append(Row(f"cold start {label}, p99", _f(c["p99_ms"], "ms"), "", "",
                       f"≤ {p99_target:g} ms" if p99_target else "",
                       c["p99_ms"] <= p99_target if p99_target else None))
    ns = r.get("node_standby") or {}
    if ns.get("standby_p50_ms"):
        out.append(Row("Node.js runtime start → init status, pre-started (standby)", _f(ns["standby_p50_ms"], "ms"),
                       f"exec {_f(ns['exec_p50_ms'], 'ms')}", _x(ns["standby_p50_ms"] / ns["exec_p50_ms"]), "", None))
    out.extend(_provided_rows(r.get("provided") or {}))
    rate = r.get("cold_rate")
    if rate:
        start = interp.get("python", {}).get("start_p50_ms")
        serial = 1000 / start if start else None
        out.append(Row(f"cold-start rate ({rate['clients']} clients, n={rate['functions']})",
                       _f(rate["per_s"], "/s", 1),
                       f"bare python starts {_f(serial, '/s', 1)}", _x(rate["per_s"] / serial if serial else None),
                       "≥ 100/s", rate["per_s"] >= 100))
    fp = r.get("footprint")
    if fp:
        cp = fp["control_plane_idle"]
        echo_rss = base.get("echo_rss_mib")
        aio = fp.get("control_plane_idle_all_in_one")
        # The budget is the all-in-one form's (what a small box runs); the separate form is for comparison.
        out.append(Row("control plane RSS idle, separate daemons (controller+funclet+stubs)",
                       _f(cp["total_mib"], "MiB", 1), f"bare aiohttp {_f(echo_rss, 'MiB', 1)}",
                       _x(cp["total_mib"] / echo_rss if echo_rss else None), "" if aio else "≤ 100 MiB",
                       None if aio else cp["total_mib"] <= 100))
        if aio:
            out.append(Row("control plane RSS idle, all-in-one (controller+stubs process, funclet)",
                           _f(aio["total_mib"], "MiB", 1), f"separate daemons {_f(cp['total_mib'], 'MiB', 1)}",
                           _x(aio["total_mib"] / cp["total_mib"] if cp["total_mib"] else None), "≤ 100 MiB",
                           aio["total_mib"] <= 100))
        for lang, label, target in (("python", "Python", 3.0), ("node", "Node.js", None)):
            s = fp.get(lang) or {}
            if not s.get("n"):
                continue
            bare = interp.get(lang, {}).get("idle_uss_mib")
            out.append(Row(f"USS per warm {label} sandbox (n={s['n']})",
                           f"{_f(s['uss_mib'], 'MiB')} (PSS {_f(s['pss_mib'], 'MiB')})",
                           f"bare {lang} {_f(bare, 'MiB')}", _x(s["uss_mib"] / bare if bare else None),
                           f"≤ {target:g} MiB" if target else "", s["uss_mib"] <= target if target else None))
        fit = fp.get("fit_24gib") or {}
        if fit.get("per_sandbox_mib"):
            out.append(Row(f"warm Python sandboxes in 24 GiB (from {fit['measured']})", _f(fit["fit"]),
                           f"{_f(fit['per_sandbox_mib'], 'MiB')} each", "", "", None))
    out.extend(_event_source_rows(r.get("event_sources") or {}))
    return out


def _provided_rows(p: dict[str, Any]) -> list[Row]:
    """The ≤ 2× targets of ``provided`` judged with the compiled bootstrap (what most custom runtimes
    are); the stdlib Python bootstrap's figures as information beside them."""
    if not p:
        return []
    out: list[Row] = []
    c = p.get("compiled") or {}
    if "skipped" in c:
        out.append(Row("`provided` vs native, compiled bootstrap", f"skipped: {c['skipped']}", "", "", "≤ 2×", None))
    elif c:
        w, cold = c["warm_c1"], c["cold"]
        out.append(Row("`provided` warm c=1 p50, compiled bootstrap", _f(w["provided_p50_ms"], "ms", 3),
                       f"native python3 {_f(w['native_p50_ms'], 'ms', 3)}", _x(w["ratio_p50"]), "≤ 2×",
                       w["ratio_p50"] <= 2.0))
        out.append(Row("`provided` warm c=1 p99, compiled bootstrap", _f(w["provided_p99_ms"], "ms", 3),
                       f"native python3 {_f(w['native_p99_ms'], 'ms', 3)}", _x(w.get("ratio_p99")), "", None))
        out.append(Row(f"`provided` cold start p50 (n={cold['provided']['n']}), compiled bootstrap",
                       _f(cold["provided"]["p50_ms"], "ms"), f"native python3 {_f(cold['native']['p50_ms'], 'ms')}",
                       _x(cold["ratio_p50"]), "≤ 2×", cold["ratio_p50"] <= 2.0))
    w, cold = p.get("warm_c1"), p.get("cold")
    if w and cold:
        out.append(Row("`provided` with a Python bootstrap: warm c=1 p50 / cold p50",
                       f"{_f(w['provided_p50_ms'], 'ms', 3)} / {_f(cold['provided']['p50_ms'], 'ms')}",
                       f"native {_f(w['native_p50_ms'], 'ms', 3)} / {_f(cold['native']['p50_ms'], 'ms')}",
                       f"{_x(w['ratio_p50'])} / {_x(cold['ratio_p50'])}", "", None))
        own = [cold["bootstrap_own_start"]["p50_ms"]]
        if c.get("cold"):
            own.insert(0, c["cold"]["bootstrap_own_start"]["p50_ms"])
        out.append(Row("bootstrap's own start, exec → first GET, p50: " + ("compiled / Python" if len(own) == 2
                                                                            else "Python"),
                       " / ".join(_f(v, "ms") for v in own), "", "", "", None))
    return out


def _event_source_rows(e: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    if "mqtt_msgs_per_s" in e:
        out.append(Row(f"MQTT QoS 1 published → function finished (n={e['mqtt_messages']}, back to back)",
                       _f(e["mqtt_msgs_per_s"], "msg/s", 1),
                       f"p50 {_f(e['mqtt_p50_ms'], 'ms', 1)} / p99 {_f(e['mqtt_p99_ms'], 'ms', 1)}", "", "", None))
    if "mqtt_paced_p50_ms" in e:
        out.append(Row(f"MQTT delay at {e['paced_rate']:g} msg/s, p50 / p99",
                       f"{_f(e['mqtt_paced_p50_ms'], 'ms', 1)} / {_f(e['mqtt_paced_p99_ms'], 'ms', 1)}", "", "", "",
                       None))
    if "schedule_p99_ms" in e:
        out.append(Row(f"schedule due time → enqueued, p99 (n={e['schedule_fires']})", _f(e["schedule_p99_ms"], "ms", 1),
                       f"p50 {_f(e['schedule_p50_ms'], 'ms', 1)}", "", f"≤ {e['schedule_target_ms']} ms",
                       e["schedule_p99_ms"] <= e["schedule_target_ms"]))
    s = e.get("sync_beside_sources")
    if s:
        out.append(Row(f"warm c=64 beside a schedule and {s['paced_rate']:g} MQTT msg/s", _f(s["c64_rps_on"], "req/s", 0),
                       f"no sources {_f(s['c64_rps_off'], 'req/s', 0)}"
                       + (f"; mean {s['ratio_c64_rps_mean']:.3f} ± {s['ratio_c64_rps_se']:.3f}"
                          if s.get("ratio_c64_rps_se") is not None else ""),
                       _x(s["ratio_c64_rps"]), "0.95–1.05×",
                       0.95 <= s["ratio_c64_rps"] <= 1.05))
        out.append(Row("warm c=1 p50 beside them", _f(s["c1_p50_ms_on"], "ms", 3),
                       f"no sources {_f(s['c1_p50_ms_off'], 'ms', 3)}", _x(s["ratio_c1_p50"]), "0.95–1.05×",
                       0.95 <= s["ratio_c1_p50"] <= 1.05))
    return out


def markdown(table: list[Row]) -> str:
    lines = ["| figure | measured | baseline (same run) | ratio | target | met |",
             "|---|---|---|---|---|---|"]
    for row in table:
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(f"| {row.figure} | {row.value} | {row.baseline} | {row.ratio} | {row.target} | {met} |")
    return "\n".join(lines)


def budget(table: list[Row]) -> dict[str, bool]:
    return {row.figure: bool(row.met) for row in table if row.met is not None}
